"""Shard plans: which shards a (rank, worker) reads, in which order, per epoch.

A plan yields `(epoch, shard URLs)` pairs. All randomness comes from generators seeded by
`derive_seed(seed, ...)`, so a plan is a pure function of (seed, rank, world_size, worker, num_workers).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from mmembed.config.validate import ConfigError
from mmembed.data.rng import derive_rng


@dataclass(frozen=True)
class WorkerSlot:
    """Which slice of the data this process reads: rank among ranks, worker among its DataLoader workers."""

    seed: int
    rank: int
    world_size: int
    worker: int
    num_workers: int


class ShardPlan(Protocol):
    def epochs(self, slot: WorkerSlot) -> Iterator[tuple[int, Iterator[str]]]: ...


@dataclass(frozen=True)
class ResampledPlan:
    """open_clip's ResampledShards: shards drawn with replacement, forever, as one endless "epoch 0".

    `weights[i]` is the relative probability that the next shard comes from `sources[i]`; within a source
    shards are drawn uniformly. Each (rank, worker) has its own generator, so their streams differ.
    """

    sources: tuple[tuple[str, ...], ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.sources) != len(self.weights) or not self.sources:
            raise ValueError(f"need one weight per source, got {len(self.sources)} sources and "
                             f"{len(self.weights)} weights")
        if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError(f"source weights must be >= 0 with a positive sum, got {list(self.weights)}")
        empty = [i for i, urls in enumerate(self.sources) if not urls]
        if empty:
            raise ValueError(f"sources {empty} have no shard URLs")

    def epochs(self, slot: WorkerSlot) -> Iterator[tuple[int, Iterator[str]]]:
        yield 0, self._draws(slot)

    def _draws(self, slot: WorkerSlot) -> Iterator[str]:
        rng = derive_rng(slot.seed, "resampled-shards", slot.rank, slot.worker)
        indices = range(len(self.sources))
        while True:
            source = self.sources[rng.choices(indices, weights=self.weights)[0]]
            yield source[rng.randrange(len(source))]


@dataclass(frozen=True)
class EpochPlan:
    """Every shard once per epoch: order shuffled by (seed, epoch), dealt to ranks, then to workers.

    The shuffle does not depend on rank, so all ranks agree on the order and their slices are disjoint.
    """

    urls: tuple[str, ...]
    shuffle: bool = True

    def epochs(self, slot: WorkerSlot) -> Iterator[tuple[int, Iterator[str]]]:
        check_enough_shards(len(self.urls), slot.world_size, slot.num_workers)
        for epoch in itertools.count():
            order = list(self.urls)
            if self.shuffle:
                derive_rng(slot.seed, "epoch-shards", epoch).shuffle(order)
            yield epoch, iter(order[slot.rank :: slot.world_size][slot.worker :: slot.num_workers])


@dataclass(frozen=True)
class SinglePassPlan:
    """Evaluation: each shard once, in the given order, dealt round-robin to workers; no shuffling."""

    urls: tuple[str, ...]

    def epochs(self, slot: WorkerSlot) -> Iterator[tuple[int, Iterator[str]]]:
        yield 0, iter(self.urls[slot.worker :: slot.num_workers])


def check_enough_shards(num_shards: int, world_size: int, num_workers: int) -> None:
    needed = world_size * max(num_workers, 1)
    if num_shards < needed:
        raise ConfigError(
            f"resampled: false needs at least world_size x num_workers = {world_size} x {max(num_workers, 1)}"
            f" = {needed} shards so every worker of every rank gets one, but there are only {num_shards}; "
            f"write smaller shards, lower data.num_workers, or set data.resampled: true")
