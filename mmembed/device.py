"""Moving a batch (a tensor, or tensors nested in dicts, lists and tuples) to a device."""

from __future__ import annotations

from typing import Any

import torch


def to_device(value: Any, device: torch.device | str, non_blocking: bool = True) -> Any:
    """`value` with every tensor inside it on `device`; anything else (keys, ints) is returned as is."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=non_blocking)
    if isinstance(value, dict):
        return {k: to_device(v, device, non_blocking) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_device(v, device, non_blocking) for v in value)
    return value
