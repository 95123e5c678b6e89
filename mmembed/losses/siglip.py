"""The `siglip` pair loss: a thin module over `functional.siglip`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mmembed.losses import functional
from mmembed.losses.base import LOSSES, LossContext, PairLoss


@dataclass
class SigLIPConfig:
    """SigLIP takes no arguments; the dataclass exists so that unknown recipe args are rejected by name."""


@LOSSES.register("siglip", SigLIPConfig)
class SigLIPLoss(PairLoss):
    """Pairwise sigmoid loss; terms: {"sigmoid"}."""

    # Zhai et al. 2023: t' = ln 10 and b = -10 start every pair as a confident negative, which keeps the
    # B² - B negatives from dominating the first steps.
    default_logit_scale = math.log(10.0)
    default_logit_bias = -10.0

    def __init__(self, config: SigLIPConfig | None = None) -> None:
        super().__init__()
        self.config = config or SigLIPConfig()

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None,
        ctx: LossContext,
    ) -> dict[str, torch.Tensor]:
        return {"sigmoid": functional.siglip(x, y, logit_scale, logit_bias)}
