"""Modality towers. Importing this package registers every built-in tower in `TOWERS`."""

from __future__ import annotations

from torch import nn

from mmembed.config.model import TowerSpec
from mmembed.towers import (  # noqa: F401
    audio_mel,
    byte_text,
    hf_audio,
    hf_text,
    open_clip_text,
    open_clip_vision,
    timm_image,
)
from mmembed.towers.base import TOWERS, Tower, TowerInput, list_towers
from mmembed.towers.freeze import apply_freeze, frozen_submodules, keep_eval

__all__ = [
    "TOWERS",
    "Tower",
    "TowerInput",
    "apply_freeze",
    "build_tower",
    "frozen_submodules",
    "keep_eval",
    "list_towers",
]


def build_tower(spec: TowerSpec, where: str = "tower") -> nn.Module:
    """Build the registered tower `spec.type` from `spec.args`, then apply freezing and checkpointing."""
    tower = TOWERS.build(spec.type, spec.args)
    if not isinstance(tower, Tower):
        raise TypeError(f"{where}: '{spec.type}' built a {type(tower).__name__}, "
                        "which lacks the Tower interface")
    apply_freeze(tower, spec.freeze, spec.unfreeze, where=f"{where} ({spec.type})")
    if spec.grad_checkpointing:
        tower.set_grad_checkpointing(True)
    return tower
