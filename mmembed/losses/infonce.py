"""The `infonce` pair loss (CLIP): a thin module over `functional.infonce`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmembed.losses import functional
from mmembed.losses.base import LOSSES, LossContext, PairLoss
from mmembed.losses.tiled import check_tile_size


@dataclass
class InfoNCEConfig:
    # Compute the loss in tile_size×tile_size blocks (Inf-CL) instead of one B×B logit matrix.
    tile_size: int | None = None


@LOSSES.register("infonce", InfoNCEConfig)
class InfoNCELoss(PairLoss):
    """½[CE(L, diag) + CE(Lᵀ, diag)] over the gathered batch; terms: {"contrastive"}."""

    def __init__(self, config: InfoNCEConfig | None = None) -> None:
        super().__init__()
        self.config = config or InfoNCEConfig()
        check_tile_size(self.config.tile_size)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None,
        ctx: LossContext,
    ) -> dict[str, torch.Tensor]:
        loss = functional.infonce(x, y, logit_scale, logit_bias, tile_size=self.config.tile_size)
        return {"contrastive": loss}
