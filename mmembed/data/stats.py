"""Counting and logging of skipped (corrupt or incomplete) samples, per data worker."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger("mmembed.data")


@dataclass
class SkipStats:
    """What one worker has skipped so far. Every skip is logged with its key (or shard) and reason.

    Kinds: "sample" (a whole sample dropped), "member" (one tar member ignored), "shard" (unreadable tar
    data: the rest of that shard is lost).
    """

    worker: int = 0
    skipped: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)

    def skip_sample(self, key: str, url: str, reason: str) -> None:
        self._record("sample", f"sample {key} from {url}", reason)

    def skip_member(self, name: str, url: str, reason: str) -> None:
        self._record("member", f"tar member {name} of {url}", reason)

    def shard_error(self, url: str, error: BaseException) -> None:
        # webdataset appends the stream and URL to an exception's args; the first arg is the message.
        message = error.args[0] if error.args else ""
        self._record("shard", f"tar data in {url}", f"{type(error).__name__}: {message}")

    def _record(self, kind: str, what: str, reason: str) -> None:
        self.skipped += 1
        self.by_kind[kind] += 1
        log.warning("data worker %d skipped %s: %s", self.worker, what, reason)
