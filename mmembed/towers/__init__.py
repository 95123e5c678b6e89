"""Modality towers. Every built-in tower is declared here by name and imported on first use, so importing
mmembed needs none of the optional libraries some towers use (the Hugging Face towers need the `hf` extra)."""

from __future__ import annotations

from torch import nn

from mmembed.config.model import TowerSpec
from mmembed.towers.base import TOWERS, Tower, TowerInput, list_towers
from mmembed.towers.freeze import apply_freeze, frozen_submodules, keep_eval

# name -> (module that registers it, the extra that installs its optional dependencies).
BUILTIN_TOWERS: dict[str, tuple[str, str | None]] = {
    "open_clip_vision": ("mmembed.towers.open_clip_vision", None),
    "open_clip_text": ("mmembed.towers.open_clip_text", None),
    "timm_image": ("mmembed.towers.timm_image", None),
    "audio_mel": ("mmembed.towers.audio_mel", None),
    "hf_text": ("mmembed.towers.hf_text", "hf"),
    "hf_audio": ("mmembed.towers.hf_audio", "hf"),
    "byte_text": ("mmembed.towers.byte_text", None),
}
for _name, (_module, _extra) in BUILTIN_TOWERS.items():
    TOWERS.declare(_name, _module, extra=_extra)

__all__ = [
    "BUILTIN_TOWERS",
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
    tower = TOWERS.build(spec.type, spec.args, where=f"{where}.args")
    if not isinstance(tower, Tower):
        raise TypeError(f"{where}: '{spec.type}' built a {type(tower).__name__}, "
                        "which lacks the Tower interface")
    apply_freeze(tower, spec.freeze, spec.unfreeze, where=f"{where} ({spec.type})")
    if spec.grad_checkpointing:
        tower.set_grad_checkpointing(True)
    return tower
