"""How a tower plus its head fills an open_clip `CustomTextCLIP` slot ("visual" or "text").

open_clip has one projection per tower and no free slot after it, so a linear head is folded into the
tower's own final projection (`visual.proj`, `text.text_projection`, timm `head.proj`, HF `proj`), which is
exact up to float rounding because the composition of two linear maps is linear. Each tower's
`export_spec.open_clip` builds its part with these helpers; anything open_clip cannot compute identically
raises `NotExpressibleError` naming the offending part.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmembed.types import LinearMap


class NotExpressibleError(ValueError):
    """The model has a part open_clip has no slot for; the message names it."""


@dataclass
class OpenClipPart:
    """One tower's contribution to an open_clip model folder."""

    cfg: dict[str, Any]  # vision_cfg or text_cfg
    state: dict[str, torch.Tensor]  # keys relative to the slot ('visual.' / 'text.')
    quick_gelu: bool | None = None  # None: the tower does not care
    preprocess: dict[str, Any] = field(default_factory=dict)  # image towers only
    write_files: Callable[[Path], None] | None = None  # tokenizer files


@dataclass(frozen=True)
class PartOptions:
    # Hugging Face hub id written as text_cfg.hf_model_name (open_clip reads the HF architecture config
    # from it; the weights come from the exported safetensors).
    hf_model_id: str | None = None


def fold_matrix(state: dict[str, torch.Tensor], key: str, head: LinearMap, where: str) -> None:
    """Tower ends in `x @ P` (P [w, d]): the head y = W(xP) becomes x(P Wᵀ); a head bias has no slot."""
    if head.is_identity:
        return
    if key not in state:
        raise NotExpressibleError(f"{where}: the tower has no '{key}' projection to fold the linear head into")
    if head.bias is not None:
        raise NotExpressibleError(f"{where}: the linear head has a bias, but the tower's projection '{key}' "
                                  "is a bias-free matrix in open_clip")
    state[key] = (state[key].double() @ head.weight.T).float()


def fold_linear(state: dict[str, torch.Tensor], key: str, head: LinearMap, where: str) -> None:
    """Tower ends in nn.Linear (A, c): W(Ax + c) + b = (WA)x + (Wc + b)."""
    if head.is_identity:
        return
    weight, bias = head.weight, head.bias
    state[f"{key}.weight"] = (weight @ state[f"{key}.weight"].double()).float()
    folded = weight @ state[f"{key}.bias"].double() if f"{key}.bias" in state else None
    if bias is not None:
        folded = bias if folded is None else folded + bias
    if folded is not None:
        if f"{key}.bias" not in state:
            raise NotExpressibleError(f"{where}: the linear head has a bias, but '{key}' has none")
        state[f"{key}.bias"] = folded.float()


def module_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def preprocess_cfg(pre: dict[str, Any]) -> dict[str, Any]:
    """An image tower's JSON preprocessing (export_spec.preprocess) as open_clip's `preprocess_cfg`."""
    size = pre["size"]
    return {"size": size[0] if size[0] == size[1] else size, "mean": pre["mean"], "std": pre["std"],
            "interpolation": pre["interpolation"], "resize_mode": pre["resize_mode"]}


def image_size_of(tower: nn.Module) -> tuple[int, int]:
    size = tower.image_size
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
