"""One command that proves mmembed's speed on one GPU against open_clip, in at most 8 minutes, no downloads.

    benchmarks/gpu_suite.sh                      # on a GPU machine: no flags
    benchmarks/gpu_suite.sh --cpu --tiny         # CPU smoke test of the same code (tiny sizes; CI runs it)

Rows (benchmarks/suite_rows.py), each measured in its own processes and each allowed to fail on its own:
- train: ViT-B/32 image-text, bf16, the largest batch that fits (probed, benchmarks/suite_probe.py):
  mmembed vs open_clip_train on the same synthetic data (benchmarks/train_step.py), both eager, then mmembed
  with torch.compile (target >= 1.3x open_clip_train's samples/s); medians over the logged intervals after
  the first, with each trainer's data-wait share beside it.
- mfu: model FLOP utilisation of those steps: FLOPs of one step (torch.utils.flop_counter) x steps/s over the
  device's dense bf16 peak (a table of known devices; "unknown peak" otherwise).
- loss: tiled InfoNCE vs open_clip's ClipLoss at B = 32k and 64k, one forward+backward in fresh processes
  (benchmarks/loss_memory.py): peak memory (target <= 1/20) and median time (target <= 1.3x).
- demo: `launch/train.sh recipes/demo.yaml` (1 process) and the trainer's logged data-wait fraction (< 5%).
- fsdp2: `SHARDING=fsdp launch/train.sh recipes/demo.yaml`, 1 process: FSDP2 sharding reported, finite losses,
  sharded checkpoint and consolidated model written; its samples/s for the record.

Prints one table and writes it, with the machine and settings, as JSON (--out). Exits 1 if a row failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for path in (str(HERE), str(REPO)):
    if path not in sys.path:
        sys.path.insert(0, path)

from suite_rows import ROWS, Row, Sizes, Suite, full_sizes, tiny_sizes  # noqa: E402

DEFAULT_BUDGET_S = 480  # the "at most 8 minutes on one GPU"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (with --tiny: the CI smoke test)")
    parser.add_argument("--tiny", action="store_true", help="tiny model, batches and loss sizes (seconds a row)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "gpu_suite.json", help="JSON results")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS), help="rows to run")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help="wall-clock budget; rows that would start after it are reported as skipped")
    parser.add_argument("--max-batch", type=int, default=8192, help="upper end of the train-step batch probe")
    parser.add_argument("--workers", type=int, default=None,
                        help="loader workers per trainer (default: cores - 2, at most 12; 1 with --cpu)")
    return parser.parse_args(argv)


def machine_facts(device: str) -> dict[str, object]:
    facts: dict[str, object] = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
                                "cpu_count": os.cpu_count(), "platform": platform.platform()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        facts.update(device_name=props.name, device_memory_gib=round(props.total_memory / 2**30, 1),
                     cuda=torch.version.cuda)
    else:
        facts["device_name"] = f"CPU ({os.cpu_count()} cores)"
    return facts


def fmt_value(row: Row) -> str:
    if row.value is None:
        return "-"
    if row.unit == "%":
        return f"{100 * row.value:.1f}%"
    if row.unit == "x":
        return f"{row.value:.3g}x"
    return f"{row.value:.4g} {row.unit}".strip()


def format_table(rows: list[Row]) -> str:
    met = {True: "yes", False: "NO", None: "-"}
    lines = [f"{'row':<64} {'value':>9} {'target':>8} {'met':>4}  note", "-" * 120]
    for row in rows:
        note = row.note if row.status == "ok" else f"[{row.status}] {row.note}"
        lines.append(f"{row.label:<64} {fmt_value(row):>9} {row.target or '-':>8} {met[row.met]:>4}  {note}")
    return "\n".join(lines)


def check_device(args: argparse.Namespace) -> str | None:
    """The device to run on, or None after printing why the suite cannot run here."""
    if args.cpu and not args.tiny:
        print("gpu_suite: --cpu runs only with --tiny (the full sizes take hours on a CPU)", file=sys.stderr)
        return None
    if args.cpu:
        return "cpu"
    if not torch.cuda.is_available():
        print("gpu_suite: no CUDA device here; on a CPU-only machine run `benchmarks/gpu_suite.sh --cpu --tiny` "
              "(the smoke test)", file=sys.stderr)
        return None
    return "cuda"


def workers_default(device: str) -> int:
    return 1 if device == "cpu" else max(1, min(12, (os.cpu_count() or 4) - 2))


def run_suite(args: argparse.Namespace, device: str) -> dict[str, object]:
    started = time.perf_counter()
    workers = args.workers or workers_default(device)
    sizes: Sizes = tiny_sizes(device, workers) if args.tiny else full_sizes(args.max_batch, workers)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gpu_suite-") as tmp:
        suite = Suite(device=device, sizes=sizes, work=Path(tmp), deadline=started + args.budget_s)
        for name in args.rows:
            t0 = time.perf_counter()
            got = suite.guarded(name, ROWS[name])
            print(f"[{time.perf_counter() - started:6.0f} s] {name}: {len(got)} row(s) in "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            rows.extend(got)
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "mode": "tiny" if args.tiny else "full", "machine": machine_facts(device),
            "settings": asdict(sizes), "elapsed_s": round(time.perf_counter() - started, 1),
            "rows": [asdict(row) for row in rows]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = check_device(args)
    if device is None:
        return 2
    report = run_suite(args, device)
    rows = [Row(**row) for row in report["rows"]]  # type: ignore[arg-type]
    machine = report["machine"]
    print(f"\nmmembed GPU suite ({report['mode']}) on {machine['device_name']}, {report['date']}, "  # type: ignore[index]
          f"{report['elapsed_s']} s")
    print(format_table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    print(f"\nwritten: {args.out}")
    return 1 if any(row.status == "error" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
