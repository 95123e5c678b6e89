"""The DRO estimator shared by iSogCLR and TempNet: pair differences h, the moving average s of
E exp(h/τ) per anchor (stabilised by a running max b), the weights p and the temperature gradient ∂F/∂τ.

Sides: a pair (a, b) has two anchor sides. Side "a" anchors rows of the first embedding x against every
candidate y (h_i(y_j) = <x_i, y_j> - <x_i, y_i>); side "b" anchors rows of y against every x. The formulas
and the distributed convention are in docs/design.md ("Robust contrastive losses").
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from mmembed.losses.distributed import gather_with_grad, global_row_offset

# Floor of s (LibAUC's eps): an anchor whose negatives all underflow gets zero weights instead of 0/0.
S_FLOOR = 1e-20
# The two anchor sides of a pair (a, b), in order.
SIDES = ("a", "b")


@dataclass
class PairDifferences:
    """h for this rank's anchors against every gathered candidate, with autograd to the features."""

    a: torch.Tensor  # [n_local, B]: h_i(y_j) = <x_i, y_j> - <x_i, y_i>, anchors of side a
    b: torch.Tensor  # [n_local, B]: h_i(x_j) = <y_i, x_j> - <y_i, x_i>, anchors of side b
    positives: torch.Tensor  # [n_local]: global column of each local row's own pair

    @property
    def num_negatives(self) -> int:
        return self.a.shape[1] - 1


def pair_differences(x: torch.Tensor, y: torch.Tensor) -> PairDifferences:
    """Local rows against all ranks' columns (rank r's rows are global rows r·n .. r·n+n-1)."""
    x_all, y_all = gather_with_grad(x), gather_with_grad(y)
    if x_all.shape[0] < 2:
        raise ValueError("iSogCLR/TempNet need a global batch of >= 2 pairs (an anchor needs a negative)")
    sim_a = x @ y_all.T
    # One process: side b's rows are side a's matrix transposed, no second matmul (LibAUC does the same).
    sim_b = sim_a.T if x_all.shape[0] == x.shape[0] else y @ x_all.T
    positives = torch.arange(x.shape[0], device=x.device) + global_row_offset(x.shape[0])
    col = positives[:, None]
    return PairDifferences(
        a=sim_a - sim_a.gather(1, col),
        b=sim_b - sim_b.gather(1, col),
        positives=positives,
    )


@dataclass
class DROStats:
    """What one step of the DRO estimator yields for a set of anchors (all detached)."""

    weights: torch.Tensor  # [n, B] p_ij = exp(h_ij/τ_i)/s_i on negatives, 0 on the positive
    b: torch.Tensor  # [n] new running max of h/τ
    s: torch.Tensor  # [n] new moving average, stored stabilised: s·exp(-b)
    grad_tau: torch.Tensor  # [n] estimate of ∂F/∂τ_i


def dro_statistics(
    h: torch.Tensor,
    tau: torch.Tensor,
    positives: torch.Tensor,
    prev_b: torch.Tensor,
    prev_s: torch.Tensor,
    first_visit: torch.Tensor,
    gamma: float,
    rho: float,
) -> DROStats:
    """One moving-average step of s and the temperature gradient, stabilised by a running max b.

    With z = h/τ and b' = max(b, max_j z_ij), storing S = s·exp(-b) keeps every exp() argument <= 0:
      S' = (1-γ) S exp(b - b') + γ mean_neg exp(z - b')      [= s'·exp(-b'), since s·exp(-b') = S exp(b-b')]
      p  = exp(z - b') / S'                                  [= exp(z)/s']
    Differentiating τ log E exp(h/τ) + τρ in τ (with E exp(h/τ) estimated by s'):
      ∂τ = log s' + ρ - mean_neg p·z,  and log s' = log S' + b'.
    """
    z = (h / tau[:, None]).detach()
    b = torch.maximum(prev_b, z.max(dim=1).values)
    negatives = torch.ones_like(z).scatter_(1, positives[:, None], 0.0)
    exp_z = torch.exp(z - b[:, None]) * negatives
    num_neg = z.shape[1] - 1
    g = exp_z.sum(dim=1) / num_neg
    gamma_i = torch.where(first_visit, torch.ones_like(g), torch.full_like(g, gamma))
    s = ((1.0 - gamma_i) * prev_s * torch.exp(prev_b - b) + gamma_i * g).clamp_min(S_FLOOR)
    weights = exp_z / s[:, None]
    grad_tau = torch.log(s) + b + rho - (weights * z).sum(dim=1) / num_neg
    return DROStats(weights=weights, b=b, s=s, grad_tau=grad_tau)


def weighted_surrogate(stats: DROStats, h: torch.Tensor) -> torch.Tensor:
    """mean_i Σ_j stopgrad(p_ij) h_ij: its gradient is the DRO gradient of the log-E-exp term (× (B-1))."""
    return (stats.weights * h).sum(dim=1).mean()


@contextmanager
def full_precision(x: torch.Tensor) -> Iterator[None]:
    """No autocast: h/τ with τ ~ 0.01 amplifies bf16's ~4e-3 rounding of <x, y> into O(1) errors in exp()."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        yield


def promote(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))
