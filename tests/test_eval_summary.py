"""The end-of-run summary: chance next to every number, the task's note and classes, summary.txt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmembed.eval.evaluate import TaskResult
from mmembed.eval.summary import format_summary, recall_chance, top_k_chance, write_run_report


def _results() -> list[TaskResult]:
    zero_shot = TaskResult("zeroshot", "image_heldout", {
        "zeroshot/image_heldout/top1": 0.8125, "zeroshot/image_heldout/top5": 1.0,
        "zeroshot/image_heldout/mean_per_class_recall": 0.8}, np.eye(8, dtype=int), [f"c{i}" for i in range(8)],
        samples=480, note="never seen in training")
    many = TaskResult("zeroshot", "image_all", {"zeroshot/image_all/top1": 0.5, "zeroshot/image_all/top5": 0.9,
                                                 "zeroshot/image_all/mean_per_class_recall": 0.5},
                      np.eye(30, dtype=int), [f"c{i}" for i in range(30)], samples=480)
    retrieval = TaskResult("retrieval", "val_image_text", {
        f"retrieval/val_image_text/{a}_to_{b}_R@{k}": v for a, b in (("image", "text"), ("text", "image"))
        for k, v in ((1, 0.25), (5, 0.75), (10, 0.9))}, samples=480, note="own captions")
    return [zero_shot, many, retrieval]


def test_chance_levels() -> None:
    assert top_k_chance(8, 1) == 0.125 and top_k_chance(8, 5) == 0.625 and top_k_chance(3, 5) == 1.0
    assert recall_chance(480, 5) == pytest.approx(5 / 480) and recall_chance(4, 10) == 1.0


def test_summary_puts_chance_next_to_every_number() -> None:
    text = format_summary(_results(), title="demo: 400 steps")
    lines = text.splitlines()
    assert lines[0] == "==== demo: 400 steps ===="
    assert ("  image_heldout: top-1 0.812 (chance 0.125), top-5 1.000 (chance 0.625); 8 classes, 480 samples"
            in lines)
    assert "      never seen in training" in lines and "      classes: c0, c1, c2, c3, c4, c5, c6, c7" in lines
    assert "  image_all: top-1 0.500 (chance 0.033), top-5 0.900 (chance 0.167); 30 classes, 480 samples" in lines
    assert not any(line.startswith("      classes: c0, c1, c2, c3, c4, c5, c6, c7, c8") for line in lines)
    assert "  val_image_text: 480 pairs; own captions" in lines
    assert ("      image->text: R@1 0.250 (chance 0.002), R@5 0.750 (chance 0.010), R@10 0.900 (chance 0.021)"
            in lines)
    assert any(line.startswith("      text->image: R@1 0.250") for line in lines)
    assert "no evaluation tasks" in format_summary([], title="x")


def test_report_is_written_next_to_the_run(tmp_path: Path) -> None:
    text = write_run_report(tmp_path, _results(), title="demo", plots=False)
    assert (tmp_path / "summary.txt").read_text() == text + "\n"
    assert not (tmp_path / "plots").exists()


def test_a_plot_failure_does_not_fail_the_run(tmp_path: Path) -> None:
    text = write_run_report(tmp_path, _results(), title="demo", plots=True)  # no checkpoint to read
    assert "plots: not written (no model checkpoint" in text and (tmp_path / "summary.txt").is_file()
