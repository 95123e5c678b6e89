"""`timm_image`: any timm model as an image tower, returning its pooled features (num_classes=0)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from open_clip.transform import image_transform
from timm.data import resolve_model_data_config
from torch import nn

from mmembed.towers.base import TOWERS, Preprocessor
from mmembed.towers.export_spec import ExportSpec, image_inputs, without
from mmembed.towers.open_clip_slots import (
    NotExpressibleError,
    OpenClipPart,
    PartOptions,
    image_size_of,
    module_state,
    preprocess_cfg,
)
from mmembed.towers.shard_spec import ShardSpec, timm_units
from mmembed.towers.timm_common import (
    create_timm_backbone,
    pooled_dim,
    timm_no_weight_decay,
    timm_set_grad_checkpointing,
)
from mmembed.types import LinearMap


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


def _export_preprocess(tower: nn.Module) -> dict[str, Any]:
    cfg = tower.cfg
    return {"kind": "image", "size": list(image_size_of(tower)), "mean": list(tower.mean),
            "std": list(tower.std), "interpolation": cfg.interpolation or "bicubic",
            "resize_mode": cfg.resize_mode or "shortest"}


def _timm_pool(model: nn.Module) -> str:
    pool = getattr(model, "global_pool", "")
    return pool if isinstance(pool, str) else str(getattr(pool, "pool_type", ""))


# Regularisation kwargs that change nothing at inference; anything else open_clip could not pass to timm.
_TIMM_INFERENCE_NEUTRAL = {"drop_rate", "drop_path_rate", "patch_drop_rate", "proj_drop_rate", "attn_drop_rate"}


def _open_clip_part(tower: nn.Module, head: LinearMap, opts: PartOptions) -> OpenClipPart:
    """open_clip's TimmModel: the trunk as is, a linear head as its `head.proj`."""
    extra = set(tower.cfg.model_kwargs) - _TIMM_INFERENCE_NEUTRAL
    if extra:
        raise NotExpressibleError(f"image tower: timm model_kwargs {sorted(extra)} change the architecture and "
                                  "open_clip's TimmModel cannot pass them to timm.create_model")
    state = {f"trunk.{k}": v for k, v in module_state(tower.model).items()}
    proj = "none"
    if not head.is_identity:
        if int(tower.model.num_features) != tower.output_dim:
            raise NotExpressibleError(f"image tower: open_clip's timm projection reads num_features="
                                      f"{tower.model.num_features}, but the tower outputs {tower.output_dim}")
        proj = "linear"
        state["head.proj.weight"] = head.weight.float()
        if head.bias is not None:
            state["head.proj.bias"] = head.bias.float()
    cfg = {"timm_model_name": tower.cfg.model_name, "timm_model_pretrained": False,
           "timm_pool": _timm_pool(tower.model), "timm_proj": proj,
           "timm_proj_bias": head.bias is not None, "image_size": tower.image_size}
    return OpenClipPart(cfg=cfg, state=state, preprocess=preprocess_cfg(_export_preprocess(tower)))


@TOWERS.register("timm_image", TimmImageConfig)
class TimmImageTower(nn.Module):
    modality = "image"
    export_spec = ExportSpec(inputs=image_inputs, preprocess=_export_preprocess,
                             portable_args=without("checkpoint_path", pretrained=False),
                             open_clip=_open_clip_part, open_clip_slot="visual")
    shard_spec = ShardSpec(units=lambda tower: timm_units(tower.model, "model."))

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

