"""`timm_image`: any timm model as an image tower, returning its pooled features (num_classes=0)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from open_clip.transform import image_transform
from timm.data import resolve_model_data_config
from torch import nn

from mmembed.towers.base import TOWERS, Preprocessor
from mmembed.towers.timm_common import (
    create_timm_backbone,
    pooled_dim,
    timm_no_weight_decay,
    timm_set_grad_checkpointing,
)


@dataclass
class TimmImageConfig:
    model_name: str = ""
    # False by default: True pulls weights through timm's hub cache (offline machines need them cached).
    pretrained: bool = False
    # Local weights file, loaded through timm's pretrained loader (classifier dropped).
    checkpoint_path: str | None = None
    # Training/eval resolution; None means the model's default input size.
    image_size: int | None = None
    # None: the model's pretrained_cfg mean/std (ImageNet for most timm models).
    mean: list[float] | None = None
    std: list[float] | None = None
    resize_mode: str | None = None
    interpolation: str | None = None
    aug_cfg: dict[str, Any] | None = None
    # Extra timm.create_model kwargs (drop_path_rate, img_size for ViTs, ...).
    model_kwargs: dict[str, Any] = field(default_factory=dict)


class TimmImageTower(nn.Module):
    modality = "image"

    def __init__(self, cfg: TimmImageConfig) -> None:
        super().__init__()
        if not cfg.model_name:
            raise ValueError("timm_image: 'model_name' is required (a timm model name)")
        kwargs = dict(cfg.model_kwargs)
        self.model = create_timm_backbone("timm_image", cfg.model_name, cfg.pretrained, cfg.checkpoint_path,
                                          **kwargs)
        self.cfg = cfg
        self.output_dim = pooled_dim(self.model)
        data_cfg = resolve_model_data_config(self.model)
        self.image_size = cfg.image_size or int(data_cfg["input_size"][-1])
        self.mean = tuple(cfg.mean) if cfg.mean else tuple(data_cfg["mean"])
        self.std = tuple(cfg.std) if cfg.std else tuple(data_cfg["std"])

    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        if not isinstance(inputs, torch.Tensor) or inputs.ndim != 4:
            got = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
            raise ValueError(f"timm_image expects images [B,C,H,W], got {got}")
        return self.model(inputs)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.encode(inputs)

    def no_weight_decay(self) -> set[str]:
        return timm_no_weight_decay(self.model, "model.")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        timm_set_grad_checkpointing("timm_image", self.model, enable)

    def preprocessor(self, is_train: bool) -> Preprocessor:
        return image_transform(
            self.image_size,
            is_train=is_train,
            mean=self.mean,
            std=self.std,
            resize_mode=self.cfg.resize_mode,
            interpolation=self.cfg.interpolation,
            aug_cfg=dict(self.cfg.aug_cfg) if self.cfg.aug_cfg else None,
        )


@TOWERS.register("timm_image", TimmImageConfig)
def build_timm_image(cfg: TimmImageConfig) -> TimmImageTower:
    return TimmImageTower(cfg)
