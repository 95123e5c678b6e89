# The README's commands. `make setup` builds .venv from nothing; `make test` runs every test.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup test test-fast lint demo clean

setup:
	$(PY) -m venv $(VENV)
	# torch/torchvision pinned explicitly so pip never reaches for a newer (CUDA, multi-GB) build.
	$(BIN)/pip install "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -e ".[all]"
	# LibAUC is only the reference for the iSogCLR parity test; its loss module needs torch and numpy alone.
	$(BIN)/pip install --no-deps "libauc==2.0.1"
	# espeak-ng synthesises the spoken-word data (data_tools/make_speech_data.py). Installed when missing and
	# apt-get exists (as root, e.g. CI); elsewhere the speech tests skip and say how to install it.
	command -v espeak-ng >/dev/null || { command -v apt-get >/dev/null && (apt-get update -qq && apt-get install -y -qq espeak-ng); } || echo "espeak-ng not installed: speech tests will skip (apt-get install espeak-ng)"

# Test files are spread over TEST_WORKERS processes (pytest-xdist; a file's tests stay in one process, so its
# module fixtures are built once). Each worker gets an equal share of the cores (tests/conftest.py).
TEST_WORKERS ?= 2

test:
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

test-fast:
	$(BIN)/pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile

lint:
	$(BIN)/ruff check .

# The main job: demo data (built once, if absent), then the demo recipe end to end; the run ends with a
# summary (held-out classes, chance, numbers) and writes runs/demo/plots. --overwrite: `make demo` always
# starts the demo afresh (a plain second run into runs/demo would be refused as mixing two runs).
# HF_HUB_OFFLINE: the frozen text tower ships in a wheel, nothing is downloaded. One torch thread: this model
# is too small for intra-op parallelism to pay, and on a shared 2-core machine (load ~5) the default threads
# ran 4 s/step against 0.3-0.8 s/step with one (measured 2026-12-04).
demo:
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory data/demo/info.json && \
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/mmembed train recipes/demo.yaml --overwrite && \
	echo "make demo: $$(( $$(date +%s) - start )) s (data + training + evaluation)"

# Rebuilt when the generator changes (an old data/demo would not match recipes/demo.yaml).
data/demo/info.json: data_tools/make_demo_data.py data_tools/demo_synth.py data_tools/demo_captions.py data_tools/demo_splits.py
	$(BIN)/python -m data_tools.make_demo_data --out data/demo

clean:
	rm -rf runs data/demo
