"""Spoken single words (data_tools.make_speech_words): a vocabulary with no homophones, unheard words that
never occur in training, balanced clips, labels that match the words spoken, and sized shards."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import webdataset as wds

from data_tools.make_speech_words import (
    HEARD_EVAL_WORDS,
    TRAIN_WORDS,
    UNHEARD_WORDS,
    WORD_VOICES,
    choose_words,
    main,
    make_speech_words,
)

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed (apt-get install espeak-ng; `make setup` installs it where apt-get exists)")


def _samples(pattern: str) -> list[dict]:
    return list(wds.WebDataset(pattern, shardshuffle=False, empty_check=False))


def _spoken_word(caption: str, vocabulary: set[str]) -> str:
    found = [w for w in caption.rstrip(".").split() if w in vocabulary]
    assert len(found) == 1, (caption, found)
    return found[0]


@pytest.fixture(scope="module")
def words(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("speech_words")
    return make_speech_words(out, train_words=12, eval_words=4, train_clips_per_word=3, eval_clips_per_word=2,
                             samples_per_shard=20, seed=0)


def test_vocabulary_sizes_and_disjoint_unheard_words() -> None:
    assert (len(TRAIN_WORDS), len(UNHEARD_WORDS), len(HEARD_EVAL_WORDS)) == (900, 100, 100)
    assert len(set(TRAIN_WORDS) | set(UNHEARD_WORDS)) == 1000  # no duplicates, disjoint
    assert set(HEARD_EVAL_WORDS) <= set(TRAIN_WORDS)
    assert all(w.isascii() and w.isalpha() and w.islower() for w in TRAIN_WORDS + UNHEARD_WORDS)


@needs_espeak
def test_no_two_words_sound_alike_to_espeak() -> None:
    """A homophone of a train word (right / write) would make an 'unheard' word heard."""
    vocabulary = TRAIN_WORDS + UNHEARD_WORDS
    text = "".join(f"{w}.\n" for w in vocabulary)  # one clause, so one line of phonemes, per word
    result = subprocess.run(["espeak-ng", "-q", "-x", "-v", "en-us", "--stdin"], input=text, capture_output=True,
                            text=True, check=True)
    phonemes = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    assert len(phonemes) == len(vocabulary)
    alike = [(vocabulary[i], p) for i, p in enumerate(phonemes) if Counter(phonemes)[p] > 1]
    assert not alike, alike


def test_smaller_sets_keep_the_heard_words_in_training() -> None:
    small = choose_words(12, 4)
    assert len(small["train"]) == 12 and set(small["val_heard"]) <= set(small["train"])
    assert small["val_unheard"] == UNHEARD_WORDS[:4]
    with pytest.raises(ValueError, match="train_words must lie in"):
        choose_words(3, 4)


@needs_espeak
def test_layout_counts_and_sizes(words: dict) -> None:
    info = json.loads(Path(words["info"]).read_text())
    assert {n: (s["num_samples"], s["num_words"]) for n, s in info["splits"].items()} == {
        "train": (36, 12), "val_heard": (8, 4), "val_unheard": (8, 4)}
    assert info["splits"]["train"]["num_shards"] == 2
    sizes = json.loads((Path(info["train_words"]).parent / "train" / "sizes.json").read_text())
    assert sum(sizes.values()) == 36
    assert Path(info["classnames_heard"]).read_text().splitlines() == list(HEARD_EVAL_WORDS[:4])
    assert Path(info["classnames_unheard"]).read_text().splitlines() == list(UNHEARD_WORDS[:4])
    assert info["voices"] == list(WORD_VOICES)


@needs_espeak
def test_train_is_balanced_and_never_speaks_an_unheard_word(words: dict) -> None:
    train_words = Path(words["train_words"]).read_text().splitlines()
    spoken = Counter(_spoken_word(s["txt"].decode(), set(train_words))
                     for s in _samples(words["splits"]["train"]["urls"]))
    assert spoken == dict.fromkeys(train_words, 3)
    assert not set(spoken) & set(UNHEARD_WORDS)


@needs_espeak
@pytest.mark.parametrize(("split", "classnames"), [("val_heard", "classnames_heard"),
                                                   ("val_unheard", "classnames_unheard")])
def test_eval_labels_match_the_spoken_word(words: dict, split: str, classnames: str) -> None:
    names = Path(words[classnames]).read_text().splitlines()
    labels = Counter()
    for sample in _samples(words["splits"][split]["urls"]):
        word = _spoken_word(sample["txt"].decode(), set(names))
        assert names[int(sample["cls"])] == word
        labels[word] += 1
    assert labels == dict.fromkeys(names, 2)


def test_bad_sizes_exit_with_one_line(tmp_path: Path) -> None:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    with pytest.raises(SystemExit, match="eval_words must lie in"):
        main(["--out", str(tmp_path / "out"), "--eval-words", "0"])
    assert not (tmp_path / "out").exists()
