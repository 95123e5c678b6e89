"""The `distill` pair loss: MobileCLIP's (1−λ)·CLIP + λ·KD against stored teacher embeddings."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from omegaconf import MISSING

from mmembed.losses import functional
from mmembed.losses.base import LOSSES, LossContext, PairLoss, reject_logit_bias
from mmembed.losses.tiled import check_tile_size


@dataclass
class DistillConfig:
    # Weight of the KD term: 1.0 for small data, 0.75 at scale (MobileCLIP).
    lam: float = 1.0
    # The teachers' fixed logit scales c_k (MobileCLIP: 100; MobileCLIP2 uses 70 and 60). Filled in from the
    # reinforced set's manifest when the recipe leaves it out.
    teacher_scales: list[float] = field(default_factory=lambda: [100.0])
    # Width of each teacher's part of the stored, concatenated embedding [B, ΣD_k], in storage order; filled
    # in from the reinforced set's manifest (teachers.json) by the recipe.
    teacher_dims: list[int] = MISSING
    tile_size: int | None = None


def _check(config: DistillConfig) -> None:
    if not 0.0 <= config.lam <= 1.0:
        raise ValueError(f"distill: lam must lie in [0, 1], got {config.lam}")
    if not config.teacher_dims or len(config.teacher_dims) != len(config.teacher_scales):
        raise ValueError(f"distill: need one teacher_scales entry per teacher_dims entry, got teacher_dims="
                         f"{list(config.teacher_dims)} teacher_scales={list(config.teacher_scales)}")
    if any(d < 1 for d in config.teacher_dims):
        raise ValueError(f"distill: teacher_dims must be positive, got {list(config.teacher_dims)}")
    check_tile_size(config.tile_size)


@LOSSES.register("distill", DistillConfig)
class DistillLoss(PairLoss):
    """Terms {"clip": (1−λ)·CLIP, "kd": λ·KD}; teachers come from `ctx.batch["teacher"][modality]`."""

    derived_args = ("teacher_dims", "teacher_scales")

    def __init__(self, config: DistillConfig) -> None:
        super().__init__()
        _check(config)
        self.config = config

    def _teachers(self, ctx: LossContext, modality: str, rows: int) -> list[torch.Tensor]:
        """Split the stored [B, ΣD] embedding per teacher and re-normalise (fp16/int8 storage is not unit)."""
        stored = ctx.batch.get("teacher", {})
        if modality not in stored:
            raise KeyError(f"distill for pair {ctx.a}-{ctx.b} needs batch['teacher']['{modality}']; "
                           f"the batch has teacher embeddings for {sorted(stored)}")
        emb = stored[modality]
        dims = list(self.config.teacher_dims)
        if emb.dim() != 2 or emb.shape[0] != rows or emb.shape[1] != sum(dims):
            raise ValueError(f"batch['teacher']['{modality}'] must be [B={rows}, ΣD={sum(dims)}] for "
                             f"teacher_dims={dims}, got {tuple(emb.shape)}")
        return [F.normalize(part.float(), dim=1) for part in emb.split(dims, dim=1)]

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None,
        ctx: LossContext,
    ) -> dict[str, torch.Tensor]:
        reject_logit_bias("distill", ctx, logit_bias)
        teacher_x = self._teachers(ctx, ctx.a, x.shape[0])
        teacher_y = self._teachers(ctx, ctx.b, y.shape[0])
        cfg = self.config
        clip, kd = functional.clip_and_distill(
            x, y, logit_scale, teacher_x, teacher_y, cfg.teacher_scales, tile_size=cfg.tile_size
        )
        lam = cfg.lam
        return {"clip": (1.0 - lam) * clip, "kd": lam * kd}
