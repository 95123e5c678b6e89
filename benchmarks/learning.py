"""Does each method pay off? Seeded learning experiments on the demo data, reported in docs/results.md.

    python benchmarks/learning.py losses        # losses on clean and noisy captions and the block split
    python benchmarks/learning.py reinforced    # teacher -> mmembed reinforce -> student, N vs 2N / 4N plain
    python benchmarks/learning.py speech        # word-level speech: frozen MiniLM vs trainable byte-level text
    python benchmarks/learning.py all           # every experiment, in order
    python benchmarks/learning.py all --smoke   # a few steps each on tiny data: checks that it runs (CI)

Each experiment lives in its own module (`benchmarks/learning_<name>.py`, exposing `add_arguments(parser)`
and `run(args)`); this file only dispatches. An experiment's own options win over the shared ones below
(the speech experiment defines its own --out, --seeds, --threads and --smoke). Results go to
OUT/<name>/results.{json,md}: every run's metrics, mean ± sd over seeds per cell, chance next to each
metric, the machine and its load at start and end. Use --threads 1 (or OMP_NUM_THREADS=1) on a shared
machine: these models are too small for intra-op threads to pay, and oversubscribed threads spin.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import time
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

EXPERIMENTS = ["losses", "reinforced", "speech"]
# Experiments that write straight into --out (the others make their own OUT/<name> folder): under `all`
# they get OUT/<name>, so no two experiments share a results file.
WRITES_INTO_OUT = {"speech"}


def experiment_modules() -> dict[str, ModuleType]:
    """The experiments whose module is present (the speech experiment ships separately)."""
    found = {}
    for name in EXPERIMENTS:
        module_name = f"benchmarks.learning_{name}"
        if importlib.util.find_spec(module_name) is not None:
            found[name] = importlib.import_module(module_name)
    return found


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--smoke", action="store_true", help="a few steps on tiny data (CI): not a result")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default runs/bench_learning, or runs/bench_learning_smoke)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--reuse", action="store_true",
                        help="keep finished runs already in OUT (same steps, losses and seed): continue a stopped run")


def build_parser(modules: dict[str, ModuleType]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="experiment", required=True)
    for name, module in modules.items():
        child = sub.add_parser(name, help=(module.__doc__ or name).strip().splitlines()[0],
                               conflict_handler="resolve")
        _common(child)
        module.add_arguments(child)
    every = sub.add_parser("all", help="every experiment in order, each with its defaults")
    _common(every)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    modules = experiment_modules()
    parser = build_parser(modules)
    args = parser.parse_args(argv)
    args.out = args.out or REPO / ("runs/bench_learning_smoke" if args.smoke else "runs/bench_learning")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    names = list(modules) if args.experiment == "all" else [args.experiment]
    for name in names:
        # `all` gives each experiment its own defaults, then the shared options.
        own = build_parser(modules).parse_args([name, *_shared_argv(args)]) if args.experiment == "all" else args
        if args.experiment == "all":
            own.out = args.out / name if name in WRITES_INTO_OUT else args.out
        start = time.perf_counter()
        modules[name].run(own)
        print(f"[{name}] done in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


def _shared_argv(args: argparse.Namespace) -> list[str]:
    argv = ["--seeds", *map(str, args.seeds)]
    if args.smoke:
        argv.append("--smoke")
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.reuse:
        argv.append("--reuse")
    return argv


if __name__ == "__main__":
    sys.exit(main())
