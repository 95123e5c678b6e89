"""Read what a finished training run logged: its evaluations, step by step (shared by the benchmarks)."""

from __future__ import annotations

import json
from pathlib import Path


def evaluations(run_dir: Path, prefix: str = "eval/") -> dict[int, dict[str, float]]:
    """step -> {metric: value} of every evaluation in `run_dir`/metrics.jsonl whose key starts with `prefix`;
    the keys lose their leading "eval/" ("eval/zeroshot/x/top1" -> "zeroshot/x/top1")."""
    by_step: dict[int, dict[str, float]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        values = {k[len("eval/"):]: float(v) for k, v in record.items() if k.startswith(prefix)}
        if values:
            by_step.setdefault(int(record["step"]), {}).update(values)
    return by_step
