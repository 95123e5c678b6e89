"""`mmembed embed`: run one exported tower over a folder, a table of texts or shards, batch by batch,
part by part, with a progress bar; on GPU when one is present (PyTorch export) or through onnxruntime's
CUDA provider (ONNX export)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import default_collate

from mmembed.data.decode import DecodeError
from mmembed.embed.sources import Item, Part, resolve_parts
from mmembed.embed.store import EmbeddingStore
from mmembed.export.loader import OnnxTower, load_tower, read_export_config
from mmembed.progress import Progress, progress
from mmembed.types import Preprocessor

log = logging.getLogger("mmembed.embed")


class Encoder(Protocol):
    preprocess: Preprocessor
    embed_dim: int

    def __call__(self, batch: Any) -> np.ndarray: ...


class TorchEncoder:
    def __init__(self, root: Path, modality: str, device: str) -> None:
        loaded = load_tower(root, modality, device=device)
        self.module, self.preprocess, self.device = loaded.module, loaded.preprocess, device
        self.embed_dim = int(loaded.config["embed_dim"])

    @torch.inference_mode()
    def __call__(self, batch: Any) -> np.ndarray:
        inputs = [t.to(self.device) for t in _positional(batch, self.module.input_names)]
        return self.module(*inputs).float().cpu().numpy()


class OnnxEncoder:
    def __init__(self, root: Path, modality: str) -> None:
        self.tower = OnnxTower(root, modality)
        self.preprocess = self.tower.preprocess
        self.embed_dim = int(self.tower.config["embed_dim"])

    def __call__(self, batch: Any) -> np.ndarray:
        return self.tower(*_positional(batch, [s.name for s in self.tower.specs]))


def _positional(batch: Any, names: list[str]) -> list[torch.Tensor]:
    return [batch[n] for n in names] if isinstance(batch, dict) else [batch]


def open_encoder(root: Path, modality: str, backend: str, device: str | None) -> Encoder:
    """backend 'auto' takes the PyTorch (safetensors) export when the folder has one, else ONNX."""
    files = read_export_config(root, modality)["files"]
    if backend == "auto":
        backend = "torch" if "safetensors" in files else "onnx"
    if backend == "torch":
        return TorchEncoder(root, modality, device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if backend == "onnx":
        return OnnxEncoder(root, modality)
    raise ValueError(f"unknown backend '{backend}'; known: auto, torch, onnx")


@dataclass(frozen=True)
class EmbedSummary:
    output: Path
    embedded: int
    failed: int
    skipped_parts: int


def _batches(items: Iterator[Item], pre: Preprocessor, size: int,
             errors: list[dict[str, str]]) -> Iterator[tuple[list[Item], Any]]:
    done: list[Item] = []
    values: list[Any] = []
    for item in items:
        try:
            values.append(pre(item.load()))
            done.append(item)
        except (DecodeError, OSError) as err:
            # A corrupt or unreadable item is reported and skipped; the rest of the part goes on.
            log.warning("cannot embed %s: %s", item.id, err)
            errors.append({"id": item.id, "error": str(err)})
        if len(values) == size:
            yield done, default_collate(values)
            done, values = [], []
    if values:
        yield done, default_collate(values)


@dataclass
class PartResult:
    ids: list[str]
    embeddings: np.ndarray
    errors: list[dict[str, str]]
    # Per embedded item, what a search hit shows (sources.Item.about).
    about: list[dict[str, str]]


def embed_part(part: Part, encoder: Encoder, batch_size: int, bar: Progress) -> PartResult:
    result = PartResult([], np.zeros((0, encoder.embed_dim), np.float32), [], [])
    chunks = [result.embeddings]
    for items, batch in _batches(part.items(), encoder.preprocess, batch_size, result.errors):
        chunks.append(encoder(batch))
        result.ids += [item.id for item in items]
        result.about += [item.about for item in items]
        bar.update(len(items))
    bar.update(len(result.errors))
    result.embeddings = np.concatenate(chunks)
    return result


def embed(export_dir: str | Path, inputs: list[str], out: str | Path, *, modality: str | None = None,
          fmt: str = "npy", dtype: str = "float16", batch_size: int = 64, part_size: int = 10000,
          backend: str = "auto", device: str | None = None, text_column: str = "text",
          id_column: str | None = None) -> EmbedSummary:
    """Embed `inputs` with the exported tower in `export_dir` into `out` (see mmembed.embed.store)."""
    root = Path(export_dir)
    modality = modality or _only_modality(root)
    parts = resolve_parts(inputs, modality, part_size, text_column, id_column)
    settings = {"export": str(root.resolve()), "modality": modality, "inputs": list(inputs),
                "part_size": part_size, "text_column": text_column, "id_column": id_column}
    store = EmbeddingStore(out, fmt, dtype, settings)
    todo = [p for p in parts if p.name not in store.done]
    if len(todo) < len(parts):
        log.info("resuming: %d of %d parts already done", len(parts) - len(todo), len(parts))
    encoder = open_encoder(root, modality, backend, device) if todo else None
    sizes = [p.size for p in todo]
    total = None if None in sizes else sum(s for s in sizes if s is not None)
    with progress(total=total, desc=f"embed {modality}", unit="item") as bar:
        for part in todo:
            done = embed_part(part, encoder, batch_size, bar)
            store.write_part(part.name, done.ids, done.embeddings, done.errors, done.about)
    output = store.finalize([p.name for p in parts])
    counts = [store.done[p.name] for p in parts]
    return EmbedSummary(output, sum(c["count"] for c in counts), sum(c["errors"] for c in counts),
                        len(parts) - len(todo))


def _only_modality(root: Path) -> str:
    found = sorted(p.stem for p in root.glob("*.json")
                   if any((root / f"{p.stem}{suffix}").is_file() for suffix in (".safetensors", ".onnx")))
    if len(found) != 1:
        raise ValueError(f"{root} exports modalities {found}; choose one with --modality")
    return found[0]
