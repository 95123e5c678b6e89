"""iSogCLR: the robust global contrastive loss with a learned temperature per sample (Qiu et al., ICML 2023).

Objective (DESIGN.md §2), with h_i(t) = <x_i, t> - <x_i, t_i> for image anchors and symmetrically for text:

    F = (1/n) Σ_i [(τ_i + τ'_i)ρ + τ_i log E_{t∈neg} exp(h_i(t)/τ_i) + τ'_i log E_{x∈neg} exp(h_i(x)/τ'_i)]

Per anchor and step (`dro_statistics`): g_i = mean_neg exp(h/τ_i); s_i ← (1-γ)s_i + γ g_i (s_i = g_i on the
sample's first visit); weights p_ij = exp(h_ij/τ_i)/s_i; ∂τ_i = log s_i + ρ - mean_neg p_ij h_ij/τ_i;
momentum u_i ← (1-β)u_i + β ∂τ_i; τ_i ← clamp(τ_i - η u_i, τ_min, τ_max). The model's gradient comes from the
surrogate Σ_j stopgrad(p_ij) h_ij.

Reference: LibAUC 2.0.1 `libauc/losses/contrastive.py::GCLoss_v2(temperature_scheme='individual_learnable',
gamma_schedule='constant')`. The loss values, feature gradients, s/b state and τ updates match it (tested).
Details where LibAUC differs from DESIGN.md, and which we follow:
  * the returned value is LibAUC's ½[mean_i Σ_j p_ij h_ij (image) + mean_i Σ_j p'_ij h'_ij (text)]: a sum
    over negatives and a ½, so its gradient is (B-1)/2 times the gradient of DESIGN's mean_i mean_z surrogate
    (and of F at s = g). The value itself is a surrogate, not F; `metrics()["robust_objective"]` estimates F.
  * s is stored stabilised as s·exp(-b) with b a per-sample running max of h/τ taken over *all* columns,
    the positive one (h = 0) included, so b >= 0. LibAUC's `u1/u2` = our `s_image/s_text`, `b1/b2` = `b_*`,
    `grad_tau_img/txt` = our momentum `u_*`, `learnable_tau_*` = `tau_*`.
One deliberate difference: "first visit" is decided per sample (a visit counter), as DESIGN states. LibAUC
decides it per batch (γ = 1 only if *every* index in the batch is unseen), which equals the per-sample rule
under its epoch-permutation sampling (epoch 0 = all unseen, later epochs = all seen) but not for a stream
that mixes seen and unseen samples in one batch; there LibAUC would use s = γ·g for the unseen ones.

Distributed convention (as LibAUC and open_clip): features are gathered with gradient, each rank computes its
*local* anchor rows against *all* gathered columns, and the returned value is the mean over local rows. The
all_gather backward sums column gradients across ranks, so after DDP averages gradients over W ranks the
result is exactly the single-process gradient on the global batch, and the mean of the ranks' loss values is
the single-process value. The per-row state (s, b, τ, u) of the local rows is then all-gathered (B×8 floats)
and every rank writes all of it, so the tables stay bit-identical across ranks without recomputing B×B.
Duplicate indices inside one global batch each read the pre-batch state; the last occurrence's update is kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from omegaconf import MISSING
from torch import nn

from mmembed.losses.base import LOSSES, LossContext, PairLoss
from mmembed.losses.distributed import gather_no_grad, gather_with_grad, global_row_offset

# Floor of s (LibAUC's eps): an anchor whose negatives all underflow gets zero weights instead of 0/0.
S_FLOOR = 1e-20
SIDES = ("image", "text")


# ---------------------------------------------------------------------------------------------------------
# Pure math shared with TempNet
# ---------------------------------------------------------------------------------------------------------
@dataclass
class PairDifferences:
    """h for this rank's anchors against every gathered candidate, with autograd to the features."""

    image: torch.Tensor  # [n_local, B]: h_i(t_j) = <x_i, y_j> - <x_i, y_i>
    text: torch.Tensor  # [n_local, B]: h_i(x_j) = <y_i, x_j> - <y_i, x_i>
    positives: torch.Tensor  # [n_local]: global column of each local row's own pair

    @property
    def num_negatives(self) -> int:
        return self.image.shape[1] - 1


def pair_differences(x: torch.Tensor, y: torch.Tensor) -> PairDifferences:
    """Local rows against all ranks' columns (rank r's rows are global rows r·n .. r·n+n-1)."""
    x_all, y_all = gather_with_grad(x), gather_with_grad(y)
    if x_all.shape[0] < 2:
        raise ValueError("iSogCLR/TempNet need a global batch of >= 2 pairs (an anchor needs a negative)")
    sim_image = x @ y_all.T
    # One process: the text rows are the image matrix transposed, no second matmul (LibAUC does the same).
    sim_text = sim_image.T if x_all.shape[0] == x.shape[0] else y @ x_all.T
    positives = torch.arange(x.shape[0], device=x.device) + global_row_offset(x.shape[0])
    col = positives[:, None]
    return PairDifferences(
        image=sim_image - sim_image.gather(1, col),
        text=sim_text - sim_text.gather(1, col),
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


def last_occurrence(index: torch.Tensor) -> torch.Tensor:
    """Position of the last occurrence of each distinct value: a deterministic winner for duplicate writes."""
    unique, inverse = torch.unique(index, return_inverse=True)
    positions = torch.arange(index.numel(), device=index.device)
    last = torch.full((unique.numel(),), -1, dtype=positions.dtype, device=index.device)
    return last.scatter_reduce_(0, inverse, positions, reduce="amax")


@contextmanager
def full_precision(x: torch.Tensor) -> Iterator[None]:
    """No autocast: h/τ with τ ~ 0.01 amplifies bf16's ~4e-3 rounding of <x, y> into O(1) errors in exp()."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        yield


def promote(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


# ---------------------------------------------------------------------------------------------------------
# Per-sample state and the shared module plumbing
# ---------------------------------------------------------------------------------------------------------
class SampleTable(nn.Module):
    """Float tables of length `num_samples` indexed by dataset index, plus a visit counter (all buffers).

    Buffers are part of state_dict, so checkpoints carry them. `write` all-gathers the local rows and every
    rank applies all of them, which keeps the tables identical across ranks.
    """

    def __init__(self, num_samples: int, initial: dict[str, float]) -> None:
        super().__init__()
        self.names = tuple(initial)
        for name, value in initial.items():
            self.register_buffer(name, torch.full((num_samples,), float(value)))
        self.register_buffer("visits", torch.zeros(num_samples, dtype=torch.long))

    def table(self, name: str) -> torch.Tensor:
        return getattr(self, name)

    def read(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: self.table(name)[index] for name in self.names}

    def first_visit(self, index: torch.Tensor) -> torch.Tensor:
        return self.visits[index] == 0

    @torch.no_grad()
    def write(self, index: torch.Tensor, rows: dict[str, torch.Tensor]) -> None:
        """Store every rank's `rows` (name -> [n_local]) at their gathered indices; count the visits."""
        names = list(rows)
        packed = gather_no_grad(torch.stack([rows[n].to(self.table(n).dtype) for n in names], dim=1))
        index_all = gather_no_grad(index)
        keep = last_occurrence(index_all)
        for column, name in enumerate(names):
            self.table(name)[index_all[keep]] = packed[keep, column]
        self.visits.index_put_((index_all,), torch.ones_like(index_all), accumulate=True)


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


def _index_from_context(who: str, ctx: LossContext, device: torch.device) -> torch.Tensor:
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
        return self.terms(x, y, _index_from_context(type(self).__name__, ctx, x.device))

    def terms(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def summarize(prefix: str, values: torch.Tensor) -> dict[str, float]:
    """mean/std/min/max of `values` as '<prefix>_<stat>' floats, for logging."""
    return {f"{prefix}_mean": float(values.mean()), f"{prefix}_std": float(values.std(correction=0)),
            f"{prefix}_min": float(values.min()), f"{prefix}_max": float(values.max())}


def check_range(who: str, name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"{who}: {name}={value} must lie in [{low}, {high}]")


# ---------------------------------------------------------------------------------------------------------
# iSogCLR
# ---------------------------------------------------------------------------------------------------------
@dataclass
class ISogCLRConfig:
    """Recipe args of the `isogclr` loss; defaults are LibAUC GCLoss_v2's."""

    num_samples: int = MISSING  # dataset size: the per-sample tables are this long
    tau_init: float = 0.01
    tau_min: float = 0.005
    tau_max: float = 0.05
    rho: float = 6.0
    gamma: float = 0.9
    eta: float = 0.01
    beta: float = 0.9


def _validate(cfg: ISogCLRConfig) -> None:
    who = "isogclr"
    if cfg.num_samples < 1:
        raise ValueError(f"{who}: num_samples must be >= 1, got {cfg.num_samples}")
    check_range(who, "tau_min", cfg.tau_min, 1e-6, cfg.tau_max)
    check_range(who, "tau_init", cfg.tau_init, cfg.tau_min, cfg.tau_max)
    check_range(who, "gamma", cfg.gamma, 1e-6, 1.0)
    check_range(who, "beta", cfg.beta, 0.0, 1.0)
    check_range(who, "eta", cfg.eta, 0.0, float("inf"))


@dataclass
class TemperatureTables:
    """Detached copies of the learned temperatures and visit counts, for a τ-vs-frequency histogram."""

    tau_image: torch.Tensor
    tau_text: torch.Tensor
    visits: torch.Tensor


@LOSSES.register("isogclr", ISogCLRConfig)
class ISogCLRLoss(IndexedPairLoss):
    """iSogCLR with per-sample τ (image anchors) and τ' (text anchors); see the module docstring.

    Direct use: `ISogCLRLoss(num_samples, tau_init=..., ...)`. The registry builds it from a recipe as
    `ISogCLRLoss(ISogCLRConfig(...))`; a config passed first is the whole configuration.
    """

    def __init__(self, num_samples: int | ISogCLRConfig, tau_init: float = 0.01, tau_min: float = 0.005,
                 tau_max: float = 0.05, rho: float = 6.0, gamma: float = 0.9, eta: float = 0.01,
                 beta: float = 0.9) -> None:
        super().__init__()
        cfg = num_samples if isinstance(num_samples, ISogCLRConfig) else ISogCLRConfig(
            num_samples, tau_init, tau_min, tau_max, rho, gamma, eta, beta)
        _validate(cfg)
        self.config = cfg
        # τ starts at tau_init; s, b and the momentum u at 0 (a first visit uses γ = 1, so s = 0 drops out).
        initial = {f"{k}_{side}": cfg.tau_init if k == "tau" else 0.0
                   for side in SIDES for k in ("tau", "s", "b", "u")}
        self.state = SampleTable(cfg.num_samples, initial)
        self._objective: torch.Tensor | None = None

    def terms(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.config
        check_inputs("isogclr", x, y, index, cfg.num_samples)
        with full_precision(x):
            index = index.to(device=x.device, dtype=torch.long)
            diffs = pair_differences(promote(x), promote(y))
            prev = self.state.read(index)
            first = self.state.first_visit(index)
            stats = {side: dro_statistics(getattr(diffs, side), prev[f"tau_{side}"], diffs.positives,
                                          prev[f"b_{side}"], prev[f"s_{side}"], first, cfg.gamma, cfg.rho)
                     for side in SIDES}
            loss = 0.5 * sum(weighted_surrogate(stats[side], getattr(diffs, side)) for side in SIDES)
            # F's batch estimate: Σ_sides mean_i τ_i (log s_i + ρ), with log s = log(s·exp(-b)) + b.
            self._objective = sum((prev[f"tau_{side}"] * (stats[side].s.log() + stats[side].b + cfg.rho))
                                  .mean() for side in SIDES).detach()
            if self.training:
                self.state.write(index, self._new_rows(prev, stats))
        return {"loss": loss}

    def _new_rows(self, prev: dict[str, torch.Tensor], stats: dict[str, DROStats]) -> dict[str, torch.Tensor]:
        """τ step: momentum u ← (1-β)u + β ∂τ, then projected descent τ ← clamp(τ - η u, τ_min, τ_max)."""
        cfg, rows = self.config, {}
        for side in SIDES:
            u = (1.0 - cfg.beta) * prev[f"u_{side}"] + cfg.beta * stats[side].grad_tau
            tau = (prev[f"tau_{side}"] - cfg.eta * u).clamp(cfg.tau_min, cfg.tau_max)
            rows.update({f"tau_{side}": tau, f"u_{side}": u, f"s_{side}": stats[side].s,
                         f"b_{side}": stats[side].b})
        return rows

    def temperatures(self) -> TemperatureTables:
        return TemperatureTables(self.state.tau_image.detach().clone(), self.state.tau_text.detach().clone(),
                                 self.state.visits.detach().clone())

    @torch.no_grad()
    def metrics(self) -> dict[str, float]:
        """τ statistics over the samples seen so far (all samples before the first step)."""
        seen = self.state.visits > 0
        out: dict[str, float] = {"seen_fraction": float(seen.float().mean())}
        for side in SIDES:
            tau = self.state.table(f"tau_{side}")
            out.update(summarize(f"tau_{side}", tau[seen] if bool(seen.any()) else tau))
        if self._objective is not None:
            out["robust_objective"] = float(self._objective)
        return out


