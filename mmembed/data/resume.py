"""Resuming a training stream exactly: per-worker skip counts and the worker whose batch comes next.

The trainer records, per DataLoader worker, the `__consumed__` of the latest batch it used, and the
`__worker__` of the very last batch. Each worker's own stream is restored by skipping its consumed raw
samples. The global order needs one more fact: PyTorch's DataLoader always starts its round-robin at
worker 0, but after k batches the uninterrupted run continues with worker k mod num_workers. With
`next_worker` = (last `__worker__` + 1) mod num_workers, the loader holds back the batches of workers
before `next_worker` within each round, which reproduces the uninterrupted order exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import DataLoader

from mmembed.data.stream import ERROR_FIELD, STATS_FIELD
from mmembed.errors import DataError


@dataclass(frozen=True)
class ResumePoint:
    # worker id -> raw samples to skip.
    consumed: dict[int, int] = field(default_factory=dict)
    next_worker: int = 0


def parse_resume(resume: Mapping[str, Any] | None, num_workers: int) -> ResumePoint:
    """`{"consumed": {worker: n}, "next_worker": w}` (both optional), checked against the worker count."""
    if not resume:
        return ResumePoint()
    unknown = sorted(set(resume) - {"consumed", "next_worker"})
    if unknown:
        raise ValueError(f"resume has unknown fields {unknown}; expected 'consumed' and optionally "
                         "'next_worker'")
    workers = max(num_workers, 1)
    consumed = {int(worker): int(count) for worker, count in dict(resume.get("consumed") or {}).items()}
    next_worker = int(resume.get("next_worker", 0))
    bad = {w: n for w, n in consumed.items() if not 0 <= w < workers or n < 0}
    if bad or not 0 <= next_worker < workers:
        raise ValueError(f"resume {dict(resume)} does not fit {workers} data workers (ids 0..{workers - 1}, "
                         "counts >= 0); exact resume needs the same data.num_workers as the interrupted run")
    return ResumePoint(consumed, next_worker)


Batch = dict[str, Any]


def rotate_workers(batches: Iterator[Batch], first: int, num_workers: int) -> Iterator[Batch]:
    """Reorder each round-robin round w0..w(n-1) to start at worker `first` (streams that never end)."""
    held: list[Batch] = []
    for batch in batches:
        if batch["__worker__"] < first:
            held.append(batch)
            continue
        yield batch
        if batch["__worker__"] == num_workers - 1:
            yield from held
            held = []
    yield from held


class ResumableDataLoader(DataLoader):
    """A DataLoader whose round-robin over workers starts at `first_worker` (see the module docstring).

    It also consumes the streams' marker batches (mmembed.data.stream): an error marker raises DataError
    with the worker's one-line message; end-of-stream counts are summed into `skip_counts` ({"samples",
    "members", "shards"} skipped over a finished pass, e.g. an evaluation).
    """

    def __init__(self, *args: Any, first_worker: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.first_worker = first_worker
        self.skip_counts: dict[str, int] = {}

    def __iter__(self) -> Iterator[Batch]:  # type: ignore[override]
        self.skip_counts = {}
        batches = self._without_markers(super().__iter__())
        if self.first_worker == 0 or self.num_workers <= 1:
            return batches
        return rotate_workers(batches, self.first_worker, self.num_workers)

    def _without_markers(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        for batch in batches:
            if ERROR_FIELD in batch:
                raise DataError(batch[ERROR_FIELD])
            if STATS_FIELD in batch:
                for kind, count in batch[STATS_FIELD].items():
                    self.skip_counts[kind] = self.skip_counts.get(kind, 0) + int(count)
                continue
            yield batch
