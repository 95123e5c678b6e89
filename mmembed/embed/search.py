"""Retrieval over `mmembed embed` outputs with faiss (the `search` extra): an exact inner-product index on
unit vectors (= cosine similarity), cached next to the embeddings, and queries embedded by an exported
tower of another modality (text -> image, audio -> text, ...)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import default_collate

from mmembed.embed.runner import open_encoder
from mmembed.embed.sources import DECODERS
from mmembed.embed.store import read_about, read_embeddings

INDEX_NAME = "index.faiss"

# faiss-cpu's loader first tries CPU-specific builds its wheel may not hold, and logs at INFO that each such
# module is missing ("No module named 'faiss.swigfaiss_avx2'"), around its own progress lines. Only those are
# dropped; any other loader message (a build that exists but fails to load, a warning) still shows.
_MISSING_BUILD = re.compile(r"Could not load library with \S+ support due to:\s*"
                            r"ModuleNotFoundError\(\"No module named 'faiss\.swigfaiss_\w+'\"\)\s*")
_LOADER_PROGRESS = re.compile(r"(Loading faiss|Successfully loaded faiss)( with \S+ support)?\.")


class HarmlessFaissLoaderMessages(logging.Filter):
    """Drops faiss.loader's INFO lines about optional builds missing from the wheel, and its progress lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        message = record.getMessage()
        return not (_MISSING_BUILD.fullmatch(message) or _LOADER_PROGRESS.fullmatch(message))


def _faiss() -> Any:
    loader_log = logging.getLogger("faiss.loader")
    if not any(isinstance(f, HarmlessFaissLoaderMessages) for f in loader_log.filters):
        loader_log.addFilter(HarmlessFaissLoaderMessages())
    try:
        import faiss
    except ImportError as err:
        raise ImportError("retrieval needs faiss: pip install 'mmembed[search]' (faiss-cpu)") from err
    return faiss


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    # What the hit is: {"path": file}, {"caption": text} or {"shard": url} (empty for older embed outputs).
    about: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """The caption (quoted) or the path of the hit, else its shard; "" when nothing is known."""
        if "caption" in self.about:
            return json.dumps(self.about["caption"], ensure_ascii=False)
        return self.about.get("path") or self.about.get("shard", "")


class VectorIndex:
    """Exact (flat) inner-product index; its ids are the embed run's ids, in row order, and `about` (when
    known) describes each row."""

    def __init__(self, index: object, ids: list[str], about: list[dict[str, str]] | None = None) -> None:
        if index.ntotal != len(ids):  # type: ignore[attr-defined]
            raise ValueError(f"index holds {index.ntotal} vectors but {len(ids)} ids were given")  # type: ignore[attr-defined]
        if about is not None and len(about) != len(ids):
            raise ValueError(f"{len(about)} row descriptions for {len(ids)} ids")
        self.index, self.ids, self.about = index, ids, about

    @classmethod
    def build(cls, embeddings: np.ndarray, ids: list[str]) -> VectorIndex:
        faiss = _faiss()
        index = faiss.IndexFlatIP(embeddings.shape[1])
        index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
        return cls(index, ids)

    @classmethod
    def from_embed_dir(cls, root: str | Path, rebuild: bool = False) -> VectorIndex:
        """Load `root/index.faiss` if present and newer than the embeddings, else build and save it."""
        faiss = _faiss()
        root = Path(root)
        embeddings, ids = read_embeddings(root)
        about = read_about(root)
        cached = root / INDEX_NAME
        if cached.is_file() and not rebuild:
            index = faiss.read_index(str(cached))
            if index.ntotal == len(ids) and index.d == embeddings.shape[1]:
                return cls(index, ids, about)
        built = cls.build(embeddings, ids)
        faiss.write_index(built.index, str(cached))
        return cls(built.index, ids, about)

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        if queries.ndim != 2 or queries.shape[1] != self.index.d:  # type: ignore[attr-defined]
            raise ValueError(f"queries must be [Q, {self.index.d}], got {queries.shape}")  # type: ignore[attr-defined]
        k = min(k, len(self.ids))
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)  # type: ignore[attr-defined]
        return [[Hit(self.ids[r], float(s), self.about[r] if self.about else {})
                 for r, s in zip(row, score, strict=True) if r >= 0]
                for row, score in zip(rows, scores, strict=True)]


def embed_queries(export_dir: str | Path, modality: str, queries: list[str],
                  backend: str = "auto") -> np.ndarray:
    """Texts (modality text) or file paths (image / audio) -> unit embeddings [Q, D]."""
    encoder = open_encoder(Path(export_dir), modality, backend, None)
    values = []
    for query in queries:
        if modality == "text":
            values.append(encoder.preprocess(query))
        else:
            path = Path(query)
            values.append(encoder.preprocess(DECODERS[modality](path.read_bytes(), path.suffix.lstrip("."))))
    return encoder(default_collate(values))


def search(embed_dir: str | Path, export_dir: str | Path, modality: str, queries: list[str],
           k: int = 5) -> list[list[Hit]]:
    """Top-k ids and cosine scores in `embed_dir` for each query embedded by `modality`'s exported tower."""
    index = VectorIndex.from_embed_dir(embed_dir)
    return index.search(embed_queries(export_dir, modality, queries), k)
