"""The plumbing of pair losses with per-sample state (iSogCLR, TempNet): the two call forms, input checks and
logged statistics."""

from __future__ import annotations

import torch

from mmembed.losses.base import LossContext, PairLoss


def check_inputs(who: str, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, num_samples: int) -> None:
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(f"{who}: the two embeddings must both be [batch, dim]; got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    if not isinstance(index, torch.Tensor) or index.dtype.is_floating_point or index.dtype == torch.bool:
        kind = index.dtype if isinstance(index, torch.Tensor) else type(index).__name__
        raise TypeError(f"{who}: index must be an integer tensor of dataset indices, got {kind}")
    if index.shape != (x.shape[0],):
        raise ValueError(f"{who}: index must have shape ({x.shape[0]},), one per row; "
                         f"got {tuple(index.shape)}")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_samples):
        raise IndexError(f"{who}: index values must lie in [0, num_samples={num_samples}); got "
                         f"[{int(index.min())}, {int(index.max())}]. Is num_samples the dataset size?")


def index_from_context(who: str, ctx: LossContext, device: torch.device) -> torch.Tensor:
    index = ctx.batch.get("index")
    if index is None:
        raise KeyError(f"{who} on pair {ctx.a}-{ctx.b} needs batch['index'] (the global dataset index of "
                       f"each row); the batch has keys {sorted(ctx.batch)}")
    return torch.as_tensor(index, device=device)


class IndexedPairLoss(PairLoss):
    """A pair loss with per-sample state, callable two ways.

    * `loss(x, y, index)` -> scalar tensor: the sum of the named terms (the public, direct API).
    * `loss(x, y, logit_scale, logit_bias, ctx)` -> {"name": term}: the PairLoss form the trainer uses; the
      index comes from `ctx.batch["index"]`. The logit scale/bias are ignored: temperatures are per sample.
    The form is chosen by whether `ctx` is given. Subclasses implement `terms(x, y, index)`.
    """

    # The pair's model-level logit scale gets no gradient from these losses; recipes should set
    # learn_logit_scale: false for the pair (or run DDP with find_unused_parameters).
    uses_logit_scale: bool = False

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        index_or_scale: torch.Tensor,
        logit_bias: torch.Tensor | None = None,
        ctx: LossContext | None = None,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        if ctx is None:
            return torch.stack(list(self.terms(x, y, index_or_scale).values())).sum()
        return self.terms(x, y, index_from_context(type(self).__name__, ctx, x.device))

    def terms(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def summarize(prefix: str, values: torch.Tensor) -> dict[str, float]:
    """mean/std/min/max of `values` as '<prefix>_<stat>' floats, for logging."""
    return {f"{prefix}_mean": float(values.mean()), f"{prefix}_std": float(values.std(correction=0)),
            f"{prefix}_min": float(values.min()), f"{prefix}_max": float(values.max())}


def check_range(who: str, name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"{who}: {name}={value} must lie in [{low}, {high}]")
