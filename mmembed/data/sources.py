"""Shard URLs: brace-pattern expansion, existence checks and sample counts from `sizes.json`."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import braceexpand

from mmembed.config.data import ShardSource
from mmembed.errors import MissingFileError

SIZES_FILE = "sizes.json"


def expand_urls(urls: str | Sequence[str]) -> list[str]:
    """Expand brace patterns ("train-{000000..000009}.tar") in one URL or a list of them, keeping order."""
    items = [urls] if isinstance(urls, str) else list(urls)
    expanded = [url for item in items for url in braceexpand.braceexpand(item)]
    if not expanded:
        raise ValueError(f"no shard URLs in {urls!r}")
    return expanded


def is_local(url: str) -> bool:
    """True for plain paths; False for anything webdataset's gopen opens some other way (pipe:, http://)."""
    return "://" not in url and not url.startswith("pipe:")


def check_local_shards(urls: Sequence[str]) -> None:
    """Fail early, naming them, when local shard files are missing (a typo would otherwise skip forever)."""
    missing = [url for url in urls if is_local(url) and not os.path.isfile(url)]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise MissingFileError(f"{len(missing)} of {len(urls)} shard files do not exist: {shown}; check the shard "
                               "paths (data.train[*].urls / --data), relative paths start at the current folder")


def read_sizes(shard_dir: str | Path) -> dict[str, int]:
    """The `sizes.json` of a shard directory: shard file name -> number of samples."""
    path = Path(shard_dir) / SIZES_FILE
    if not path.is_file():
        raise MissingFileError(f"no {SIZES_FILE} in {shard_dir}; write shards with data_tools or set "
                                f"num_samples on the source")
    sizes = json.loads(path.read_text())
    if not isinstance(sizes, dict) or not all(isinstance(v, int) for v in sizes.values()):
        raise ValueError(f"{path} must map shard file names to integer sample counts")
    return sizes


def count_samples(urls: str | Sequence[str]) -> int:
    """Total samples in the given shards, read from the `sizes.json` next to each shard."""
    total = 0
    cache: dict[str, dict[str, int]] = {}
    for url in expand_urls(urls):
        if not is_local(url):
            raise ValueError(f"cannot read sizes.json for remote shard {url}; set num_samples on the source")
        directory, name = os.path.split(url)
        if directory not in cache:
            cache[directory] = read_sizes(directory or ".")
        sizes = cache[directory]
        if name not in sizes:
            raise KeyError(f"shard {name} is not listed in {Path(directory or '.') / SIZES_FILE}")
        total += sizes[name]
    return total


def source_num_samples(source: ShardSource) -> int:
    """A source's sample count: its explicit `num_samples`, else the sum over its shards' sizes.json."""
    if source.num_samples is not None:
        return int(source.num_samples)
    return count_samples(source.urls)
