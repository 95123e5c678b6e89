"""Step timing: samples/s and the fraction of wall time spent waiting for data."""

from __future__ import annotations

import time


class Throughput:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._start = time.perf_counter()
        self.data_seconds = 0.0
        self.samples = 0

    def add_data_wait(self, seconds: float) -> None:
        self.data_seconds += seconds

    def add_samples(self, count: int) -> None:
        self.samples += count

    def summary(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        return {"samples_per_s": self.samples / elapsed, "data_wait_fraction": self.data_seconds / elapsed}
