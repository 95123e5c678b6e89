"""The demo set: layout, the two held-out splits, labels, caption noise, and that every modality encodes
the caption's attributes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from data_tools.demo_captions import CAPTION_TEMPLATES, PAIR_TEMPLATES, SIZE_WORDS, caption
from data_tools.demo_splits import (
    ALL_COMBOS,
    SPLITS,
    attribute_alone_names_a_class,
    min_training_partners,
)
from data_tools.demo_synth import COLOURS, PITCH_HZ, SHAPES, Attributes
from data_tools.make_demo_data import balanced_attributes, compose_scenes, main, make_demo_data, swap_captions
from mmembed.data import build_eval_loader, count_samples
from mmembed.data.decode import decode_audio, decode_image

SAMPLE_RATE = 8000
SIZE_OF_WORD = {word: size for size, words in SIZE_WORDS.items() for word in words}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("demo")
    return make_demo_data(out, train_samples=240, val_samples=48, samples_per_shard=50,
                          sample_rate=SAMPLE_RATE, audio_seconds=1.0, image_size=32, two_objects=0.5, seed=0)


def _samples(pattern: str) -> list[dict]:
    return list(wds.WebDataset(pattern, shardshuffle=False, empty_check=False))


def parse_caption(text: str) -> Attributes:
    """The attributes a caption names (every caption names all four)."""
    words = text.replace(",", " ").replace(":", " ").replace("(", " ").replace(")", " ").split()
    colour, = [w for w in words if w in COLOURS]
    shape, = [w for w in words if w in SHAPES]
    size, = [SIZE_OF_WORD[w] for w in words if w in SIZE_OF_WORD]
    row = "top" if {"top", "upper"} & set(words) else "bottom" if {"bottom", "lower"} & set(words) else "middle"
    column = "left" if "left" in words else "right" if "right" in words else "centre"
    return Attributes(colour, shape, size, row, column)


def parse_scene(text: str) -> list[Attributes]:
    """The objects a caption describes: one, or two joined by one of the pair templates' separators."""
    if sum(word in COLOURS for word in text.replace(",", " ").replace(";", " ").split()) == 1:
        return [parse_caption(text)]
    for separator in (t.replace("{a}", "").replace("{b}", "") for t in PAIR_TEMPLATES):
        parts = text.split(separator)
        if len(parts) == 2 and all(sum(w in COLOURS for w in p.split()) == 1 for p in parts):
            return [parse_caption(p) for p in parts]
    raise AssertionError(f"cannot parse {text!r}")


def _single(samples: list[dict]) -> list[dict]:
    return [s for s in samples if len(parse_scene(s["txt"].decode())) == 1]


def test_captions_name_every_attribute_in_varied_forms() -> None:
    rng = np.random.default_rng(0)
    attrs = [Attributes(c, s, z, r, col) for c, s in ALL_COMBOS for z in SIZE_WORDS
             for r in ("top", "middle", "bottom") for col in ("left", "centre", "right")]
    captions = [caption((a,), rng) for a in attrs for _ in range(3)]
    assert [parse_caption(c) for c in captions] == [a for a in attrs for _ in range(3)]
    pairs = list(zip(attrs, attrs[::-1]))
    assert [parse_scene(caption(p, rng)) for p in pairs] == [list(p) for p in pairs]
    assert not any(" a orange" in c or c.startswith("a orange") for c in captions)
    # Batches of 64 of the default training set (2400 samples) rarely hold a repeated caption.
    combos = SPLITS["scatter"].train_combos
    train = compose_scenes(balanced_attributes(combos, 2400, rng), combos, 0.5, rng)
    batch_captions = [caption(scene, rng) for scene in train]
    repeats = [64 - len(set(batch_captions[i : i + 64])) for i in range(0, 2400 - 63, 64)]
    assert np.mean(repeats) < 0.2 and len(CAPTION_TEMPLATES) >= 10


def test_scatter_split_is_fair_and_block_split_is_harder() -> None:
    scatter, block = SPLITS["scatter"], SPLITS["block"]
    assert len(COLOURS) >= 5 and len(SHAPES) >= 4 and len(ALL_COMBOS) == 30
    # Every colour and shape is seen in training with at least two partners (scatter) or just one (block).
    assert min_training_partners(scatter) >= 2
    assert min_training_partners(block) == 1
    # Neither attribute alone names a held-out class, in either split.
    assert not attribute_alone_names_a_class(scatter) and not attribute_alone_names_a_class(block)
    assert len(set(scatter.held_out)) == 8 and len(set(block.held_out)) == 8


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
    assert demo["split"] == "scatter" and demo["noisy_train_samples"] == 0
    assert 80 < demo["two_object_train_samples"] < 140  # half, minus first objects in the centre cell


def test_held_out_combinations_never_train_and_only_val(demo):
    train = [parse_scene(s["txt"].decode()) for s in _samples(demo["splits"]["train"]["urls"])]
    val = [parse_scene(s["txt"].decode()) for s in _samples(demo["splits"]["val"]["urls"])]
    held_out = set(SPLITS["scatter"].held_out)
    assert not {a.combo for scene in train for a in scene} & held_out
    assert all(len(scene) == 1 for scene in val) and {scene[0].combo for scene in val} == held_out
    # Balanced: each combination is the first object of an equal share (240 / 22 -> 10 or 11; 48 / 8).
    assert {sum(scene[0].combo == c for scene in train) for c in SPLITS["scatter"].train_combos} == {10, 11}
    assert {sum(scene[0].combo == c for scene in val) for c in held_out} == {6}
    # Two objects never share a grid cell.
    assert all(len({(a.row, a.column) for a in scene}) == len(scene) for scene in train)


def test_class_labels_match_captions(demo):
    classnames = Path(demo["classnames"]).read_text().splitlines()
    all_names = Path(demo["classnames_all"]).read_text().splitlines()
    assert classnames == [f"{c} {s}" for c, s in SPLITS["scatter"].held_out] and len(all_names) == 30
    for sample in _samples(demo["splits"]["val"]["urls"]):
        attrs = parse_caption(sample["txt"].decode())
        assert classnames[int(sample["cls"])] == attrs.classname
        assert all_names[int(sample["cls_all"])] == attrs.classname


def _image_facts(png: bytes) -> tuple[str, float, float, float]:
    """(nearest palette colour of the shape's pixels, their mean x and y in [0, 1], their area share)."""
    pixels = np.asarray(decode_image(png), dtype=np.float32)
    saturation = pixels.max(axis=2) - pixels.min(axis=2)
    mask = saturation > 0.5 * saturation.max()
    # The fill's own colour: the median of the most saturated pixels (edges blend into the dark outline).
    fill = np.median(pixels[saturation > 0.8 * saturation.max()], axis=0)
    colour = min(COLOURS, key=lambda name: float(np.linalg.norm(fill - np.array(COLOURS[name]))))
    ys, xs = np.nonzero(mask)
    return colour, float(xs.mean() / mask.shape[1]), float(ys.mean() / mask.shape[0]), float(mask.mean())


def _third(value: float, names: tuple[str, str, str]) -> str:
    return names[min(2, int(value * 3))]


def test_images_encode_colour_position_and_size(demo):
    areas: dict[str, list[float]] = {"small": [], "large": []}
    for sample in _single(_samples(demo["splits"]["train"]["urls"]))[:80]:
        attrs = parse_caption(sample["txt"].decode())
        colour, x, y, area = _image_facts(sample["png"])
        assert colour == attrs.colour
        assert _third(x, ("left", "centre", "right")) == attrs.column
        assert _third(y, ("top", "middle", "bottom")) == attrs.row
        areas[attrs.size].append(area)
    assert max(areas["small"]) < min(areas["large"])


def _band_energy(spectrum: np.ndarray, freqs: np.ndarray, hz: float) -> float:
    return float(spectrum[np.abs(freqs - hz) < 0.03 * hz].max())


def _audio_facts(flac: bytes) -> dict[str, float]:
    """Pitch (spectral peak), harmonic ratios, onset and length of the note, and early/late energy."""
    wave, rate = decode_audio(flac)
    spectrum = np.abs(np.fft.rfft(wave))
    freqs = np.fft.rfftfreq(len(wave), 1 / rate)
    peak = float(freqs[spectrum.argmax()])
    frames = (wave[: len(wave) // 80 * 80].reshape(-1, 80) ** 2).mean(axis=1)  # 10 ms frames at 8 kHz
    loud = np.nonzero(frames > 0.05 * frames.max())[0]
    note = frames[loud[0] : loud[-1] + 1]
    return {"peak": peak, "onset": loud[0] / len(frames), "length": len(note) / len(frames),
            "early_share": float(note[: len(note) // 2].sum() / note.sum()),
            **{f"h{r}": _band_energy(spectrum, freqs, r * peak) / spectrum.max() for r in (2, 2.76, 3)}}


def _timbre(facts: dict[str, float]) -> str:
    if facts["h2.76"] > 0.2:
        return "cross"  # the bell's inharmonic partial
    if facts["h2"] > 0.65:
        return "ring"  # the pulse's strong 2nd harmonic (0.81)
    if facts["h2"] > 0.2:
        return "triangle"  # sawtooth: every harmonic, the 2nd at 0.5
    return "square" if facts["h3"] > 0.15 else "circle"  # square wave: odd harmonics; sine: none


def test_audio_encodes_colour_shape_size_and_position(demo):
    for sample in _single(_samples(demo["splits"]["train"]["urls"]))[:80]:
        attrs, facts = parse_caption(sample["txt"].decode()), _audio_facts(sample["flac"])
        assert abs(facts["peak"] / PITCH_HZ[attrs.colour] - 1) < 0.03, (facts, attrs)
        assert _timbre(facts) == attrs.shape, (facts, attrs)
        assert _third(facts["onset"] / 0.75, ("left", "centre", "right")) == attrs.column, (facts, attrs)
        assert (facts["length"] > 0.25) == (attrs.size == "large"), (facts, attrs)
        expected = {"top": facts["early_share"] > 0.75, "bottom": facts["early_share"] < 0.4,
                    "middle": 0.4 <= facts["early_share"] <= 0.6}
        assert expected[attrs.row], (facts, attrs)


def _content(sample: dict) -> dict:
    return {k: v for k, v in sample.items() if k == "__key__" or not k.startswith("__")}


def test_same_seed_same_data_and_pipeline_reads_it(demo, tmp_path):
    again = make_demo_data(tmp_path, train_samples=240, val_samples=48, samples_per_shard=50,
                           sample_rate=SAMPLE_RATE, audio_seconds=1.0, image_size=32, two_objects=0.5, seed=0)
    for split in ("train", "val"):
        first, second = _samples(demo["splits"][split]["urls"]), _samples(again["splits"][split]["urls"])
        assert [_content(s) for s in first] == [_content(s) for s in second]
    batches = list(build_eval_loader([demo["splits"]["val"]["urls"]], {"text": len}, batch_size=16))
    assert sum(len(b["__key__"]) for b in batches) == 48 and batches[-1]["__skipped__"] == 0
    assert set(batches[0]["cls"].tolist()) <= set(range(8))


def test_caption_noise_swaps_only_captions_of_the_chosen_training_samples(demo, tmp_path):
    noisy = make_demo_data(tmp_path, train_samples=240, val_samples=48, samples_per_shard=50,
                           sample_rate=SAMPLE_RATE, audio_seconds=1.0, image_size=32, two_objects=0.5, seed=0,
                           caption_noise=0.2)
    assert noisy["noisy_train_samples"] == 48 == len(noisy["noisy_train_idx"])
    clean, dirty = _samples(demo["splits"]["train"]["urls"]), _samples(noisy["splits"]["train"]["urls"])
    originals = [s["txt"] for s in clean]
    changed = [i for i, (a, b) in enumerate(zip(clean, dirty)) if a["txt"] != b["txt"]]
    assert set(changed) <= set(noisy["noisy_train_idx"])  # a donor may by chance hold the same caption
    for i, (a, b) in enumerate(zip(clean, dirty)):
        assert (a["png"], a["flac"]) == (b["png"], b["flac"])
        if i in noisy["noisy_train_idx"]:
            assert b["txt"] in originals[:i] + originals[i + 1 :]
    other_combo = sum({o.combo for o in parse_scene(a["txt"].decode())}
                      != {o.combo for o in parse_scene(b["txt"].decode())} for a, b in zip(clean, dirty))
    assert other_combo == noisy["noisy_train_samples_other_combo"] > 30
    val_clean, val_noisy = _samples(demo["splits"]["val"]["urls"]), _samples(noisy["splits"]["val"]["urls"])
    assert [_content(s) for s in val_clean] == [_content(s) for s in val_noisy]


def test_swap_captions_is_seeded_and_never_keeps_its_own_caption():
    captions = [f"c{i}" for i in range(50)]
    donors = swap_captions(captions, 0.3, np.random.default_rng(1))
    assert len(donors) == 15 and all(d != i for i, d in donors.items())
    assert all(captions[i] == f"c{d}" for i, d in donors.items())
    assert donors == swap_captions([f"c{i}" for i in range(50)], 0.3, np.random.default_rng(1))
    with pytest.raises(ValueError, match="caption noise"):
        swap_captions(captions, 1.0, np.random.default_rng(0))


def test_block_split_and_cli(tmp_path, capsys):
    main(["--out", str(tmp_path), "--split", "block", "--train-samples", "36", "--val-samples", "12",
          "--samples-per-shard", "10", "--audio-seconds", "0.1", "--caption-noise", "0.25"])
    out = capsys.readouterr().out
    assert "train: 36 samples in 4 shards" in out and "held out (block)" in out and "9 training captions" in out
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["held_out"] == [f"{c} {s}" for c, s in SPLITS["block"].held_out]
    val = [parse_caption(s["txt"].decode()).combo for s in _samples(info["splits"]["val"]["urls"])]
    train = [o.combo for s in _samples(info["splits"]["train"]["urls"]) for o in parse_scene(s["txt"].decode())]
    assert {c for c, _ in train} == set(COLOURS) and not set(train) & set(SPLITS["block"].held_out)
    assert set(val) == set(SPLITS["block"].held_out)
