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

# The main job: demo data (built once, if absent), then the demo recipe end to end. --overwrite: `make demo`
# always starts the demo afresh (a plain second run into runs/demo would be refused as mixing two runs).
demo: data/demo/info.json
	$(BIN)/mmembed train recipes/demo.yaml --overwrite

data/demo/info.json:
	$(BIN)/python -m data_tools.make_demo_data --out data/demo

clean:
	rm -rf runs data/demo
