"""Shard URL -> raw samples (dicts of member bytes), using webdataset 1.0's tar reader.

webdataset 1.0's `tar_file_expander` yields an end-of-shard marker (an empty dict) after each shard.
open_clip 3.3's `group_by_keys_nothrow` indexes `filesample["fname"]` on it and fails with KeyError at
the first shard boundary; `group_members` below treats the marker as "flush the current sample".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from webdataset.tariterators import base_plus_ext, tar_file_expander, url_opener

from mmembed.data.stats import SkipStats

RawSample = dict[str, Any]


def group_members(members: Iterable[dict[str, Any]], stats: SkipStats) -> Iterator[RawSample]:
    """Group consecutive members sharing a key prefix into one sample {"__key__", "__url__", ext: bytes}."""
    current: RawSample | None = None
    for member in members:
        if not member:  # webdataset's end-of-shard marker
            if current is not None:
                yield current
            current = None
            continue
        prefix, suffix = base_plus_ext(member["fname"])
        if prefix is None:  # a member without an extension belongs to no sample
            continue
        suffix = suffix.lower()
        if current is None or prefix != current["__key__"]:
            if current is not None:
                yield current
            current = {"__key__": prefix, "__url__": member["__url__"]}
        if suffix in current:
            stats.skip_member(member["fname"], member["__url__"], "duplicate extension in one sample")
            continue
        current[suffix] = member["data"]
    if current is not None:
        yield current


def _handler(stats: SkipStats, url: str) -> Callable[[Exception], bool]:
    def handle(error: Exception) -> bool:
        stats.shard_error(url, error)
        return True  # keep going with the next member or shard

    return handle


def shard_samples(url: str, stats: SkipStats) -> Iterator[RawSample]:
    """The raw samples of one shard, in file order; unreadable tar data is counted, logged and skipped."""
    handler = _handler(stats, url)
    streams = url_opener([{"url": url}], handler=handler)
    return group_members(tar_file_expander(streams, handler=handler), stats)
