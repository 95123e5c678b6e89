"""Counting and logging of skipped (corrupt or incomplete) samples, per data worker.

Logging is rate-limited per reason: the first `FIRST_LOGGED` skips of each reason are logged one by one with
their key and shard; after that one summary line per power of ten (10, 100, 1000, ...) gives the running
count and the first keys. A dataset with a systematic problem then writes a handful of lines, not one per
sample, while every skip is still counted.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger("mmembed.data")

FIRST_LOGGED = 3


def _is_power_of_ten(n: int) -> bool:
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1


@dataclass
class SkipStats:
    """What one worker has skipped so far. Kinds: "sample" (a whole sample dropped), "member" (one tar member
    ignored), "shard" (unreadable tar data: the rest of that shard is lost). Reasons are the short causes
    ("missing text", "image member 'jpg'") that rate-limiting and the stall error group by."""

    worker: int = 0
    rank: int = 0
    skipped: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    by_reason: Counter[str] = field(default_factory=Counter)
    first_keys: dict[str, list[str]] = field(default_factory=dict)

    def skip_sample(self, key: str, url: str, reason: str, message: str = "") -> None:
        """`reason` groups skips (e.g. "missing text"); `message` is the full account of this one."""
        self._record("sample", reason, key, f"sample {key} from {url}", message)

    def skip_member(self, name: str, url: str, reason: str) -> None:
        self._record("member", reason, name, f"tar member {name} of {url}", "")

    def shard_error(self, url: str, error: BaseException) -> None:
        # webdataset appends the stream and URL to an exception's args; the first arg is the message.
        message = error.args[0] if error.args else ""
        reason = f"unreadable tar data ({type(error).__name__})"
        self._record("shard", reason, url, f"tar data in {url}", f"{reason}: {message}")

    @property
    def where(self) -> str:
        return f"data rank {self.rank} worker {self.worker}"

    def _record(self, kind: str, reason: str, key: str, what: str, message: str) -> None:
        self.skipped += 1
        self.by_kind[kind] += 1
        self.by_reason[reason] += 1
        count = self.by_reason[reason]
        keys = self.first_keys.setdefault(reason, [])
        if len(keys) < FIRST_LOGGED:
            keys.append(key)
        if count <= FIRST_LOGGED:
            log.warning("%s skipped %s: %s", self.where, what, message or reason)
        elif _is_power_of_ten(count):
            log.warning("%s has skipped %d items so far for '%s' (first: %s); further ones are counted, and "
                        "summarised at the next power of ten", self.where, count, reason, ", ".join(keys))

    def reasons(self) -> str:
        """'reason x count' for every reason so far, most frequent first."""
        return "; ".join(f"{reason} x{count}" for reason, count in self.by_reason.most_common())
