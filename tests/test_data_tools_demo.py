"""The demo set: layout, held-out combinations, labels, and that each modality encodes the attributes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from data_tools.demo_synth import COLOURS, PITCH_HZ, SHAPES
from data_tools.make_demo_data import HELD_OUT, main, make_demo_data
from mmembed.data import build_eval_loader, count_samples
from mmembed.data.decode import decode_audio, decode_image

SAMPLE_RATE = 8000
OBJECT = re.compile(rf"\b({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})\b")
POSITION = re.compile(r"\b(left|right)\b")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("demo")
    return make_demo_data(out, train_samples=240, val_samples=48, samples_per_shard=50,
                          sample_rate=SAMPLE_RATE, audio_seconds=0.5, image_size=32, seed=0)


def _samples(pattern: str) -> list[dict]:
    return list(wds.WebDataset(pattern, shardshuffle=False, empty_check=False))


def _attributes(sample: dict) -> tuple[str, str, str]:
    caption = sample["txt"].decode()
    found, where = OBJECT.search(caption), POSITION.search(caption)
    assert found and where, caption
    return found.group(1), found.group(2), where.group(1)


def test_layout_counts_and_info(demo):
    out = Path(demo["info"]).parent
    assert json.loads(Path(demo["info"]).read_text())["splits"] == demo["splits"]
    train, val = demo["splits"]["train"], demo["splits"]["val"]
    assert train["urls"] == str(out / "train" / "train-{000000..000004}.tar") and train["num_shards"] == 5
    assert val["urls"] == str(out / "val" / "val-000000.tar")
    assert count_samples(train["urls"]) == train["num_samples"] == 240
    assert count_samples(val["urls"]) == val["num_samples"] == 48
    samples = _samples(train["urls"])
    assert [int(s["idx"]) for s in samples] == list(range(240))
    assert all({"png", "txt", "flac", "idx"} <= set(s) for s in samples)


def test_held_out_combinations_never_train_and_only_val(demo):
    train = {_attributes(s)[:2] for s in _samples(demo["splits"]["train"]["urls"])}
    val = {_attributes(s)[:2] for s in _samples(demo["splits"]["val"]["urls"])}
    assert not train & set(HELD_OUT)
    assert val == set(HELD_OUT)
    assert {c for c, _ in train} == set(COLOURS) and {s for _, s in train} == set(SHAPES)


def test_class_labels_match_captions(demo):
    classnames = Path(demo["classnames"]).read_text().splitlines()
    all_names = Path(demo["classnames_all"]).read_text().splitlines()
    assert classnames == [f"{c} {s}" for c, s in HELD_OUT] and len(all_names) == 12
    for sample in _samples(demo["splits"]["val"]["urls"]):
        colour, shape, _ = _attributes(sample)
        assert classnames[int(sample["cls"])] == f"{colour} {shape}"
        assert all_names[int(sample["cls_all"])] == f"{colour} {shape}"


def _image_facts(png: bytes) -> tuple[str, float]:
    """(nearest palette colour of the most saturated pixels, their mean x position in [0, 1])."""
    pixels = np.asarray(decode_image(png), dtype=np.float32)
    saturation = pixels.max(axis=2) - pixels.min(axis=2)
    mask = saturation > 0.6 * saturation.max()
    mean = pixels[mask].mean(axis=0)
    colour = min(COLOURS, key=lambda name: float(np.linalg.norm(mean - np.array(COLOURS[name]))))
    return colour, float(np.nonzero(mask)[1].mean() / pixels.shape[1])


def _audio_facts(flac: bytes) -> tuple[float, float]:
    """(spectral peak frequency, share of energy in the first half of the clip)."""
    wave, rate = decode_audio(flac)
    spectrum = np.abs(np.fft.rfft(wave))
    peak = float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])
    energy = wave**2
    return peak, float(energy[: len(wave) // 2].sum() / energy.sum())


def test_image_and_audio_encode_the_caption_attributes(demo):
    for sample in _samples(demo["splits"]["train"]["urls"])[:60]:
        colour, _, position = _attributes(sample)
        seen_colour, x = _image_facts(sample["png"])
        assert seen_colour == colour
        assert (x < 0.5) == (position == "left")
        peak, early = _audio_facts(sample["flac"])
        assert abs(peak / PITCH_HZ[colour] - 1) < 0.03, (peak, colour)
        assert (early > 0.5) == (position == "left")


def _content(sample: dict) -> dict:
    return {k: v for k, v in sample.items() if k == "__key__" or not k.startswith("__")}


def test_same_seed_same_data_and_pipeline_reads_it(demo, tmp_path):
    again = make_demo_data(tmp_path, train_samples=240, val_samples=48, samples_per_shard=50,
                           sample_rate=SAMPLE_RATE, audio_seconds=0.5, image_size=32, seed=0)
    for split in ("train", "val"):
        first, second = _samples(demo["splits"][split]["urls"]), _samples(again["splits"][split]["urls"])
        assert [_content(s) for s in first] == [_content(s) for s in second]
    batches = list(build_eval_loader([demo["splits"]["val"]["urls"]], {"text": len}, batch_size=16))
    assert sum(len(b["__key__"]) for b in batches) == 48 and batches[-1]["__skipped__"] == 0
    assert set(batches[0]["cls"].tolist()) <= {0, 1, 2, 3}


def test_cli(tmp_path, capsys):
    main(["--out", str(tmp_path), "--train-samples", "20", "--val-samples", "8", "--samples-per-shard", "10",
          "--audio-seconds", "0.1"])
    assert "train: 20 samples in 2 shards" in capsys.readouterr().out
    assert (tmp_path / "val" / "sizes.json").is_file()
