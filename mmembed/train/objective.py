"""The training objective: the weighted sum of every configured pair loss."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmembed.config.model import PairConfig
from mmembed.losses import LossContext, build_loss
from mmembed.model import pair_key


class Objective(nn.Module):
    """Holds one loss module per trained pair (some, like iSogCLR and TempNet, have state or parameters)."""

    def __init__(self, pairs: list[PairConfig]) -> None:
        super().__init__()
        self.pairs = list(pairs)
        self.losses = nn.ModuleDict({pair_key(p.a, p.b): build_loss(p) for p in self.pairs})

    def forward(
        self,
        model: nn.Module,
        embeddings: dict[str, torch.Tensor],
        features: dict[str, torch.Tensor],
        batch: dict[str, Any],
        step: int,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return (total loss, detached named terms '<pair>/<term>')."""
        total = embeddings[self.pairs[0].a].new_zeros(())
        terms: dict[str, torch.Tensor] = {}
        for pair in self.pairs:
            key = pair_key(pair.a, pair.b)
            ctx = LossContext(a=pair.a, b=pair.b, batch=batch, features=features, step=step)
            named = self.losses[key](
                embeddings[pair.a], embeddings[pair.b], model.logit_scale(pair.a, pair.b),
                model.logit_bias(pair.a, pair.b), ctx,
            )
            for name, value in named.items():
                terms[f"{key}/{name}"] = value.detach()
                total = total + pair.weight * value
        return total, terms

    def metrics(self) -> dict[str, float]:
        return {f"{key}/{name}": value for key, loss in self.losses.items()
                for name, value in loss.metrics().items()}
