"""Several training sources (mmembed.data.mixing): one source per micro-batch chosen by a seeded function of
(seed, micro-batch number, weights), each source decoding only its own modalities, per-source streams that
resume exactly in resampled and epoch mode, sample indices kept apart, and a stalled source that stops the
run instead of being silently starved."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch
from test_data_support import AUGMENTING, PLAIN, batches_equal, image_number, sample_members, write_numbered_shards

from data_tools.shard_writer import SizedShardWriter
from mmembed.config.data import DataConfig, ShardSource
from mmembed.data import build_train_loader
from mmembed.data.mixing import choose_source, first_batch_number
from mmembed.errors import DataError


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, str]:
    """Two corpora whose shards hold every member; the sources below declare which ones they provide."""
    root = tmp_path_factory.mktemp("corpora")
    pictures = write_numbered_shards(root / "pictures", "p", list(range(24)), per_shard=6)  # 4 shards
    sounds = write_numbered_shards(root / "sounds", "s", list(range(100, 120)), per_shard=5)  # 4 shards
    return {"pictures": pictures.pattern, "sounds": sounds.pattern}


def two_sources(corpora: dict[str, str], resampled: bool = True, weights: tuple[float, float] = (1.0, 1.0),
                workers: int = 2, **extra) -> DataConfig:
    return DataConfig(train=[
        ShardSource(urls=[corpora["pictures"]], name="pictures", modalities=["image", "text"], weight=weights[0]),
        ShardSource(urls=[corpora["sounds"]], name="sounds", modalities=["audio", "text"], weight=weights[1]),
    ], num_workers=workers, shuffle_buffer=4, resampled=resampled, **extra)


def take(cfg: DataConfig, count: int, seed: int = 0, resume: dict | None = None, **kwargs) -> list[dict]:
    loader = build_train_loader(cfg, AUGMENTING, batch_size=3, seed=seed, resume=resume, **kwargs)
    return list(itertools.islice(loader, count))


def test_source_choice_is_a_pure_function_of_seed_number_and_weights() -> None:
    draws = [choose_source(5, k, (1.0, 3.0)) for k in range(4000)]
    assert draws == [choose_source(5, k, (1.0, 3.0)) for k in range(4000)]  # what every rank computes
    assert 0.72 < Counter(draws)[1] / len(draws) < 0.78
    assert draws != [choose_source(6, k, (1.0, 3.0)) for k in range(4000)]
    assert {choose_source(0, k, (0.0, 1.0)) for k in range(200)} == {1}
    # Worker w of W produces the micro-batches k = w, w + W, ...: the first one at or after a resume point.
    assert [first_batch_number(w, 3, 7) for w in range(3)] == [9, 7, 8]


def test_each_micro_batch_holds_only_its_sources_modalities(corpora) -> None:
    batches = take(two_sources(corpora), 16)
    for k, batch in enumerate(batches):
        assert batch["__batch__"] == k
        source = batch["__source__"]
        assert source == choose_source(0, k, (1.0, 1.0))
        prefix = "ps"[source]
        assert all(key.startswith(prefix) for key in batch["__key__"])
        # The shards hold png, txt and flac; each source decodes only what it declares.
        assert ("image" in batch, "audio" in batch) == ((True, False) if source == 0 else (False, True))
    assert {b["__source__"] for b in batches} == {0, 1}


def test_sample_indices_of_each_source_are_offset_by_the_sizes_before_it(corpora) -> None:
    loader = build_train_loader(two_sources(corpora, workers=0), PLAIN, batch_size=3, seed=0)
    batches = list(itertools.islice(loader, 30))
    for batch in batches:
        numbers = [int(key[1:]) for key in batch["__key__"]]
        # idx is dense from 0 within each corpus; the second corpus starts after the first one's 24 samples.
        expected = numbers if batch["__source__"] == 0 else [24 + n - 100 for n in numbers]
        assert batch["index"].tolist() == expected and batch["index"].dtype == torch.long
        if batch["__source__"] == 0:  # contents stay attached to their keys
            assert [image_number(img) for img in batch["image"]] == numbers


@pytest.mark.parametrize("resampled", [True, False], ids=["resampled", "epochs"])
@pytest.mark.parametrize("stop", [5, 6])
def test_resume_replays_the_source_choice_and_every_sources_stream(corpora, resampled: bool, stop: int) -> None:
    cfg = two_sources(corpora, resampled=resampled, weights=(2.0, 1.0))
    reference = take(cfg, stop + 8)
    consumed: dict[str, dict[int, int]] = {"pictures": {}, "sounds": {}}
    for batch in reference[:stop]:
        consumed[["pictures", "sounds"][batch["__source__"]]][batch["__worker__"]] = batch["__consumed__"]
    resume = {"sources": consumed, "next_batch": reference[stop - 1]["__batch__"] + 1}
    resumed = take(cfg, 8, resume=resume)
    for want, got in zip(reference[stop:], resumed, strict=True):
        # Keys, augmented images/audio and the bookkeeping, bit for bit.
        assert batches_equal({k: v for k, v in want.items() if k != "__skipped__"},
                             {k: v for k, v in got.items() if k != "__skipped__"})
    # A resume point that forgets the sources' positions does not replay the stream: the check can fail.
    forgetful = take(cfg, 8, resume={"sources": {}, "next_batch": resume["next_batch"]})
    assert not all(batches_equal(a, b) for a, b in zip(reference[stop:], forgetful, strict=True))


def test_epoch_mode_runs_each_source_through_its_own_epochs(corpora) -> None:
    cfg = two_sources(corpora, resampled=False, weights=(1.0, 1.0), workers=0)
    batches = take(cfg, 40)
    per_source: dict[int, list[str]] = {0: [], 1: []}
    for batch in batches:
        per_source[batch["__source__"]].extend(batch["__key__"])
    # Batches of 3 over 24 and 20 samples: each source's first epoch holds every one of its samples once.
    for source, size, first in ((0, 24, 0), (1, 20, 100)):
        keys = per_source[source]
        assert len(keys) >= 2 * size, "too few batches of this source to see two epochs"
        epoch = keys[: size - size % 3]
        assert len(set(epoch)) == len(epoch)
        assert set(keys[:size]) <= {f"{'ps'[source]}{n:05d}" for n in range(first, first + size)}


def test_two_ranks_draw_the_same_sources_and_disjoint_samples(corpora) -> None:
    cfg = two_sources(corpora, resampled=False, workers=1)
    ranks = [take(cfg, 12, rank=rank, world_size=2) for rank in (0, 1)]
    assert [b["__source__"] for b in ranks[0]] == [b["__source__"] for b in ranks[1]]
    for source in (0, 1):  # within a source's first epoch (2 shards, 10 or 12 samples per rank): disjoint
        keys = [{key for batch in [b for b in batches if b["__source__"] == source][:3] for key in batch["__key__"]}
                for batches in ranks]
        assert len(keys[0]) == len(keys[1]) == 9 and not keys[0] & keys[1]


def test_a_source_whose_samples_are_all_unusable_stops_the_run_naming_it(corpora, tmp_path) -> None:
    """No silent starvation: the good source keeps yielding, but the first micro-batch drawn from the broken one
    stops the stream with an error that names the source."""
    with SizedShardWriter(tmp_path, "mute", samples_per_shard=10) as writer:
        for number in range(40):
            writer.write(f"m{number:05d}", {k: v for k, v in sample_members(number).items() if k != "flac"})
    cfg = DataConfig(train=[
        ShardSource(urls=[corpora["pictures"]], name="pictures", modalities=["image", "text"]),
        ShardSource(urls=[writer.close().pattern], name="mute", modalities=["audio", "text"]),
    ], num_workers=0, shuffle_buffer=0, max_consecutive_skips=30)
    with pytest.raises(DataError) as raised:
        take(cfg, 20)
    message = str(raised.value)
    assert message.startswith("source 'mute': ") and "missing audio x30" in message


def test_an_index_beyond_its_sources_size_stops_the_run(corpora) -> None:
    cfg = two_sources(corpora, workers=0)
    cfg.train[0].num_samples = 10  # the shards' idx go up to 23: rows would land in the next source's state
    with pytest.raises(DataError, match=r"source 'pictures': sample p\d+ has idx \d+, beyond the source's 10"):
        take(cfg, 20)


def test_resume_points_that_do_not_fit_are_refused(corpora) -> None:
    cfg = two_sources(corpora)
    with pytest.raises(ValueError, match=r"sources \['other'\]"):
        take(cfg, 1, resume={"sources": {"other": {0: 3}}, "next_batch": 2})
    with pytest.raises(ValueError, match="data workers"):
        take(cfg, 1, resume={"sources": {"pictures": {5: 3}}, "next_batch": 2})
