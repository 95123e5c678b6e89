"""How each image / text tower type (plus its head) maps onto an open_clip `CustomTextCLIP` slot.

open_clip has one projection per tower and no free slot after it, so a `linear` head is folded into the
tower's own final projection (`visual.proj`, `text.text_projection`, timm `head.proj`, HF `proj`), which is
exact up to float rounding because the composition of two linear maps is linear. Everything open_clip
cannot compute identically raises `NotExpressibleError` naming the offending part.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmembed.export.tower_kinds import TOWER_KINDS
from mmembed.heads import IdentityHead, LinearHead


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


def _linear(head: nn.Module, where: str) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(W [E, d], b [E] | None) of a linear head in float64; None for identity; error for anything else."""
    if isinstance(head, IdentityHead):
        return None
    if isinstance(head, LinearHead):
        bias = head.proj.bias
        return head.proj.weight.detach().double(), None if bias is None else bias.detach().double()
    raise NotExpressibleError(f"{where}: a '{type(head).__name__}' head cannot be expressed in open_clip, "
                              "which has one linear projection per tower and no slot for a head after it")


def _fold_matrix(state: dict[str, torch.Tensor], key: str, head: nn.Module, where: str) -> None:
    """Tower ends in `x @ P` (P [w, d]): the head y = W(xP) becomes x(P Wᵀ); a head bias has no slot."""
    lin = _linear(head, where)
    if lin is None:
        return
    weight, bias = lin
    if key not in state:
        raise NotExpressibleError(f"{where}: the tower has no '{key}' projection to fold the linear head into")
    if bias is not None:
        raise NotExpressibleError(f"{where}: the linear head has a bias, but the tower's projection '{key}' "
                                  "is a bias-free matrix in open_clip")
    state[key] = (state[key].double() @ weight.T).float()


def _fold_linear(state: dict[str, torch.Tensor], key: str, head: nn.Module, where: str) -> None:
    """Tower ends in nn.Linear (A, c): W(Ax + c) + b = (WA)x + (Wc + b)."""
    lin = _linear(head, where)
    if lin is None:
        return
    weight, bias = lin
    state[f"{key}.weight"] = (weight @ state[f"{key}.weight"].double()).float()
    folded = weight @ state[f"{key}.bias"].double() if f"{key}.bias" in state else None
    if bias is not None:
        folded = bias if folded is None else folded + bias
    if folded is not None:
        if f"{key}.bias" not in state:
            raise NotExpressibleError(f"{where}: the linear head has a bias, but '{key}' has none")
        state[f"{key}.bias"] = folded.float()


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def open_clip_vision_part(tower: nn.Module, head: nn.Module, opts: PartOptions) -> OpenClipPart:
    info = tower.open_clip_cfg()
    state = _state(tower.model)
    _fold_matrix(state, "proj", head, "image head")
    pre = TOWER_KINDS["open_clip_vision"].preprocess(tower)
    return OpenClipPart(cfg=dict(info["vision_cfg"]), state=state, quick_gelu=info["quick_gelu"],
                        preprocess=_preprocess_cfg(pre))


def _preprocess_cfg(pre: dict[str, Any]) -> dict[str, Any]:
    size = pre["size"]
    return {"size": size[0] if size[0] == size[1] else size, "mean": pre["mean"], "std": pre["std"],
            "interpolation": pre["interpolation"], "resize_mode": pre["resize_mode"]}


def _timm_pool(model: nn.Module) -> str:
    pool = getattr(model, "global_pool", "")
    return pool if isinstance(pool, str) else str(getattr(pool, "pool_type", ""))


# Regularisation kwargs that change nothing at inference; anything else open_clip could not pass to timm.
_TIMM_INFERENCE_NEUTRAL = {"drop_rate", "drop_path_rate", "patch_drop_rate", "proj_drop_rate", "attn_drop_rate"}


def timm_image_part(tower: nn.Module, head: nn.Module, opts: PartOptions) -> OpenClipPart:
    extra = set(tower.cfg.model_kwargs) - _TIMM_INFERENCE_NEUTRAL
    if extra:
        raise NotExpressibleError(f"image tower: timm model_kwargs {sorted(extra)} change the architecture and "
                                  "open_clip's TimmModel cannot pass them to timm.create_model")
    lin = _linear(head, "image head")
    state = {f"trunk.{k}": v for k, v in _state(tower.model).items()}
    proj = "none"
    if lin is not None:
        if int(tower.model.num_features) != tower.output_dim:
            raise NotExpressibleError(f"image tower: open_clip's timm projection reads num_features="
                                      f"{tower.model.num_features}, but the tower outputs {tower.output_dim}")
        proj = "linear"
        state["head.proj.weight"] = lin[0].float()
        if lin[1] is not None:
            state["head.proj.bias"] = lin[1].float()
    cfg = {"timm_model_name": tower.cfg.model_name, "timm_model_pretrained": False,
           "timm_pool": _timm_pool(tower.model), "timm_proj": proj,
           "timm_proj_bias": lin is not None and lin[1] is not None, "image_size": tower.image_size}
    pre = TOWER_KINDS["timm_image"].preprocess(tower)
    return OpenClipPart(cfg=cfg, state=state, preprocess=_preprocess_cfg(pre))


def open_clip_text_part(tower: nn.Module, head: nn.Module, opts: PartOptions) -> OpenClipPart:
    info = tower.open_clip_cfg()
    state = _state(tower.model)
    if isinstance(tower.model.text_projection, nn.Linear):
        _fold_linear(state, "text_projection", head, "text head")
    else:
        _fold_matrix(state, "text_projection", head, "text head")
    return OpenClipPart(cfg=dict(info["text_cfg"]), state=state, quick_gelu=info["quick_gelu"])


# mmembed pooling -> open_clip pooler with the same arithmetic. open_clip's MaxPooler fills the *kept*
# positions with -inf (masked_fill(mask, -inf)), so max pooling has no faithful counterpart.
_HF_POOLERS = {"mean": "mean_pooler", "cls": "cls_last_hidden_state_pooler"}


def hf_text_part(tower: nn.Module, head: nn.Module, opts: PartOptions) -> OpenClipPart:
    if tower.pooling not in _HF_POOLERS:
        raise NotExpressibleError(f"text tower: '{tower.pooling}' pooling has no faithful open_clip pooler "
                                  f"(supported: {sorted(_HF_POOLERS)})")
    hub_id = opts.hf_model_id or _hub_id(tower)
    lin = _linear(head, "text head")
    state = {f"transformer.{k}": v for k, v in _state(tower.model).items()}
    if lin is not None:
        if lin[1] is not None:
            raise NotExpressibleError("text head: open_clip's HF 'linear' projection has no bias")
        # Pre-head normalisation (sentence-transformers Normalize) only rescales each row by a positive
        # number, which a bias-free linear map followed by L2 normalisation cannot see.
        state["proj.weight"] = lin[0].float()
    cfg = {"hf_model_name": hub_id, "hf_tokenizer_name": hub_id, "hf_model_pretrained": False,
           "hf_proj_type": "linear" if lin is not None else None,
           "hf_pooler_type": _HF_POOLERS[tower.pooling], "context_length": int(tower.max_length)}

    def write(folder: Path) -> None:
        tower.tokenizer.save_pretrained(folder)
        tower.model.config.save_pretrained(folder)

    return OpenClipPart(cfg=cfg, state=state, write_files=write)


def _hub_id(tower: nn.Module) -> str:
    name = str(getattr(tower.model.config, "_name_or_path", "") or "")
    if name.count("/") == 1 and not Path(name).exists():
        return name
    raise NotExpressibleError("text tower: open_clip loads a Hugging Face text tower's architecture by hub id "
                              "(text_cfg.hf_model_name), and this model's config names none; pass "
                              "--hf-model-id ORG/NAME (e.g. sentence-transformers/all-MiniLM-L6-v2)")


PART_BUILDERS: dict[str, Callable[[nn.Module, nn.Module, PartOptions], OpenClipPart]] = {
    "open_clip_vision": open_clip_vision_part,
    "timm_image": timm_image_part,
    "open_clip_text": open_clip_text_part,
    "hf_text": hf_text_part,
}
