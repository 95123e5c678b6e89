"""Several training sources, one per micro-batch (docs/design.md, "Multi-source training").

Micro-batch k (k = step x accum_freq + micro-batch index, counted over the whole run) comes from source
`choose_source(seed, k, weights)`: a pure function of the run's seed, k and the weights, so every rank and
every DataLoader worker computes the same choice without communicating, and a resumed run replays it. Each
source keeps its own resumable stream (its own shard plan, epochs or resampling, shuffle buffer, skip
counts and stall guard: mmembed.data.stream.BatchStream) and decodes only the modalities it provides.

Workers: the DataLoader deals batches round-robin, so worker w produces the micro-batches k = w, w + W,
w + 2W, ... (W workers). Each worker holds one stream per source over its slice of that source's shards,
created when the source is first chosen. A batch carries `__source__` (the source's position in
data.train), `__batch__` (k) and, as single-source batches do, `__worker__`, `__consumed__` (raw samples
this worker has pulled from *this source*) and `__skipped__`. Resume needs, per source and worker, the
latest `__consumed__`, and the next k.

Sample indices: a source's `idx` values are offset by the sizes of the sources before it, so per-sample
loss state (iSogCLR, TempNet) keeps the sources' samples apart; a sample whose idx exceeds its source's
size stops the run, since it would write into another source's rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import IterableDataset

from mmembed.data.rng import derive_rng
from mmembed.data.stream import ERROR_FIELD, STATS_FIELD, BatchStream, StreamSpec, worker_identity
from mmembed.errors import DataError

log = logging.getLogger("mmembed.data")

SOURCE_FIELD = "__source__"
BATCH_NUMBER_FIELD = "__batch__"


def choose_source(seed: int, batch_number: int, weights: Sequence[float]) -> int:
    """The source of micro-batch `batch_number`: drawn with probability proportional to `weights`."""
    rng = derive_rng(seed, "source-choice", batch_number)
    return rng.choices(range(len(weights)), weights=weights)[0]


def first_batch_number(worker: int, num_workers: int, next_batch: int) -> int:
    """The first micro-batch number >= next_batch that worker `worker` of `num_workers` produces."""
    return next_batch + (worker - next_batch) % num_workers


@dataclass(frozen=True)
class SourceStream:
    """One source's stream and how its sample indices map into the run's index space."""

    name: str
    spec: StreamSpec
    # Added to every sample's idx (>= 0); None when some source's size is unknown (indices left as they are).
    index_offset: int | None = None
    num_samples: int | None = None


@dataclass(frozen=True)
class MixPoint:
    """Where a mixed stream resumes: per source name, per worker, raw samples consumed; the next k."""

    consumed: dict[str, dict[int, int]] = field(default_factory=dict)
    next_batch: int = 0


def parse_mix_resume(resume: Mapping[str, Any] | None, names: Sequence[str], num_workers: int) -> MixPoint:
    """`{"sources": {name: {worker: n}}, "next_batch": k}`, checked against the sources and worker count."""
    if not resume:
        return MixPoint()
    unknown = sorted(set(resume) - {"sources", "next_batch"})
    if unknown:
        raise ValueError(f"resume of a multi-source stream has unknown fields {unknown}; expected 'sources' and "
                         "'next_batch'")
    workers = max(num_workers, 1)
    sources = dict(resume.get("sources") or {})
    strangers = sorted(set(sources) - set(names))
    if strangers:
        raise ValueError(f"resume names sources {strangers} that are not in data.train ({list(names)})")
    consumed = {str(name): {int(w): int(n) for w, n in dict(counts).items()} for name, counts in sources.items()}
    bad = {name: c for name, c in consumed.items() if any(not 0 <= w < workers or n < 0 for w, n in c.items())}
    next_batch = int(resume.get("next_batch", 0))
    if bad or next_batch < 0:
        raise ValueError(f"resume {dict(resume)} does not fit {workers} data workers (ids 0..{workers - 1}, counts "
                         ">= 0); exact resume needs the same data.num_workers as the interrupted run")
    return MixPoint(consumed, next_batch)


class MixedBatchStream(IterableDataset):
    """Yields finished batches, micro-batch k from source choose_source(seed, k, weights)."""

    def __init__(self, sources: Sequence[SourceStream], weights: Sequence[float], seed: int,
                 next_batch: int = 0) -> None:
        super().__init__()
        if len(sources) != len(weights) or not sources:
            raise ValueError(f"need one weight per source, got {len(sources)} sources and {len(weights)} weights")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"source weights must be >= 0 with a positive sum, got {list(weights)}")
        self.sources = tuple(sources)
        self.weights = tuple(float(w) for w in weights)
        self.seed = seed
        self.next_batch = next_batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = worker_identity()
        number = first_batch_number(worker, num_workers, self.next_batch)
        streams: dict[int, Iterator[dict[str, Any]]] = {}
        while True:
            index = choose_source(self.seed, number, self.weights)
            source = self.sources[index]
            if index not in streams:  # opened when first chosen: a worker never touches shards it does not use
                streams[index] = iter(BatchStream(source.spec))
            try:
                batch = self._tagged(next(streams[index]), index, number)
            except DataError as err:
                yield {ERROR_FIELD: f"source '{source.name}': {err}", "__worker__": worker}
                return
            yield batch
            number += num_workers

    def _tagged(self, batch: dict[str, Any], index: int, number: int) -> dict[str, Any]:
        source = self.sources[index]
        if ERROR_FIELD in batch:
            raise DataError(batch[ERROR_FIELD])
        if STATS_FIELD in batch:  # a training plan never ends; reaching its end is a bug or an empty slice
            raise DataError("its stream ended, which a training stream never does")
        batch[SOURCE_FIELD] = index
        batch[BATCH_NUMBER_FIELD] = number
        if source.index_offset is not None and "index" in batch:
            batch["index"] = self._offset(batch, source)
        return batch

    @staticmethod
    def _offset(batch: dict[str, Any], source: SourceStream) -> torch.Tensor:
        index = batch["index"]
        if source.num_samples is not None and bool((index >= source.num_samples).any()):
            row = int(torch.nonzero(index >= source.num_samples)[0, 0])
            raise DataError(f"sample {batch['__key__'][row]} has idx {int(index[row])}, beyond the source's "
                            f"{source.num_samples} samples (sizes.json or data.train[*].num_samples), so its "
                            "per-sample loss state would land in another source's rows; fix the source's size")
        return torch.where(index >= 0, index + int(source.index_offset or 0), index)
