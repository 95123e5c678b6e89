"""Spoken-word data from espeak-ng: layout, disjoint train / held-out vocabularies, labels that match the
words spoken, and a clear error when espeak-ng is missing."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds

from data_tools.make_speech_data import (
    HELD_OUT,
    NOVEL_WORDS,
    TRAIN_COMMANDS,
    EspeakMissing,
    main,
    make_speech_data,
)

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed (apt-get install espeak-ng; `make setup` installs it where apt-get exists)")


def _samples(pattern: str) -> list[dict]:
    return list(wds.WebDataset(pattern, shardshuffle=False, empty_check=False))


def _words(caption: str, vocabulary: tuple[str, ...]) -> str:
    found = [w for w in vocabulary if w in caption]
    assert len(found) == 1, (caption, found)
    return found[0]


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("speech")
    return make_speech_data(out, train_samples=60, val_samples=16, val_word_samples=12, samples_per_shard=25,
                            seed=0)


def test_vocabularies_are_disjoint_and_compositional() -> None:
    assert not set(TRAIN_COMMANDS) & set(HELD_OUT)
    assert not set(NOVEL_WORDS) & {w for c in TRAIN_COMMANDS + HELD_OUT for w in c.split()}
    train_words = {w for c in TRAIN_COMMANDS for w in c.split()}
    # Every word of a held-out command was heard in training, in other combinations.
    assert {w for c in HELD_OUT for w in c.split()} <= train_words
    assert len(set(HELD_OUT)) == len(HELD_OUT) == 8


@needs_espeak
def test_layout_and_info(speech: dict) -> None:
    info = json.loads(Path(speech["info"]).read_text())
    counts = {name: split["num_samples"] for name, split in info["splits"].items()}
    assert counts == {"train": 60, "val": 16, "val_words": 12}
    assert info["splits"]["train"]["num_shards"] == 3
    assert Path(info["classnames"]).read_text().splitlines() == list(HELD_OUT)
    assert Path(info["classnames_words"]).read_text().splitlines() == list(NOVEL_WORDS)
    assert Path(info["train_classnames"]).read_text().splitlines() == list(TRAIN_COMMANDS)


@needs_espeak
def test_train_holds_only_train_commands_and_val_labels_match_the_words(speech: dict) -> None:
    train = _samples(speech["splits"]["train"]["urls"])
    assert [int(s["idx"]) for s in train] == list(range(60))
    spoken = {_words(s["txt"].decode(), TRAIN_COMMANDS + HELD_OUT) for s in train}
    assert spoken <= set(TRAIN_COMMANDS) and len(spoken) == 40  # 60 clips cycle through all 40 commands
    assert all("cls" not in s for s in train)
    for split, vocabulary in (("val", HELD_OUT), ("val_words", NOVEL_WORDS)):
        for sample in _samples(speech["splits"][split]["urls"]):
            word = _words(sample["txt"].decode(), vocabulary)
            assert vocabulary[int(sample["cls"])] == word


@needs_espeak
def test_audio_is_speech_of_plausible_length_and_voices_vary(speech: dict) -> None:
    clips = []
    for sample in _samples(speech["splits"]["val"]["urls"]):
        wave, rate = sf.read(io.BytesIO(sample["flac"]), dtype="float32")
        assert rate == 16000 and wave.ndim == 1
        assert 0.3 < len(wave) / rate < 2.5
        assert 0.2 < np.abs(wave).max() <= 1.0
        clips.append(wave)
    # 16 clips of 8 commands (2 each) with random voices: no two recordings are the same.
    lengths = {len(c) for c in clips}
    assert len(lengths) > 8


@needs_espeak
def test_same_seed_same_data(speech: dict, tmp_path: Path) -> None:
    again = make_speech_data(tmp_path, train_samples=60, val_samples=16, val_word_samples=12,
                             samples_per_shard=25, seed=0)
    first, second = _samples(speech["splits"]["val"]["urls"]), _samples(again["splits"]["val"]["urls"])
    assert [s["flac"] for s in first] == [s["flac"] for s in second]


def test_missing_espeak_gives_install_instructions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no espeak-ng on PATH
    with pytest.raises(EspeakMissing, match="apt-get install espeak-ng"):
        make_speech_data(tmp_path / "out", train_samples=1, val_samples=1, val_word_samples=1)
    assert not (tmp_path / "out").exists()  # nothing written before the check
    with pytest.raises(SystemExit, match="apt-get install espeak-ng"):
        main(["--out", str(tmp_path / "out")])
