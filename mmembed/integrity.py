"""Checksums and value checks that make a damaged checkpoint fail loudly instead of being trained on.

A writer lists every file of a finished folder with `describe_files` and stores the table in the folder's own
metadata (a training checkpoint keeps it in `trainer.json`); a reader calls `verify_files` before trusting the
folder, and loads tensors through `load_safetensors_checked` / `load_torch_checked`, which name the file when
it is unreadable and refuse NaN or infinite values. What the checks catch and miss: docs/reliability.md.

The functions take a folder and relative names and know nothing about who wrote which file, so a sharded
writer (one file per rank) can describe its files on each rank and merge the tables.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from mmembed.errors import CorruptFileError, MissingFileError

FileTable = dict[str, dict[str, Any]]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def list_files(root: Path, exclude: Iterable[str] = ()) -> list[str]:
    """Every regular file under `root` as sorted POSIX paths relative to it, minus `exclude`."""
    skip = set(exclude)
    names = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    return sorted(n for n in names if n not in skip)


def describe_files(root: Path, names: Iterable[str]) -> FileTable:
    """{relative name: {"bytes": size, "sha256": hex digest}} of the given files under `root`."""
    return {name: {"bytes": (root / name).stat().st_size, "sha256": sha256_file(root / name)} for name in names}


def verify_files(root: Path, table: Mapping[str, Mapping[str, Any]], only: str = "") -> None:
    """Raise CorruptFileError (naming the file) unless every listed file under `root` matches its record.

    `only` restricts the check to names with that prefix (e.g. "model/" for the model part of a checkpoint).
    The size is compared first, so a truncated file is reported as such without hashing the rest.
    """
    for name, record in sorted(table.items()):
        if not name.startswith(only):
            continue
        path = root / name
        if not path.is_file():
            raise CorruptFileError(path, "missing, but listed in the checkpoint's checksums")
        size = path.stat().st_size
        if size != record["bytes"]:
            raise CorruptFileError(path, f"truncated or overwritten: {size} bytes, {record['bytes']} when written")
        if sha256_file(path) != record["sha256"]:
            raise CorruptFileError(path, "content changed since it was written (sha256 differs from the "
                                         "checkpoint's record)")


def nonfinite_entries(value: Any, prefix: str = "") -> list[str]:
    """Names of floating-point tensors holding NaN or ±inf anywhere inside nested dicts/lists/tuples."""
    if isinstance(value, torch.Tensor):
        bad = value.is_floating_point() and value.numel() > 0 and not bool(torch.isfinite(value).all())
        return [prefix or "<tensor>"] if bad else []
    if isinstance(value, Mapping):
        items: Iterable[tuple[Any, Any]] = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return []
    found: list[str] = []
    for key, item in items:
        found += nonfinite_entries(item, f"{prefix}.{key}" if prefix else str(key))
    return found


def check_finite(value: Any, path: Path) -> None:
    bad = nonfinite_entries(value)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise CorruptFileError(path, f"holds NaN or infinite values in {shown}; refusing to use it")


def load_safetensors_checked(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """load_file, with a missing/truncated/garbled file or non-finite weights reported as a one-line error."""
    if not path.is_file():
        raise MissingFileError(f"{path} does not exist")
    try:
        tensors = load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as err:
        raise CorruptFileError(path, f"unreadable safetensors file (truncated or damaged?): {err}") from err
    check_finite(tensors, path)
    return tensors


def load_torch_checked(path: Path) -> Any:
    """torch.load(weights_only=True) (never unpickles objects), with damaged files and NaNs reported."""
    if not path.is_file():
        raise MissingFileError(f"{path} does not exist")
    try:
        value = torch.load(path, weights_only=True, map_location="cpu")
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as err:
        raise CorruptFileError(path, f"unreadable (truncated or damaged?): {type(err).__name__}: "
                                     f"{str(err).splitlines()[0] if str(err) else ''}") from err
    check_finite(value, path)
    return value


def shareable(path: Path) -> None:
    """Give a written file (or folder) the permissions a plain open() would: 0666/0777 minus the umask.

    Some writers (safetensors, tempfile) create files 0600; a released model on a shared cluster must be
    readable by the other users the umask allows.
    """
    base = 0o777 if path.is_dir() else 0o666
    os.chmod(path, base & ~current_umask())


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask alone must set a new one)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share_tree(root: Path) -> None:
    """`shareable` for `root` and everything under it."""
    shareable(root)
    for path in root.rglob("*"):
        if not path.is_symlink():
            shareable(path)
