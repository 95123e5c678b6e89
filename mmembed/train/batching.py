"""Merging dict batches (tensors, nested dicts of tensors, lists of keys) for contrastive accumulation."""

from __future__ import annotations

from typing import Any

import torch


def merge_batches(batches: list[Any]) -> Any:
    """Concatenate micro-batches along the batch axis, recursively (used by contrastive accumulation)."""
    first = batches[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(batches, dim=0) if first.ndim else first
    if isinstance(first, dict):
        # Batches of different sources hold different modalities: keep what every batch has.
        return {k: merge_batches([b[k] for b in batches]) for k in first if all(k in b for b in batches)}
    if isinstance(first, list):
        return [item for b in batches for item in b]
    return first


def batch_size_of(batch: dict[str, Any]) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.ndim:
            return int(value.shape[0])
        if isinstance(value, dict):
            inner = batch_size_of(value)
            if inner:
                return inner
    return 0
