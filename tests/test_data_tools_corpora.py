"""The demo as separate corpora (data_tools.make_demo_corpora): image-text shards without audio, audio-text
shards without images, from separate draws, and a labelled tri-modal validation set."""

from __future__ import annotations

import json
import re
from pathlib import Path

import webdataset as wds

from data_tools.demo_splits import SPLITS
from data_tools.demo_synth import COLOURS, SHAPES
from data_tools.make_demo_corpora import class_names, main, scene_names
from mmembed.data import count_samples

VAL = "trimodal_val"

COLOUR = re.compile(rf"\b({'|'.join(COLOURS)})\b")
SHAPE = re.compile(rf"\b({'|'.join(SHAPES)})\b")


def samples(pattern: str) -> list[dict]:
    return list(wds.WebDataset(pattern, shardshuffle=False, empty_check=False))


def scene_of(caption: str) -> str:
    """The scene a single-object caption names: its colour, shape and horizontal place (data_tools.demo_captions
    words every cell with "left" or "right" in it unless it is in the centre column)."""
    colours, shapes = COLOUR.findall(caption), SHAPE.findall(caption)
    assert len(colours) == len(shapes) == 1, caption
    column = "left" if "left" in caption else "right" if "right" in caption else "centre"
    return f"{colours[0]} {shapes[0]} on the {column}"


def test_corpora_hold_only_their_modalities_from_separate_draws(small_corpora: Path) -> None:
    info = json.loads((small_corpora / "corpora.json").read_text())
    members = {"image_text": {"png", "txt", "idx"}, "audio_text": {"flac", "txt", "idx"},
               "trimodal_val": {"png", "txt", "flac", "idx", "cls_all", "cls_scene"}}
    captions = {}
    for name, expected in members.items():
        entry = info["sets"][name]
        found = samples(entry["urls"])
        assert count_samples(entry["urls"]) == entry["num_samples"] == len(found) == (64 if name == VAL else 256)
        assert all(set(s) - {"__key__", "__url__", "__local_path__"} == expected for s in found), name
        assert [int(s["idx"]) for s in found] == list(range(len(found)))  # dense per corpus: offsets do the rest
        captions[name] = [s["txt"].decode() for s in found]
    # Separate draws: the two corpora are not the same attribute sequence rendered twice.
    assert [scene_of(c) for c in captions["image_text"]] != [scene_of(c) for c in captions["audio_text"]]
    # Training combinations only (the demo's held-out combinations never appear).
    held_out = {f"{c} {s}" for c, s in SPLITS["scatter"].held_out}
    assert not any(scene_of(c).rsplit(" on the ", 1)[0] in held_out for c in captions["image_text"])


def test_validation_labels_name_what_every_member_shows(small_corpora: Path) -> None:
    classes, scenes = class_names(), scene_names()
    assert (small_corpora / "scenes.txt").read_text().splitlines() == scenes
    found = samples(json.loads((small_corpora / "corpora.json").read_text())["sets"][VAL]["urls"])
    for sample in found:
        scene = scene_of(sample["txt"].decode())
        assert scenes[int(sample["cls_scene"])] == scene
        assert classes[int(sample["cls_all"])] == scene.rsplit(" on the ", 1)[0]
    # 64 balanced draws of 22 trained combinations, each cycling through its cells: many distinct scenes.
    assert len({int(s["cls_scene"]) for s in found}) >= 40


def test_command_line_writes_the_layout(tmp_path: Path, capsys) -> None:
    main(["--out", str(tmp_path), "--corpus-samples", "8", "--val-samples", "4", "--samples-per-shard", "4"])
    out = capsys.readouterr().out
    assert "image_text [image, text]: 8 samples in 2 shards" in out and "trimodal_val" in out
    assert (tmp_path / "audio_text" / "sizes.json").is_file() and (tmp_path / "classnames_all.txt").is_file()
