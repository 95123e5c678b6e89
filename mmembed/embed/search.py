"""Retrieval over `mmembed embed` outputs with faiss (the `search` extra): an exact inner-product index on
unit vectors (= cosine similarity), cached next to the embeddings, and queries embedded by an exported
tower of another modality (text -> image, audio -> text, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import default_collate

from mmembed.embed.runner import open_encoder
from mmembed.embed.sources import DECODERS
from mmembed.embed.store import read_embeddings

INDEX_NAME = "index.faiss"


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as err:
        raise ImportError("retrieval needs faiss: pip install 'mmembed[search]' (faiss-cpu)") from err
    return faiss


@dataclass(frozen=True)
class Hit:
    id: str
    score: float


class VectorIndex:
    """Exact (flat) inner-product index; its ids are the embed run's ids, in row order."""

    def __init__(self, index: object, ids: list[str]) -> None:
        if index.ntotal != len(ids):  # type: ignore[attr-defined]
            raise ValueError(f"index holds {index.ntotal} vectors but {len(ids)} ids were given")  # type: ignore[attr-defined]
        self.index, self.ids = index, ids

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
        cached = root / INDEX_NAME
        if cached.is_file() and not rebuild:
            index = faiss.read_index(str(cached))
            if index.ntotal == len(ids) and index.d == embeddings.shape[1]:
                return cls(index, ids)
        built = cls.build(embeddings, ids)
        faiss.write_index(built.index, str(cached))
        return built

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        if queries.ndim != 2 or queries.shape[1] != self.index.d:  # type: ignore[attr-defined]
            raise ValueError(f"queries must be [Q, {self.index.d}], got {queries.shape}")  # type: ignore[attr-defined]
        k = min(k, len(self.ids))
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)  # type: ignore[attr-defined]
        return [[Hit(self.ids[r], float(s)) for r, s in zip(row, score, strict=True) if r >= 0]
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
