"""A plain-text table of evaluation metrics: one row per (task, metric), columns aligned."""

from __future__ import annotations

import math

HEADER = ("task", "metric", "value")


def split_metric_name(name: str) -> tuple[str, str]:
    """"zeroshot/val/top1" -> ("zeroshot/val", "top1"); a name without "/" has an empty task."""
    task, _, metric = name.rpartition("/")
    return task, metric


def _format_value(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    # Recalls/accuracies are fractions: four decimals; anything else (counts, seconds) keeps its magnitude.
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.6g}"


def format_table(metrics: dict[str, float]) -> str:
    """Aligned rows in the order given; a task's name is printed on its first row only."""
    if not metrics:
        return "(no metrics)"
    rows = []
    previous_task = None
    for name, value in metrics.items():
        task, metric = split_metric_name(name)
        rows.append((task if task != previous_task else "", metric, _format_value(float(value))))
        previous_task = task
    widths = [max(len(row[i]) for row in [HEADER, *rows]) for i in range(3)]
    lines = [
        f"{HEADER[0]:<{widths[0]}}  {HEADER[1]:<{widths[1]}}  {HEADER[2]:>{widths[2]}}",
        "  ".join("-" * w for w in widths),
    ]
    lines += [f"{t:<{widths[0]}}  {m:<{widths[1]}}  {v:>{widths[2]}}" for t, m, v in rows]
    return "\n".join(lines)
