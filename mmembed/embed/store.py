"""Where `mmembed embed` writes: one file per finished part, a progress file naming the finished parts
(so a restarted run skips them), and at the end one merged matrix plus ids.

Layout of OUT:
    progress.json            {"settings": {...}, "done": {part: {"count": n, "errors": k}}}
    parts/part-000000.npy    float16/float32 [n, D]    parts/part-000000.ids.txt   one id per line
    parts/part-000000.parquet (format parquet: columns id, embedding)
    parts/part-000000.errors.jsonl   {"id", "error"} for every item that could not be embedded
    parts/part-000000.about.jsonl    per embedded row, what a search hit shows: {"path"} | {"caption"} | {"shard"}
    embeddings.npy + ids.txt | embeddings.parquet, errors.jsonl, about.jsonl   (written by `finalize`)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mmembed.checkpoint import atomic_write_text
from mmembed.errors import MissingFileError

DTYPES = {"float16": np.float16, "float32": np.float32}
ABOUT_FILE = "about.jsonl"
ABOUT_SUFFIX = ".about.jsonl"


def _write_npy(path: Path, ids: list[str], emb: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        np.save(f, emb)
    os.replace(tmp, path.with_suffix(".npy"))
    atomic_write_text(path.with_suffix(".ids.txt"), "".join(f"{i}\n" for i in ids))


def _write_parquet(path: Path, ids: list[str], emb: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    values = pa.array(emb.reshape(-1), type=pa.from_numpy_dtype(emb.dtype))
    table = pa.table({"id": pa.array(ids, type=pa.string()),
                      "embedding": pa.FixedSizeListArray.from_arrays(values, emb.shape[1])})
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path.with_suffix(".parquet"))


WRITERS: dict[str, Callable[[Path, list[str], np.ndarray], None]] = {"npy": _write_npy, "parquet": _write_parquet}


class EmbeddingStore:
    def __init__(self, out: str | Path, fmt: str, dtype: str, settings: dict[str, Any]) -> None:
        if fmt not in WRITERS:
            raise ValueError(f"unknown output format '{fmt}'; known: {sorted(WRITERS)}")
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype '{dtype}'; known: {sorted(DTYPES)}")
        self.root, self.fmt, self.dtype = Path(out), fmt, DTYPES[dtype]
        (self.root / "parts").mkdir(parents=True, exist_ok=True)
        self.settings = {**settings, "format": fmt, "dtype": dtype}
        self.progress_path = self.root / "progress.json"
        self.done: dict[str, dict[str, int]] = {}
        if self.progress_path.is_file():
            progress = json.loads(self.progress_path.read_text())
            if progress["settings"] != self.settings:
                raise ValueError(f"{self.root} holds a run with other settings {progress['settings']}; "
                                 f"this run has {self.settings}. Use another --out or delete it")
            self.done = progress["done"]

    def write_part(self, name: str, ids: list[str], emb: np.ndarray, errors: list[dict[str, str]],
                   about: list[dict[str, str]] | None = None) -> None:
        # Data first, progress last: a run killed in between redoes the part instead of trusting half of it.
        base = self.root / "parts" / name
        atomic_write_text(base.with_suffix(".errors.jsonl"), "".join(json.dumps(e) + "\n" for e in errors))
        about = about if about is not None else [{} for _ in ids]
        # ASCII JSON (non-ASCII escaped): the file reads the same under any locale.
        atomic_write_text(base.with_suffix(ABOUT_SUFFIX), "".join(json.dumps(a) + "\n" for a in about))
        WRITERS[self.fmt](base, ids, emb.astype(self.dtype, copy=False))
        self.done[name] = {"count": len(ids), "errors": len(errors)}
        atomic_write_text(self.progress_path, json.dumps({"settings": self.settings, "done": self.done},
                                                         indent=1))

    def finalize(self, names: list[str]) -> Path:
        """Merge the parts (in order) into one matrix + ids and one errors.jsonl; returns the matrix path."""
        errors = "".join((self.root / "parts" / f"{n}.errors.jsonl").read_text() for n in names)
        atomic_write_text(self.root / "errors.jsonl", errors)
        atomic_write_text(self.root / ABOUT_FILE, "".join(self._part_about(n) for n in names))
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            tables = [pq.read_table(self.root / "parts" / f"{n}.parquet") for n in names]
            import pyarrow as pa

            pq.write_table(pa.concat_tables(tables), self.root / "embeddings.parquet")
            return self.root / "embeddings.parquet"
        return self._merge_npy(names)

    def _part_about(self, name: str) -> str:
        path = self.root / "parts" / f"{name}{ABOUT_SUFFIX}"
        # A part finished by a version that kept no descriptions: empty ones keep the rows aligned.
        return path.read_text() if path.is_file() else "{}\n" * self.done[name]["count"]

    def _merge_npy(self, names: list[str]) -> Path:
        arrays = [np.load(self.root / "parts" / f"{n}.npy", mmap_mode="r") for n in names]
        dim = next((a.shape[1] for a in arrays if a.ndim == 2 and a.shape[0]), 0)
        out = np.lib.format.open_memmap(self.root / "embeddings.npy", mode="w+", dtype=self.dtype,
                                        shape=(sum(a.shape[0] for a in arrays), dim))
        row = 0
        for a in arrays:
            out[row:row + a.shape[0]] = a
            row += a.shape[0]
        out.flush()
        ids = "".join((self.root / "parts" / f"{n}.ids.txt").read_text() for n in names)
        atomic_write_text(self.root / "ids.txt", ids)
        return self.root / "embeddings.npy"


def read_embeddings(root: str | Path) -> tuple[np.ndarray, list[str]]:
    """The merged output of a finished run: (float32 [N, D], ids)."""
    root = Path(root)
    if (root / "embeddings.parquet").is_file():
        import pyarrow.parquet as pq

        table = pq.read_table(root / "embeddings.parquet")
        emb = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
        return emb, [str(i) for i in table.column("id").to_pylist()]
    if not (root / "embeddings.npy").is_file():
        raise MissingFileError(f"no embeddings.npy or embeddings.parquet in {root} (is the embed run done?)")
    ids = (root / "ids.txt").read_text().splitlines()
    return np.load(root / "embeddings.npy").astype(np.float32), ids


def read_about(root: str | Path) -> list[dict[str, str]] | None:
    """Per row of a finished run, what a search hit shows ({"path"}, {"caption"} or {"shard"}); None for
    outputs written before descriptions were kept."""
    path = Path(root) / ABOUT_FILE
    if not path.is_file():
        return None
    return [json.loads(line) for line in path.read_text().splitlines()]
