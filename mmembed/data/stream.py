"""The per-worker batch stream: shard plan -> raw samples -> shuffle -> (resume skip) -> decode -> batch.

Position bookkeeping: every raw sample leaving the shuffle buffer gets a position n = 0, 1, 2, ... in
its worker's stream, corrupt ones included. A batch reports `__consumed__` = positions used so far, so a
resumed worker skips exactly that many raw samples (without decoding them) and continues where the
interrupted run stopped. Sample n's augmentations are seeded from (seed, rank, worker, epoch, n), so they
do not depend on what was skipped either.

Failures travel as marker batches, not exceptions: an exception raised inside a DataLoader worker reaches the
main process as a re-raised copy whose message is the worker's whole traceback. A stream that cannot go on
(e.g. `max_consecutive_skips` samples in a row were unusable) yields `{ERROR_FIELD: message}` and stops;
a stream that ends (evaluation) yields `{STATS_FIELD: counts}` last. `mmembed.data.resume.ResumableDataLoader`
turns the first into a `DataError` and records the second, so consumers only ever see real batches.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch.utils.data import IterableDataset, get_worker_info

from mmembed.data.collate import collate_samples
from mmembed.errors import DataError, one_line
from mmembed.data.plans import ShardPlan, WorkerSlot
from mmembed.data.rng import derive_rng, derive_seed
from mmembed.data.samples import Decoder, SkipSample
from mmembed.data.stats import SkipStats
from mmembed.data.tar_samples import RawSample, shard_samples

T = TypeVar("T")

ERROR_FIELD = "__error__"
STATS_FIELD = "__stats__"


@dataclass(frozen=True)
class StreamSpec:
    plan: ShardPlan
    decoder: Decoder
    batch_size: int
    seed: int
    rank: int = 0
    world_size: int = 1
    shuffle_buffer: int = 0
    # worker id -> raw samples to skip (resume).
    resume: Mapping[int, int] = field(default_factory=dict)
    # Evaluation yields the last, smaller batch; training streams never end.
    final_partial_batch: bool = False
    # Consecutive shards without a single sample after which the data is declared broken.
    max_empty_shards: int = 64
    # Consecutive unusable samples after which the data is declared broken (0: no limit, for finite streams).
    max_consecutive_skips: int = 0


def shuffled(items: Iterable[T], size: int, rng: random.Random) -> Iterator[T]:
    """A shuffle buffer of `size` items (webdataset-style), drawing only from `rng`; size <= 1 keeps order."""
    if size <= 1:
        yield from items
        return
    buffer: list[T] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        slot = rng.randrange(size)
        yield buffer[slot]
        buffer[slot] = item
    rng.shuffle(buffer)
    yield from buffer


def worker_identity() -> tuple[int, int]:
    """(worker id, number of workers) inside a DataLoader worker; (0, 1) in the main process."""
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class BatchStream(IterableDataset):
    """Yields finished dict batches (the DataLoader runs with batch_size=None)."""

    def __init__(self, spec: StreamSpec) -> None:
        super().__init__()
        self.spec = spec

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = worker_identity()
        stats = SkipStats(worker=worker, rank=self.spec.rank)
        try:
            yield from self._batches(worker, num_workers, stats)
        except DataError as err:
            yield {ERROR_FIELD: one_line(err), "__worker__": worker}
            return
        yield {STATS_FIELD: {"samples": stats.by_kind["sample"], "members": stats.by_kind["member"],
                             "shards": stats.by_kind["shard"]}, "__worker__": worker}

    def _batches(self, worker: int, num_workers: int, stats: SkipStats) -> Iterator[dict[str, Any]]:
        spec = self.spec
        slot = WorkerSlot(spec.seed, spec.rank, spec.world_size, worker, num_workers)
        skip = spec.resume.get(worker, 0)
        in_worker = get_worker_info() is not None
        position = 0
        pending: list[dict[str, Any]] = []
        stall = StallGuard(spec.max_consecutive_skips, stats)
        for epoch, raw in self._raw_stream(slot, stats):
            position += 1
            if position <= skip:
                continue
            try:
                seed = derive_seed(spec.seed, "sample", spec.rank, worker, epoch, position - 1)
                pending.append(spec.decoder(raw, seed, restore_rngs=not in_worker))
            except SkipSample as err:
                stats.skip_sample(raw["__key__"], raw["__url__"], err.reason, str(err))
                stall.skipped(raw, err)
                continue
            stall.used()
            if len(pending) == spec.batch_size:
                yield self._batch(pending, worker, position, stats)
                pending = []
        if pending and spec.final_partial_batch:
            yield self._batch(pending, worker, position, stats)

    def _batch(self, samples: list[dict[str, Any]], worker: int, consumed: int,
               stats: SkipStats) -> dict[str, Any]:
        decoder = self.spec.decoder
        batch = collate_samples(samples, decoder.batch_fields, decoder.extra_keys)
        batch.update(__worker__=worker, __consumed__=consumed, __skipped__=stats.skipped)
        return batch

    def _raw_stream(self, slot: WorkerSlot, stats: SkipStats) -> Iterator[tuple[int, RawSample]]:
        empty_run = [0]
        for epoch, urls in self.spec.plan.epochs(slot):
            rng = derive_rng(slot.seed, "sample-shuffle", slot.rank, slot.worker, epoch)
            for raw in shuffled(self._read(urls, stats, empty_run), self.spec.shuffle_buffer, rng):
                yield epoch, raw

    def _read(self, urls: Iterator[str], stats: SkipStats, empty_run: list[int]) -> Iterator[RawSample]:
        for url in urls:
            count = 0
            for raw in shard_samples(url, stats):
                count += 1
                yield raw
            # Resampling forever over shards that hold nothing would spin silently; fail loudly instead.
            empty_run[0] = 0 if count else empty_run[0] + 1
            if empty_run[0] > self.spec.max_empty_shards:
                raise DataError(f"{stats.where}: the last {empty_run[0]} shards read (latest {url}) held no "
                                "samples; the shards are empty or unreadable")


class StallGuard:
    """Counts unusable samples in a row; past the limit, raises a DataError that says why and where."""

    SHARDS_SHOWN = 5

    def __init__(self, limit: int, stats: SkipStats) -> None:
        self.limit, self.stats = limit, stats
        self.run = 0
        self.reasons: dict[str, int] = {}
        self.shards: dict[str, None] = {}  # insertion-ordered set
        self.example = ""

    def used(self) -> None:
        if self.run:
            self.run = 0
            self.reasons.clear()
            self.shards.clear()
            self.example = ""

    def skipped(self, raw: RawSample, err: SkipSample) -> None:
        self.run += 1
        self.reasons[err.reason] = self.reasons.get(err.reason, 0) + 1
        self.shards[raw["__url__"]] = None
        self.example = self.example or f"first: sample {raw['__key__']}: {err}"
        if self.limit and self.run >= self.limit:
            raise DataError(self.message())

    def message(self) -> str:
        latest = sorted(self.reasons.items(), key=lambda item: -item[1])
        shards = list(self.shards)
        shown = ", ".join(shards[: self.SHARDS_SHOWN]) + (
            f" and {len(shards) - self.SHARDS_SHOWN} more" if len(shards) > self.SHARDS_SHOWN else "")
        return (f"{self.stats.where}: the last {self.run} samples were all unusable, so training cannot make "
                f"progress (reasons: {'; '.join(f'{r} x{n}' for r, n in latest)}; {self.example}); shards: {shown}. "
                "Check that the shards hold every member the model's modalities need (data.image_keys, "
                "data.text_keys, data.audio_keys) and decode; data.max_consecutive_skips sets this limit")
