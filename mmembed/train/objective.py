"""The training objective: the weighted sum of every configured pair loss.

With several data sources (docs/design.md, "Multi-source training") a batch trains only the pairs of the
source it came from (`batch["__source__"]`). A step may hold several batches (contrastive accumulation) from
different sources: each pair's loss is then computed once, over the concatenation of the batches whose source
trains it, so its negatives span all of them, exactly as one big batch of those rows would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mmembed.config.model import PairConfig
from mmembed.losses import LossContext, build_loss
from mmembed.model import pair_key
from mmembed.train.batching import merge_batches

SOURCE_FIELD = "__source__"


@dataclass
class BatchPart:
    """One batch of a step: its embeddings and tower features (per modality present) and the raw batch."""

    embeddings: dict[str, torch.Tensor]
    features: dict[str, torch.Tensor]
    batch: dict[str, Any]


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor
    # '<pair key>/<term>' -> detached value.
    terms: dict[str, torch.Tensor]
    # Recipe pair index -> its weighted loss (detached), for the pairs this step trained.
    pair_losses: dict[int, torch.Tensor]


def _joined(parts: list[BatchPart], attribute: str) -> dict[str, Any]:
    dicts = [getattr(part, attribute) for part in parts]
    return dicts[0] if len(dicts) == 1 else merge_batches(dicts)


class Objective(nn.Module):
    """Holds one loss module per trained pair (some, like iSogCLR and TempNet, have state or parameters).

    `source_pairs[s]` lists the indices of the pairs that batches of source s train (None: every batch trains
    every pair, the single-source case).
    """

    def __init__(self, pairs: list[PairConfig], source_pairs: Sequence[Sequence[int]] | None = None) -> None:
        super().__init__()
        self.pairs = list(pairs)
        self.losses = nn.ModuleDict({pair_key(p.a, p.b): build_loss(p) for p in self.pairs})
        self.source_pairs = None if source_pairs is None else [frozenset(s) for s in source_pairs]

    def trained_pairs(self, batch: dict[str, Any]) -> frozenset[int] | range:
        """The indices of the pairs this batch trains."""
        source = batch.get(SOURCE_FIELD)
        if self.source_pairs is None or source is None:
            return range(len(self.pairs))
        return self.source_pairs[int(source)]

    def forward(
        self,
        model: nn.Module,
        embeddings: dict[str, torch.Tensor],
        features: dict[str, torch.Tensor],
        batch: dict[str, Any],
        step: int,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return (total loss, detached named terms '<pair>/<term>') for one batch."""
        out = self.over_parts(model, [BatchPart(embeddings, features, batch)], step)
        return out.loss, out.terms

    def over_parts(self, model: nn.Module, parts: list[BatchPart], step: int) -> ObjectiveOutput:
        """Each pair's loss over the concatenated parts that train it; pairs no part trains are left out."""
        total: torch.Tensor | None = None
        terms: dict[str, torch.Tensor] = {}
        pair_losses: dict[int, torch.Tensor] = {}
        for i, pair in enumerate(self.pairs):
            members = [part for part in parts if i in self.trained_pairs(part.batch)]
            if not members:
                continue
            key = pair_key(pair.a, pair.b)
            x, y = (torch.cat([m.embeddings[side] for m in members]) if len(members) > 1
                    else members[0].embeddings[side] for side in (pair.a, pair.b))
            ctx = LossContext(a=pair.a, b=pair.b, batch=_joined(members, "batch"),
                              features=_joined(members, "features"), step=step)
            named = self.losses[key](x, y, model.logit_scale(pair.a, pair.b), model.logit_bias(pair.a, pair.b), ctx)
            pair_total = x.new_zeros(())
            for name, value in named.items():
                terms[f"{key}/{name}"] = value.detach()
                pair_total = pair_total + pair.weight * value
            pair_losses[i] = pair_total.detach()
            total = pair_total if total is None else total + pair_total
        if total is None:
            raise ValueError("no pair loss in this step: no batch's source trains any recipe pair")
        return ObjectiveOutput(total, terms, pair_losses)

    def metrics(self) -> dict[str, float]:
        return {f"{key}/{name}": value for key, loss in self.losses.items()
                for name, value in loss.metrics().items()}
