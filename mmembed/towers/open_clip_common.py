"""What the open_clip vision and text towers share: resolving an open_clip model config and loading the
tower's slice of a local open_clip checkpoint.

Both towers keep open_clip's own module (with its projection to open_clip's `embed_dim`) so that the trained
weights load unchanged into `open_clip.create_model('local-dir:...')`; `open_clip_cfg()` on each tower
returns the config fragment the exporter needs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.factory import load_state_dict
from torch import nn


@dataclass(frozen=True)
class ResolvedOpenClipCfg:
    """One tower's slice of an open_clip model config."""

    embed_dim: int
    tower_cfg: dict[str, Any]
    quick_gelu: bool


def resolve_open_clip_cfg(
    tower: str,
    section: str,
    model_name: str | None,
    inline_cfg: Mapping[str, Any] | None,
    embed_dim: int | None,
    quick_gelu: bool | None,
) -> ResolvedOpenClipCfg:
    """Pick `section` ('vision_cfg' | 'text_cfg') from a named open_clip config or take the inline dict.

    Exactly one of `model_name` / `inline_cfg` must be given. `embed_dim` (open_clip's projection width)
    comes from the named config unless overridden; an inline config must state it.
    """
    if (model_name is None) == (inline_cfg is None):
        raise ValueError(f"{tower}: give exactly one of 'model_name' (an open_clip config name) or "
                         f"'{section}' (an inline dict); got model_name={model_name!r}, "
                         f"{section}={'set' if inline_cfg is not None else 'None'}")
    if model_name is not None:
        full = open_clip.get_model_config(model_name)
        if full is None:
            raise ValueError(f"{tower}: unknown open_clip model config '{model_name}'; see "
                             "open_clip.list_models() for the names open_clip ships")
        cfg = dict(full[section])
        dim = embed_dim if embed_dim is not None else int(full["embed_dim"])
        gelu = quick_gelu if quick_gelu is not None else bool(full.get("quick_gelu", False))
    else:
        if embed_dim is None:
            raise ValueError(f"{tower}: an inline '{section}' needs 'embed_dim' (open_clip's projection)")
        cfg, dim, gelu = dict(inline_cfg or {}), embed_dim, bool(quick_gelu)
    # The towers return pooled features only; token outputs would change encode()'s return type.
    cfg["output_tokens"] = False
    return ResolvedOpenClipCfg(embed_dim=dim, tower_cfg=cfg, quick_gelu=gelu)


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def vision_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The vision tower's weights from a full open_clip checkpoint, or the dict itself if tower-only."""
    visual = _strip(state, "visual.")
    return visual if visual else dict(state)


# Keys of a (non-custom-text) open_clip CLIP that belong to neither tower.
_CLIP_SHARED_KEYS = ("logit_scale", "logit_bias", "attn_mask")


def text_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The text tower's weights: `text.*` (CustomTextCLIP), top-level text keys (CLIP) or tower-only."""
    custom = _strip(state, "text.")
    if custom:
        return custom
    return {k: v for k, v in state.items() if not k.startswith("visual.") and k not in _CLIP_SHARED_KEYS}


def load_tower_checkpoint(
    module: nn.Module,
    path: str,
    select: Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]],
    tower: str,
) -> None:
    """Load the tower's part of a local checkpoint (.pt/.bin/.safetensors) strictly into `module`."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{tower}: pretrained checkpoint not found: {path} (local files only)")
    state = select(load_state_dict(path))
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"{tower}: checkpoint {path} does not match the configured tower: {err}") from err
    if missing or unexpected:
        raise ValueError(f"{tower}: checkpoint {path} does not match the configured tower; "
                         f"missing keys {sorted(missing)[:8]}, unexpected keys {sorted(unexpected)[:8]}")
