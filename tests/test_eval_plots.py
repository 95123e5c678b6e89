"""Plots write real PNGs; metrics.jsonl parsing; the metrics table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmembed.eval.plots import (
    plot_confusion_matrix,
    plot_temperature_histogram,
    plot_training_curves,
    read_metrics_jsonl,
)
from mmembed.eval.table import format_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, min_side: int = 200) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as image:
        assert min(image.size) >= min_side
        # Not a blank canvas: a plot has more than a couple of distinct colours.
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 10


def write_metrics(path: Path) -> None:
    lines = []
    for step in range(10, 110, 10):
        lines.append({"step": step, "loss": 5.0 / step, "lr": 1e-3, "loss/infonce": 4.0 / step,
                      "logit_scale/image__text": 14.0 + step / 100, "logit_scale/audio__text": 10.0,
                      "note": "text ignored"})
        if step % 50 == 0:
            lines.append({"step": step, "eval/zeroshot/val/top1": step / 200, "eval/zeroshot/val/top5": 0.9})
    lines.append({"step": 70, "loss": 0.5})  # resumed from step 60: the re-logged step 70 supersedes
    lines.append({"step": 110, "loss": "nan"})  # the trainer writes non-finite values as strings
    path.write_text("\n".join(json.dumps(x) for x in lines) + '\n{"step": 120, "lo')  # killed mid-write


def test_read_metrics_jsonl(tmp_path: Path) -> None:
    write_metrics(tmp_path / "metrics.jsonl")
    series = read_metrics_jsonl(tmp_path / "metrics.jsonl")
    steps, loss = series["loss"]
    assert steps.tolist() == list(range(10, 120, 10))
    assert loss[steps.tolist().index(70)] == 0.5 and math.isnan(loss[-1])
    assert series["eval/zeroshot/val/top1"][0].tolist() == [50, 100]
    assert "note" not in series and "step" not in series


def test_read_metrics_jsonl_names_a_corrupt_line(tmp_path: Path) -> None:
    (tmp_path / "m.jsonl").write_text('{"step": 1, "loss": 1}\nnot json\n{"step": 2, "loss": 1}\n')
    with pytest.raises(ValueError, match=r"m.jsonl:2"):
        read_metrics_jsonl(tmp_path / "m.jsonl")
    (tmp_path / "n.jsonl").write_text('{"loss": 1}\n')
    with pytest.raises(ValueError, match="no 'step'"):
        read_metrics_jsonl(tmp_path / "n.jsonl")


def test_plot_training_curves(tmp_path: Path) -> None:
    write_metrics(tmp_path / "metrics.jsonl")
    out = plot_training_curves(tmp_path / "metrics.jsonl", tmp_path / "plots" / "curves.png")
    assert_png(out)
    (tmp_path / "empty.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(ValueError, match="no numeric metrics"):
        plot_training_curves(tmp_path / "empty.jsonl", tmp_path / "x.png")


@pytest.mark.parametrize("num_classes", [5, 70])
def test_plot_confusion_matrix(tmp_path: Path, num_classes: int) -> None:
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 5, (num_classes, num_classes)) + np.eye(num_classes, dtype=int) * 20
    cm[1] = 0  # a class without samples must not divide by zero
    names = [f"class {i}" for i in range(num_classes)]
    assert_png(plot_confusion_matrix(cm, names, tmp_path / "cm.png"))
    with pytest.raises(ValueError, match="class names"):
        plot_confusion_matrix(cm, names[:-1], tmp_path / "bad.png")


def test_plot_temperature_histogram(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    taus = {"image": rng.uniform(0.005, 0.05, 500), "text": rng.uniform(0.005, 0.05, 500)}
    assert_png(plot_temperature_histogram(taus, None, tmp_path / "hist.png"))
    counts = rng.integers(0, 6, 500)
    assert_png(plot_temperature_histogram(taus, counts, tmp_path / "hist_counts.png"))
    with pytest.raises(ValueError, match="'image' have 500 entries but counts have 3"):
        plot_temperature_histogram(taus, counts[:3], tmp_path / "bad.png")


def test_format_table_aligns_rows() -> None:
    table = format_table({"zeroshot/val/top1": 0.5, "zeroshot/val/mean_per_class_recall": 0.25,
                          "retrieval/coco/image_to_text_R@1": 1 / 3, "loss": float("nan")})
    lines = table.splitlines()
    assert lines[0].split() == ["task", "metric", "value"]
    assert len({len(line) for line in lines}) == 1  # every row padded to the same width
    assert lines[2].split() == ["zeroshot/val", "top1", "0.5000"]
    assert lines[3].split() == ["mean_per_class_recall", "0.2500"]  # task printed once per group
    assert lines[4].split() == ["retrieval/coco", "image_to_text_R@1", "0.3333"]
    assert lines[5].split() == ["loss", "nan"]
    assert format_table({}) == "(no metrics)"
