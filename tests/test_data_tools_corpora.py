"""The demo as separate corpora (data_tools.make_demo_corpora): image-text shards without audio, audio-text
shards without images, from separate draws, and a labelled tri-modal validation set."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import webdataset as wds

from data_tools.demo_splits import SPLITS
from data_tools.make_demo_corpora import CORPORA, attribute_sets, class_names, main, scene_names
from mmembed.data import count_samples

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` is a folder of scripts

VAL = "trimodal_val"


def samples(pattern: str) -> list[dict]:
    return list(wds.WebDataset(pattern, shardshuffle=False, empty_check=False))


def drawn(name: str, count: int, seed: int = 0) -> list:
    """The attributes a set was written from: each set draws all of them first from its own stream."""
    stream = 199 if name == VAL else 100 + list(CORPORA).index(name)
    return attribute_sets(count, np.random.default_rng([seed, stream]))


def test_corpora_hold_only_their_modalities_from_separate_draws(small_corpora: Path) -> None:
    info = json.loads((small_corpora / "corpora.json").read_text())
    members = {"image_text": {"png", "txt", "idx"}, "audio_text": {"flac", "txt", "idx"},
               "trimodal_val": {"png", "txt", "flac", "idx", "cls_all", "cls_scene"}}
    for name, expected in members.items():
        entry = info["sets"][name]
        found = samples(entry["urls"])
        assert count_samples(entry["urls"]) == entry["num_samples"] == len(found) == (64 if name == VAL else 256)
        assert all(set(s) - {"__key__", "__url__", "__local_path__"} == expected for s in found), name
        assert [int(s["idx"]) for s in found] == list(range(len(found)))  # dense per corpus: offsets do the rest
        for sample, attrs in zip(found, drawn(name, len(found)), strict=True):  # each caption names its object
            caption = sample["txt"].decode()
            assert attrs.colour in caption and attrs.shape in caption, (caption, attrs)
    # Separate draws: the two corpora are not the same attribute sequence rendered twice.
    assert drawn("image_text", 256) != drawn("audio_text", 256)
    # Training combinations only (the demo's held-out combinations never appear).
    held_out = set(SPLITS["scatter"].held_out)
    assert not any(a.combo in held_out for name in ("image_text", "audio_text", VAL) for a in drawn(name, 256))


def test_validation_labels_name_what_every_member_shows(small_corpora: Path) -> None:
    classes, scenes = class_names(), scene_names()
    info = json.loads((small_corpora / "corpora.json").read_text())
    assert (small_corpora / "scenes.txt").read_text().splitlines() == scenes
    found = samples(info["sets"][VAL]["urls"])
    for sample, attrs in zip(found, drawn(VAL, len(found)), strict=True):
        assert scenes[int(sample["cls_scene"])] == f"{attrs.colour} {attrs.shape} on the {attrs.column}"
        assert classes[int(sample["cls_all"])] == f"{attrs.colour} {attrs.shape}"
    counts = info["val_label_counts"]
    assert sum(counts["cls_scene"]) == len(found) and sum(counts["cls_all"]) == len(found)
    assert counts["cls_scene"] == [sum(int(s["cls_scene"]) == i for s in found) for i in range(len(scenes))]


def test_command_line_writes_the_layout(tmp_path: Path, capsys) -> None:
    main(["--out", str(tmp_path), "--corpus-samples", "8", "--val-samples", "4", "--samples-per-shard", "4"])
    out = capsys.readouterr().out
    assert "image_text [image, text]: 8 samples in 2 shards" in out and "trimodal_val" in out
    assert (tmp_path / "audio_text" / "sizes.json").is_file() and (tmp_path / "classnames_all.txt").is_file()


def test_binding_chance_comes_from_the_val_label_counts(small_corpora: Path) -> None:
    from benchmarks.trimodal_binding import chance, label_chance

    assert label_chance([2, 2]) == 0.5 and label_chance([1, 1, 1, 1]) == 0.25 and label_chance([3, 1]) == 0.625
    info = json.loads((small_corpora / "corpora.json").read_text())
    levels = chance(info)
    counts = info["val_label_counts"]["cls_scene"]
    # Simulated: the share of random candidates that carry the query's scene.
    labels = np.repeat(np.arange(len(counts)), counts)
    rng = np.random.default_rng(0)
    simulated = float(np.mean(labels[rng.integers(len(labels), size=200_000)] == np.resize(labels, 200_000)))
    assert abs(float(levels["retrieval/val_audio_image/audio_to_image_label_R@1"]) - simulated) < 0.005
    assert levels["zeroshot/image_val/top1"] == f"{1 / 30:.4f}"


def test_run_evaluations_are_read_by_step(tmp_path: Path) -> None:
    from benchmarks.run_metrics import evaluations

    lines = [{"step": 10, "loss": 1.0}, {"step": 20, "eval/zeroshot/a/top1": 0.5, "eval/retrieval/b/R@1": 0.25},
             {"step": 20, "eval/zeroshot/c/top1": 1}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert evaluations(tmp_path) == {20: {"zeroshot/a/top1": 0.5, "retrieval/b/R@1": 0.25, "zeroshot/c/top1": 1.0}}
    assert evaluations(tmp_path, "eval/zeroshot/") == {20: {"zeroshot/a/top1": 0.5, "zeroshot/c/top1": 1.0}}
