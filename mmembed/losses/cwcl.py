"""The `cwcl` pair loss: continuously weighted contrastive loss anchored on a frozen tower."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import MISSING

from mmembed.losses import functional
from mmembed.losses.base import LOSSES, LossContext, PairLoss, reject_logit_bias
from mmembed.losses.tiled import check_tile_size


@dataclass
class CWCLConfig:
    # The modality of the pair whose tower is frozen and pretrained (U in the paper); it supplies the weights.
    anchor: str = MISSING
    # Which directional term is weighted: "u2v" (the paper's choice), "v2u" or "both".
    direction: str = "u2v"
    tile_size: int | None = None


@LOSSES.register("cwcl", CWCLConfig)
class CWCLLoss(PairLoss):
    """CWCL (arXiv 2309.14580); terms: {"cwcl"}.

    The weights come from the anchor tower's own output (`ctx.features[anchor]`, before the trained head),
    L2-normalised and detached: they measure how similar two samples already are to the frozen model.
    """

    def __init__(self, config: CWCLConfig) -> None:
        super().__init__()
        functional.cwcl_direction(config.direction)  # fail when the recipe is built, not at the first step
        check_tile_size(config.tile_size)
        self.config = config

    def _anchor_first(self, x: torch.Tensor, y: torch.Tensor, ctx: LossContext) -> tuple[torch.Tensor, ...]:
        anchor = self.config.anchor
        if anchor not in (ctx.a, ctx.b):
            raise ValueError(f"cwcl anchor '{anchor}' is not a modality of the pair {ctx.a}-{ctx.b}")
        if anchor not in ctx.features:
            raise KeyError(f"cwcl needs the tower features of its anchor '{anchor}' in ctx.features; "
                           f"got {sorted(ctx.features)}")
        frozen = F.normalize(ctx.features[anchor].detach().float(), dim=-1)
        return (x, y, frozen) if anchor == ctx.a else (y, x, frozen)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None,
        ctx: LossContext,
    ) -> dict[str, torch.Tensor]:
        reject_logit_bias("cwcl", ctx, logit_bias)
        p, q, frozen = self._anchor_first(x, y, ctx)
        cfg = self.config
        return {"cwcl": functional.cwcl(p, q, frozen, logit_scale, cfg.direction, tile_size=cfg.tile_size)}
