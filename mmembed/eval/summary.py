"""The end-of-run summary: what each evaluation task measured, its chance level, and the numbers.

Printed and written to `<run>/summary.txt` when training ends, with the PNG plots (training curves, one
confusion matrix per zero-shot task, learned temperatures) in `<run>/plots` unless `eval.plots` is off.
Chance is what a model that guesses uniformly at random scores: top-k = min(k, C)/C for C classes, and
Recall@k = min(k, N)/N for N retrieval pairs.
"""

from __future__ import annotations

import re
from pathlib import Path

from mmembed.eval.evaluate import TaskResult

# Class names are listed in the summary up to this many; longer lists are only counted.
MAX_LISTED_CLASSES = 12
_RECALL = re.compile(r"^(?P<query>.+)_to_(?P<target>.+)_R@(?P<k>\d+)$")


def top_k_chance(num_classes: int, k: int) -> float:
    return min(k, num_classes) / num_classes


def recall_chance(num_pairs: int, k: int) -> float:
    return min(k, num_pairs) / num_pairs


def _zero_shot_lines(result: TaskResult) -> list[str]:
    classes = len(result.classnames or [])
    top1, top5 = (result.metrics[f"zeroshot/{result.name}/{m}"] for m in ("top1", "top5"))
    lines = [f"  {result.name}: top-1 {top1:.3f} (chance {top_k_chance(classes, 1):.3f}), "
             f"top-5 {top5:.3f} (chance {top_k_chance(classes, 5):.3f}); "
             f"{classes} classes, {result.samples} samples"]
    if result.note:
        lines.append(f"      {result.note}")
    if result.classnames and classes <= MAX_LISTED_CLASSES:
        lines.append(f"      classes: {', '.join(result.classnames)}")
    return lines


def _retrieval_lines(result: TaskResult) -> list[str]:
    by_direction: dict[str, list[tuple[int, float]]] = {}
    for name, value in result.metrics.items():
        match = _RECALL.match(name.rsplit("/", 1)[-1])
        if match:
            direction = f"{match['query']}->{match['target']}"
            by_direction.setdefault(direction, []).append((int(match["k"]), value))
    n = result.samples
    lines = [f"  {result.name}: {n} pairs" + (f"; {result.note}" if result.note else "")]
    for direction, recalls in by_direction.items():
        cells = ", ".join(f"R@{k} {v:.3f} (chance {recall_chance(n, k):.3f})" for k, v in sorted(recalls))
        lines.append(f"      {direction}: {cells}")
    return lines


def format_summary(results: list[TaskResult], *, title: str) -> str:
    """Readable lines: per zero-shot task top-1/top-5 next to chance, per retrieval task Recall@k."""
    lines = [f"==== {title} ===="]
    zero_shot = [r for r in results if r.kind == "zeroshot"]
    retrieval = [r for r in results if r.kind == "retrieval" and r.samples > 0]
    if zero_shot:
        lines.append("zero-shot classification:")
        for result in zero_shot:
            lines += _zero_shot_lines(result)
    if retrieval:
        lines.append("retrieval (item i of one modality matches item i of the other):")
        for result in retrieval:
            lines += _retrieval_lines(result)
    if not zero_shot and not retrieval:
        lines.append("no evaluation tasks configured (eval.zeroshot / eval.retrieval)")
    return "\n".join(lines)


def write_run_report(run_dir: Path, results: list[TaskResult], *, title: str, plots: bool) -> str:
    """Write summary.txt (and the plots) into `run_dir`; returns the summary with the plot paths."""
    text = format_summary(results, title=title)
    if plots:
        from mmembed.checkpoint import resolve_model_dir
        from mmembed.eval.cli import write_plots

        try:
            written = write_plots(results, resolve_model_dir(run_dir), run_dir / "plots")
            text += "\nplots: " + ", ".join(str(p) for p in written)
        except (OSError, ValueError) as err:  # a finished run keeps its checkpoint and numbers regardless
            text += f"\nplots: not written ({err})"
    (run_dir / "summary.txt").write_text(text + "\n")
    return text
