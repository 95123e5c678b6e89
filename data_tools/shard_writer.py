"""Sized WebDataset shards with dense global `idx` keys and a `sizes.json` (shard file name -> count).

    python -m data_tools.shard_writer "in/part-{0000..0099}.tar" --out data/mine --prefix train \
        --samples-per-shard 1000      # re-shard existing tars with fresh dense idx

`SizedShardWriter` is also the writer behind make_demo_data and make_shards. mmembed.data reads `idx` as
the sample's global index and `sizes.json` for sample counts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import webdataset as wds

from data_tools.tool_args import add_shard_output
from mmembed.data.sources import expand_urls
from mmembed.data.stats import SkipStats
from mmembed.data.tar_samples import shard_samples
from mmembed.progress import progress as progress_bar

SIZES_FILE = "sizes.json"
INDEX_KEY = "idx"


@dataclass
class ShardSet:
    """What a writer produced: the brace pattern over its shards, their paths and per-shard counts."""

    pattern: str
    shards: list[str]
    num_samples: int
    sizes: dict[str, int] = field(default_factory=dict)


def brace_pattern(out_dir: Path, prefix: str, num_shards: int) -> str:
    """`out_dir/prefix-{000000..00000N}.tar` (a plain name when there is one shard)."""
    if num_shards <= 1:
        return str(out_dir / f"{prefix}-000000.tar")
    return str(out_dir / f"{prefix}-{{000000..{num_shards - 1:06d}}}.tar")


class SizedShardWriter:
    """`webdataset.ShardWriter` that numbers samples densely (`idx` = start_index, start_index+1, ...).

    Members are bytes or str keyed by extension ("png", "txt", "flac", "cls"); the writer adds `idx`.
    On close it writes `sizes.json`, replacing earlier entries for this prefix and keeping other prefixes'.
    """

    def __init__(self, out_dir: str | Path, prefix: str, *, samples_per_shard: int, start_index: int = 0,
                 max_shard_bytes: float = 3e9) -> None:
        if samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", prefix):
            raise ValueError(f"shard prefix {prefix!r} may only hold letters, digits, '_' and '-'")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.next_index = start_index
        self.sizes: dict[str, int] = {}
        self._writer = wds.ShardWriter(str(self.out_dir / f"{prefix}-%06d.tar"), maxcount=samples_per_shard,
                                       maxsize=max_shard_bytes, verbose=0)
        self._result: ShardSet | None = None

    def write(self, key: str, members: dict[str, bytes | str]) -> int:
        """Write one sample; returns the `idx` it was given."""
        if not key or "." in key:
            # webdataset splits member names at the first dot: a dotted key would break the sample apart.
            raise ValueError(f"sample key {key!r} must be non-empty and contain no '.'")
        if INDEX_KEY in members or any(name.startswith("__") for name in members):
            raise ValueError(f"sample {key}: members may not be named '{INDEX_KEY}' or start with '__'")
        index = self.next_index
        self._writer.write({"__key__": key, **members, INDEX_KEY: str(index)})
        name = os.path.basename(self._writer.fname)
        self.sizes[name] = self.sizes.get(name, 0) + 1
        self.next_index += 1
        return index

    def close(self) -> ShardSet:
        if self._result is not None:
            return self._result
        first = self._writer.fname
        self._writer.close()
        if not self.sizes and first is not None:
            os.remove(first)  # ShardWriter opens its first shard eagerly; drop it when nothing was written.
        self._write_sizes()
        shards = [str(self.out_dir / name) for name in sorted(self.sizes)]
        self._result = ShardSet(brace_pattern(self.out_dir, self.prefix, len(shards)), shards,
                                sum(self.sizes.values()), dict(self.sizes))
        return self._result

    def _write_sizes(self) -> None:
        path = self.out_dir / SIZES_FILE
        ours = re.compile(rf"{re.escape(self.prefix)}-\d{{6}}\.tar")
        sizes = json.loads(path.read_text()) if path.is_file() else {}
        sizes = {name: n for name, n in sizes.items() if not ours.fullmatch(name)}
        sizes.update(self.sizes)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(dict(sorted(sizes.items())), indent=1) + "\n")
        os.replace(tmp, path)  # atomic: readers never see a half-written sizes.json

    def __enter__(self) -> SizedShardWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def reshard(urls: str | list[str], out_dir: str | Path, prefix: str, *, samples_per_shard: int,
            progress: bool = True) -> ShardSet:
    """Copy the samples of existing shards into sized shards with fresh dense `idx` and a sizes.json."""
    stats = SkipStats()
    with SizedShardWriter(out_dir, prefix, samples_per_shard=samples_per_shard) as writer, \
            progress_bar(desc=f"reshard -> {prefix}", unit="sample", disable=not progress) as bar:
        for url in expand_urls(urls):
            for raw in shard_samples(url, stats):
                members = {k: v for k, v in raw.items() if not k.startswith("__") and k != INDEX_KEY}
                writer.write(raw["__key__"], members)
                bar.update(1)
    if stats.skipped:
        print(f"skipped {stats.skipped} unreadable tar entries (see the log)")
    return writer.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m data_tools.shard_writer",
        description="Rewrite existing WebDataset shards into OUT/PREFIX-%%06d.tar shards of a fixed size, "
                    "with dense global `idx` keys and OUT/sizes.json.")
    parser.add_argument("urls", nargs="+", help="input shards (brace patterns allowed)")
    add_shard_output(parser, default_out=None, samples_per_shard=1000)
    parser.add_argument("--prefix", default="shard", help="shard file prefix (default: shard)")
    args = parser.parse_args(argv)
    result = reshard(args.urls, args.out, args.prefix, samples_per_shard=args.samples_per_shard)
    print(f"wrote {result.num_samples} samples in {len(result.shards)} shards: {result.pattern}")


if __name__ == "__main__":
    main()
