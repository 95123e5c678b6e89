#!/usr/bin/env bash
# mmembed's GPU proof in one command (at most 8 minutes on one GPU, no downloads): train step vs open_clip_train
# (eager, then torch.compile), MFU, tiled-loss memory/time at B = 32k/64k, the demo recipe's data-wait fraction,
# an FSDP2 1-process smoke run.
#   benchmarks/gpu_suite.sh                    # on a machine with a GPU: no flags
#   benchmarks/gpu_suite.sh --cpu --tiny       # CPU smoke test of the same code (what CI runs)
#   benchmarks/gpu_suite.sh --help             # options (--out FILE, --rows ..., --budget-s, --max-batch)
# Prints one table of ratios and writes it as JSON (default runs/gpu_suite.json).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$repo/.venv/bin/python}"
[ -x "$py" ] || py="$(command -v python3)"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" "$repo/benchmarks/gpu_suite.py" "$@"
