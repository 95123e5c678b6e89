"""Determinism, exact resume (augmentations included) and disjoint epoch splits across ranks."""

from __future__ import annotations

import itertools
import os

import pytest
import torch
from test_data_support import AUGMENTING, PLAIN, batches_equal, sample_members, write_numbered_shards

from data_tools.shard_writer import SizedShardWriter
from mmembed.config.data import DataConfig, ShardSource
from mmembed.data import build_train_loader


def _shards_with_corruption(tmp_path) -> str:
    """4 shards x 10 samples; a few corrupt ones so `__consumed__` and good-sample counts diverge."""
    with SizedShardWriter(tmp_path, "r", samples_per_shard=10) as writer:
        for number in range(40):
            members = sample_members(number)
            if number in (7, 18, 33):
                members["flac"] = b"not audio at all" + os.urandom(64)
            writer.write(f"r{number:05d}", members)
    return writer.close().pattern


def _take(cfg: DataConfig, count: int, seed: int = 0, resume: dict | None = None) -> list[dict]:
    loader = build_train_loader(cfg, AUGMENTING, batch_size=3, seed=seed, resume=resume)
    return list(itertools.islice(loader, count))


@pytest.fixture(scope="module")
def resampled_cfg(tmp_path_factory) -> DataConfig:
    pattern = _shards_with_corruption(tmp_path_factory.mktemp("resume"))
    return DataConfig(train=[ShardSource(urls=[pattern])], num_workers=2, shuffle_buffer=8, resampled=True)


def test_same_seed_gives_identical_batches_and_another_seed_does_not(resampled_cfg):
    first, second = _take(resampled_cfg, 6), _take(resampled_cfg, 6)
    assert all(batches_equal(a, b) for a, b in zip(first, second, strict=True))
    assert [b["__worker__"] for b in first] == [0, 1, 0, 1, 0, 1]
    other = _take(resampled_cfg, 6, seed=1)
    assert not all(batches_equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("stop", [4, 5])
def test_resume_continues_the_identical_stream(resampled_cfg, stop):
    reference = _take(resampled_cfg, stop + 6)
    consumed = {b["__worker__"]: b["__consumed__"] for b in reference[:stop]}
    next_worker = (reference[stop - 1]["__worker__"] + 1) % resampled_cfg.num_workers
    resumed = _take(resampled_cfg, 6, resume={"consumed": consumed, "next_worker": next_worker})
    for want, got in zip(reference[stop:], resumed, strict=True):
        # Keys, augmented images/audio (random crops + noise) and worker bookkeeping, bit for bit.
        assert batches_equal({k: v for k, v in want.items() if k != "__skipped__"},
                             {k: v for k, v in got.items() if k != "__skipped__"})
    # The corrupt samples were counted in __consumed__, so positions outran the good samples.
    assert sum(b["__skipped__"] for b in reference[-2:]) > 0


def test_in_process_loader_leaves_the_global_rngs_alone(tmp_path):
    pattern = write_numbered_shards(tmp_path, "m", list(range(12)), per_shard=6).pattern
    cfg = DataConfig(train=[ShardSource(urls=[pattern])], num_workers=0, shuffle_buffer=4)
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    batches = list(itertools.islice(build_train_loader(cfg, AUGMENTING, batch_size=3, seed=0), 4))
    assert torch.equal(torch.rand(4), expected)
    consumed = {0: batches[1]["__consumed__"]}
    resumed = list(itertools.islice(build_train_loader(cfg, AUGMENTING, batch_size=3, seed=0,
                                                       resume={"consumed": consumed}), 2))
    assert all(batches_equal(a, b) for a, b in zip(batches[2:], resumed, strict=True))


def test_epoch_mode_splits_each_epoch_disjointly_across_ranks(tmp_path):
    pattern = write_numbered_shards(tmp_path, "d", list(range(40)), per_shard=5).pattern
    cfg = DataConfig(train=[ShardSource(urls=[pattern])], num_workers=2, shuffle_buffer=4, resampled=False)
    per_rank = []
    for rank in range(2):
        loader = build_train_loader(cfg, PLAIN, batch_size=5, seed=7, rank=rank, world_size=2)
        # 8 shards over 2 ranks x 2 workers: 2 shards = 10 samples = 2 batches per worker per epoch.
        epoch = list(itertools.islice(loader, 4))
        per_rank.append([key for batch in epoch for key in batch["__key__"]])
    assert len(set(per_rank[0])) == len(per_rank[0]) == 20
    assert not set(per_rank[0]) & set(per_rank[1])
    assert set(per_rank[0]) | set(per_rank[1]) == {f"d{n:05d}" for n in range(40)}


def test_loader_workers_draw_different_augmentations(tmp_path):
    """Per-sample seeds must include the worker id: two workers augmenting identical images at the same
    stream position would otherwise produce identical crops and noise."""
    with SizedShardWriter(tmp_path, "same", samples_per_shard=6) as writer:
        for number in range(12):
            writer.write(f"same{number:05d}", sample_members(5))  # every image identical
    cfg = DataConfig(train=[ShardSource(urls=[str(tmp_path / "same-{000000..000001}.tar")])], num_workers=2,
                     shuffle_buffer=0, resampled=False)
    first, second = _take(cfg, 2)
    assert (first["__worker__"], second["__worker__"]) == (0, 1)
    assert not torch.equal(first["image"], second["image"])
    assert not torch.equal(first["audio"], second["audio"])
