"""Computing embeddings for evaluation: inference mode, batched text and loader passes.

Everything here talks to the model only through the public `encode(modality, inputs)` and
`preprocessors(is_train)` methods, so it works for any MultiModalModel (or anything with those methods).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import default_collate

from mmembed.device import to_device
from mmembed.progress import progress_iter
from mmembed.types import Preprocessor, TowerInput


class EncodesModalities(Protocol):
    """The part of MultiModalModel that evaluation uses."""

    def encode(self, modality: str, inputs: TowerInput) -> torch.Tensor: ...

    def preprocessors(self, is_train: bool) -> dict[str, Preprocessor]: ...


@contextmanager
def inference_mode(model: object) -> Iterator[None]:
    """Eval mode (for nn.Modules) + no_grad, then restore each submodule's own training flag.

    Restoring per module, not with `model.train(prev)`, matters for LiT-style runs: a frozen tower is kept in
    eval mode while the rest trains, and a blanket `train()` would silently re-enable its dropout/BN updates.
    """
    flags = [(module, module.training) for module in model.modules()] if isinstance(model, nn.Module) else []
    if isinstance(model, nn.Module):
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in flags:
            module.training = training


def text_preprocessor(model: EncodesModalities, text_modality: str) -> Preprocessor:
    preprocessors = model.preprocessors(is_train=False)
    if text_modality not in preprocessors:
        raise KeyError(f"model has no modality '{text_modality}' to encode prompts with; "
                       f"its modalities: {', '.join(sorted(preprocessors))}")
    return preprocessors[text_modality]


def encode_texts(
    model: EncodesModalities,
    texts: Sequence[str],
    *,
    text_modality: str,
    device: torch.device | str,
    batch_size: int = 256,
) -> torch.Tensor:
    """Unit embeddings [N, D] (float32) of `texts`, encoded `batch_size` strings at a time."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    preprocess = text_preprocessor(model, text_modality)
    chunks = []
    for start in range(0, len(texts), batch_size):
        # default_collate stacks [L] token tensors, and dicts of them (HF tokenizer output), alike.
        tokens = default_collate([preprocess(text) for text in texts[start : start + batch_size]])
        chunks.append(model.encode(text_modality, to_device(tokens, device)).float())
    return F.normalize(torch.cat(chunks), dim=-1)


def iterate_embeddings(
    model: EncodesModalities,
    loader: Iterable[dict[str, Any]],
    modalities: Sequence[str],
    *,
    device: torch.device | str,
    progress: bool = True,
    desc: str = "embed",
) -> Iterator[tuple[dict[str, torch.Tensor], dict[str, Any]]]:
    """Yield (unit float32 embeddings per modality [B, D], the raw batch) for each batch of `loader`.

    The caller is responsible for inference mode (see `inference_mode`); this only moves and encodes.
    """
    for batch in progress_iter(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        missing = [m for m in modalities if m not in batch]
        if missing:
            raise KeyError(f"eval batch has no {missing} entries (batch keys: {', '.join(sorted(batch))})")
        embeddings = {m: model.encode(m, to_device(batch[m], device)).float() for m in modalities}
        yield embeddings, batch
