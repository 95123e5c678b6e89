"""`open_clip_vision`: an open_clip vision tower (ViT, ModifiedResNet or open_clip's timm wrapper).

The open_clip module is kept whole as `self.model`, its projection to open_clip's `embed_dim` included, so
parameter names stay open_clip's (`model.conv1.weight`, `model.proj`, ...) and a pretrained open_clip
checkpoint loads unchanged. Because the tower already projects, pair it with an `identity` head when the
model's embed_dim equals the tower's, or a `linear` head to change the width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import CLIPVisionCfg, _build_vision_tower
from open_clip.transform import image_transform
from torch import nn

from mmembed.towers.base import TOWERS, Preprocessor
from mmembed.towers.export_spec import ExportSpec, image_inputs, without
from mmembed.towers.open_clip_common import load_tower_checkpoint, resolve_open_clip_cfg, vision_state
from mmembed.towers.open_clip_slots import (
    OpenClipPart,
    PartOptions,
    fold_matrix,
    image_size_of,
    module_state,
    preprocess_cfg,
)
from mmembed.towers.shard_spec import ShardSpec, open_clip_units
from mmembed.types import LinearMap


@dataclass
class OpenClipVisionConfig:
    # Exactly one of: an open_clip config name ("ViT-B-32", "MobileCLIP-S2", ...) or an inline vision_cfg.
    model_name: str | None = None
    vision_cfg: dict[str, Any] | None = None
    # open_clip's projection width; taken from the named config unless set (required with vision_cfg).
    embed_dim: int | None = None
    # None: the named config's own setting (OpenAI-pretrained weights need QuickGELU), else False.
    quick_gelu: bool | None = None
    # Local open_clip checkpoint (full CLIP state dict or the vision tower's own); never downloaded.
    pretrained: str | None = None
    # Preprocessing; None means open_clip's defaults (OpenAI mean/std, shortest-side resize, bicubic).
    mean: list[float] | None = None
    std: list[float] | None = None
    resize_mode: str | None = None
    interpolation: str | None = None
    # open_clip AugmentationCfg for training (e.g. {"scale": [0.9, 1.0]}).
    aug_cfg: dict[str, Any] | None = None


def _export_preprocess(tower: nn.Module) -> dict[str, Any]:
    cfg = tower.cfg
    return {"kind": "image", "size": list(image_size_of(tower)),
            "mean": list(cfg.mean or OPENAI_DATASET_MEAN), "std": list(cfg.std or OPENAI_DATASET_STD),
            "interpolation": cfg.interpolation or "bicubic", "resize_mode": cfg.resize_mode or "shortest"}


def _open_clip_part(tower: nn.Module, head: LinearMap, opts: PartOptions) -> OpenClipPart:
    """open_clip's own vision module, with a linear head folded into its `proj`."""
    info = tower.open_clip_cfg()
    state = module_state(tower.model)
    fold_matrix(state, "proj", head, "image head")
    return OpenClipPart(cfg=dict(info["vision_cfg"]), state=state, quick_gelu=info["quick_gelu"],
                        preprocess=preprocess_cfg(_export_preprocess(tower)))


@TOWERS.register("open_clip_vision", OpenClipVisionConfig)
class OpenClipVisionTower(nn.Module):
    modality = "image"
    export_spec = ExportSpec(inputs=image_inputs, preprocess=_export_preprocess,
                             portable_args=without("pretrained"), open_clip=_open_clip_part,
                             open_clip_slot="visual")
    shard_spec = ShardSpec(units=open_clip_units)

    def __init__(self, cfg: OpenClipVisionConfig) -> None:
        super().__init__()
        resolved = resolve_open_clip_cfg("open_clip_vision", "vision_cfg", cfg.model_name, cfg.vision_cfg,
                                         cfg.embed_dim, cfg.quick_gelu)
        try:
            vision_cfg = CLIPVisionCfg(**resolved.tower_cfg)
        except TypeError as err:
            raise ValueError(f"open_clip_vision: invalid vision_cfg {resolved.tower_cfg}: {err}") from err
        self.cfg = cfg
        self._resolved = resolved
        self.model = _build_vision_tower(resolved.embed_dim, vision_cfg, quick_gelu=resolved.quick_gelu)
        self.output_dim = resolved.embed_dim
        self.image_size = vision_cfg.image_size
        if cfg.pretrained:
            load_tower_checkpoint(self.model, cfg.pretrained, vision_state, "open_clip_vision")

    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        if not isinstance(inputs, torch.Tensor) or inputs.ndim != 4:
            got = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
            raise ValueError(f"open_clip_vision expects images [B,3,H,W], got {got}")
        return self.model(inputs)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.encode(inputs)

    def no_weight_decay(self) -> set[str]:
        names = self.model.no_weight_decay() if hasattr(self.model, "no_weight_decay") else set()
        return {f"model.{n}" for n in names}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    def preprocessor(self, is_train: bool) -> Preprocessor:
        return image_transform(
            self.image_size,
            is_train=is_train,
            mean=tuple(self.cfg.mean) if self.cfg.mean else None,
            std=tuple(self.cfg.std) if self.cfg.std else None,
            resize_mode=self.cfg.resize_mode,
            interpolation=self.cfg.interpolation,
            aug_cfg=dict(self.cfg.aug_cfg) if self.cfg.aug_cfg else None,
        )

    def open_clip_cfg(self) -> dict[str, Any]:
        """The open_clip `model_cfg` fragment and `preprocess_cfg` this tower was built from (for export)."""
        preprocess = {"size": self.image_size, "mean": self.cfg.mean, "std": self.cfg.std,
                      "interpolation": self.cfg.interpolation, "resize_mode": self.cfg.resize_mode}
        return {
            "embed_dim": self.output_dim,
            "quick_gelu": self._resolved.quick_gelu,
            "vision_cfg": dict(self._resolved.tower_cfg),
            "preprocess_cfg": {k: v for k, v in preprocess.items() if v is not None},
        }

