"""Progress display: a live tqdm bar on a terminal, plain timestamped lines at an interval otherwise.

On a terminal tqdm redraws one line in place. Written to a log file or a SLURM output, the same redraws become
hundreds of carriage-return fragments a minute, so when stderr is not a terminal `progress` returns a
`LineProgress` that writes one complete line (tqdm's own meter text: count, percentage, rate, ETA) every
`interval` seconds and at the end. `MMEMBED_PROGRESS=bar|lines|off` overrides the choice and
`MMEMBED_PROGRESS_INTERVAL` (seconds, default 30) sets the interval.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

from tqdm.auto import tqdm

DEFAULT_INTERVAL_S = 30.0
MODES = ("bar", "lines", "off")


class LineProgress:
    """The part of tqdm's interface mmembed uses (update, set_postfix, write, close, context manager)."""

    def __init__(self, total: float | None = None, initial: float = 0, desc: str = "", unit: str = "it",
                 disable: bool = False, interval: float = DEFAULT_INTERVAL_S, file: TextIO | None = None,
                 **_: Any) -> None:
        self.total, self.n, self.desc, self.unit, self.disable = total, initial, desc, unit, disable
        self.interval, self.file = interval, file
        self.initial = initial
        self.start = self.last_print = time.monotonic()
        self.postfix = ""
        self.closed = False

    def update(self, n: float = 1) -> None:
        self.n += n
        if time.monotonic() - self.last_print >= self.interval:
            self._print()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def write(self, text: str) -> None:
        print(text, file=self.file or sys.stderr, flush=True)

    def close(self) -> None:
        if not self.closed and self.n != self.initial:
            self._print()
        self.closed = True

    def line(self) -> str:
        """tqdm's meter text (count/total, percentage, elapsed<ETA, rate) without the bar or carriage return."""
        elapsed = time.monotonic() - self.start
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 and done > 0 else None
        return tqdm.format_meter(self.n, self.total, elapsed, ncols=0, prefix=self.desc, unit=self.unit,
                                 rate=rate, postfix=self.postfix or None, initial=self.initial)

    def _print(self) -> None:
        self.last_print = time.monotonic()
        if not self.disable:
            self.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {self.line()}")

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Progress = tqdm | LineProgress


def progress_write(text: str) -> None:
    """Print a message above a live bar (or as a plain line): tqdm.write keeps the bar intact."""
    tqdm.write(text)


def progress_mode(stream: TextIO | None = None) -> str:
    """'bar' on a terminal, 'lines' otherwise, unless MMEMBED_PROGRESS says."""
    chosen = os.environ.get("MMEMBED_PROGRESS", "").strip().lower()
    if chosen in MODES:
        return chosen
    stream = stream or sys.stderr
    return "bar" if hasattr(stream, "isatty") and stream.isatty() else "lines"


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("MMEMBED_PROGRESS_INTERVAL", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def progress(**kwargs: Any) -> Progress:
    """A progress display for `kwargs` as tqdm takes them (total, initial, desc, unit, disable, ...)."""
    mode = progress_mode()
    if mode == "off":
        kwargs["disable"] = True
    if mode == "bar":
        return tqdm(dynamic_ncols=True, **kwargs)
    return LineProgress(interval=_interval(), **kwargs)


def progress_iter(iterable: Any, **kwargs: Any) -> Any:
    """Iterate `iterable` while showing progress (each item counts one)."""
    bar = progress(**kwargs)
    try:
        for item in iterable:
            yield item
            bar.update(1)
    finally:
        bar.close()
