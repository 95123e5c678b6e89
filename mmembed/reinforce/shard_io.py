"""Writing reinforced shards atomically and reproducibly, and the per-shard completion record.

A shard is written to `.NAME.tar.tmp`, fsynced, renamed to `NAME.tar`, and only then is its completion
record `NAME.tar.done.json` written (also via a temp file and rename). A shard counts as complete iff its
record exists, so a build killed at any instant leaves either a complete shard or one that a restart simply
rewrites: no sample is ever lost or written twice. Tar members carry mtime 0 and fixed owner fields, so
the same inputs give byte-identical shards (and checksums) in every run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

DONE_SUFFIX = ".done.json"


class DeterministicTarWriter:
    """Samples {ext: bytes} -> a plain tar whose bytes depend only on the samples."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "wb")  # noqa: SIM115  (closed in close())
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self.count = 0

    def write(self, key: str, members: dict[str, bytes]) -> None:
        for ext in sorted(members):
            data = members[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def close(self) -> None:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def temp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp")


def done_path(shard: Path) -> Path:
    return shard.with_name(shard.name + DONE_SUFFIX)


def read_done(shard: Path) -> dict[str, Any] | None:
    """The completion record of `shard`, or None when the shard is not (yet) complete."""
    path = done_path(shard)
    if not path.is_file() or not shard.is_file():
        return None
    return json.loads(path.read_text())


def finish_shard(tmp: Path, final: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Rename the finished temp shard into place, then write its completion record (the commit point)."""
    record = {**record, "sha256": sha256_file(tmp), "bytes": tmp.stat().st_size}
    os.replace(tmp, final)
    atomic_write_json(done_path(final), record)
    return record
