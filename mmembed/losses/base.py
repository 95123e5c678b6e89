"""The pair-loss interface and the loss registry.

A pair loss sees the *local* L2-normalised embeddings of one modality pair and returns a dict of named terms
whose sum is that pair's loss (the trainer multiplies by the pair weight and logs every term). Losses gather
across ranks themselves through `mmembed.losses.distributed`, so they work the same with or without
accelerate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mmembed.registry import Registry


@dataclass
class LossContext:
    """What a loss may need beyond the two embeddings.

    `features` holds each modality's tower output before the head (CWCL's frozen-anchor weights use it);
    `batch` is the raw batch dict (`index` for per-sample temperatures, `teacher` for distillation).
    """

    a: str
    b: str
    batch: dict[str, Any] = field(default_factory=dict)
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    step: int = 0


class PairLoss(nn.Module):
    """Base class: subclasses set the logit-scale/bias defaults and implement `forward`."""

    # CLIP: s = exp(theta), theta initialised to ln(1/0.07). None for the bias means the pair has no bias.
    default_logit_scale: float = math.log(1 / 0.07)
    default_logit_bias: float | None = None
    # Losses with their own temperatures (iSogCLR, TempNet) ignore the pair's scale; the trainer then
    # freezes it, since a parameter without gradient breaks DDP's reducer.
    uses_logit_scale: bool = True
    # Config fields the recipe fills in from the run instead of the user copying them by hand (see
    # mmembed.recipe.DERIVED): e.g. ("num_samples",) = the training data's size from sizes.json.
    derived_args: tuple[str, ...] = ()

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None,
        ctx: LossContext,
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def metrics(self) -> dict[str, float]:
        """Extra values to log (e.g. the temperature distribution); not part of the loss."""
        return {}


def reject_logit_bias(loss: str, ctx: LossContext, logit_bias: torch.Tensor | None) -> None:
    """Softmax losses cannot learn a bias (it cancels in every row), and an unused parameter breaks DDP."""
    if logit_bias is not None:
        raise ValueError(f"{loss} for pair {ctx.a}-{ctx.b} takes no logit bias (a shared bias cancels in its "
                         "softmax); remove logit_bias_init from the pair")


LOSSES: Registry[PairLoss] = Registry("loss")


def list_losses() -> list[str]:
    import mmembed.losses  # noqa: F401  (registers the built-in losses)

    return LOSSES.names()
