"""iSogCLR: the robust global contrastive loss with a learned temperature per sample (Qiu et al., ICML 2023).

For a pair (a, b) with embeddings x (side a) and y (side b), h_i(y) = <x_i, y> - <x_i, y_i> for anchors of side
a and symmetrically for side b; each sample has its own τ_i (as an anchor of side a) and τ'_i (side b):

    F = (1/n) Σ_i [(τ_i + τ'_i)ρ + τ_i log E_{y∈neg} exp(h_i(y)/τ_i) + τ'_i log E_{x∈neg} exp(h_i(x)/τ'_i)]

One step (mmembed.losses.dro): g_i = mean_neg exp(h/τ_i); s_i ← (1-γ)s_i + γ g_i (s_i = g_i on the sample's
first visit); p_ij = exp(h_ij/τ_i)/s_i; ∂τ_i = log s_i + ρ - mean_neg p_ij h_ij/τ_i; momentum
u_i ← (1-β)u_i + β ∂τ_i; τ_i ← clamp(τ_i - η u_i, τ_min, τ_max). The embeddings' gradient comes from the
surrogate Σ_j stopgrad(p_ij) h_ij.

Reference: LibAUC 2.0.1 `GCLoss_v2(temperature_scheme='individual_learnable', gamma_schedule='constant')`;
values, feature gradients, s/b state and τ updates match it (tested). Where LibAUC and the paper's
presentation differ, the choices (LibAUC's surrogate scale, the stabilised s, first visit per sample, the
distributed convention) are written down in docs/design.md ("Robust contrastive losses").
Naming: LibAUC's `u1/u2` = our `s_a/s_b`, `b1/b2` = `b_a/b_b`, `grad_tau_img/txt` = `u_a/u_b`,
`learnable_tau_img/txt` = `tau_a/tau_b` (side a is the pair's first modality, e.g. image).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from omegaconf import MISSING

from mmembed.losses.base import LOSSES
from mmembed.losses.dro import SIDES, DROStats, dro_statistics, full_precision, pair_differences, promote
from mmembed.losses.dro import weighted_surrogate as _surrogate
from mmembed.losses.indexed import IndexedPairLoss, check_inputs, check_range, summarize
from mmembed.losses.sample_table import SampleTable

# The per-sample tables: τ, the moving average s (stabilised), its running max b and τ's momentum u, per side.
TABLES = ("tau", "s", "b", "u")


@dataclass
class ISogCLRConfig:
    """Recipe args of the `isogclr` loss; defaults are LibAUC GCLoss_v2's."""

    num_samples: int = MISSING  # dataset size (filled from sizes.json by the recipe): tables are this long
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
class ISogCLRStep:
    """One batch of iSogCLR: the loss, the new state of the batch's rows, and the batch estimate of F."""

    loss: torch.Tensor
    rows: dict[str, torch.Tensor]  # '<table>_<side>' -> [n_local]
    objective: torch.Tensor


def isogclr_step(x: torch.Tensor, y: torch.Tensor, prev: Mapping[str, torch.Tensor], first_visit: torch.Tensor,
                 cfg: ISogCLRConfig) -> ISogCLRStep:
    """The functional form: iSogCLR on this rank's rows given their previous state `prev` ('<table>_<side>' ->
    [n_local], as SampleTable.read returns it). Pure: nothing is stored; the caller writes `rows` back."""
    with full_precision(x):
        diffs = pair_differences(promote(x), promote(y))
        stats = {side: dro_statistics(getattr(diffs, side), prev[f"tau_{side}"], diffs.positives,
                                      prev[f"b_{side}"], prev[f"s_{side}"], first_visit, cfg.gamma, cfg.rho)
                 for side in SIDES}
        loss = 0.5 * sum(_surrogate(stats[side], getattr(diffs, side)) for side in SIDES)
        # F's batch estimate: Σ_sides mean_i τ_i (log s_i + ρ), with log s = log(s·exp(-b)) + b.
        objective = sum((prev[f"tau_{side}"] * (stats[side].s.log() + stats[side].b + cfg.rho)).mean()
                        for side in SIDES).detach()
        return ISogCLRStep(loss, _new_rows(prev, stats, cfg), objective)


def _new_rows(prev: Mapping[str, torch.Tensor], stats: dict[str, DROStats],
              cfg: ISogCLRConfig) -> dict[str, torch.Tensor]:
    """τ step: momentum u ← (1-β)u + β ∂τ, then projected descent τ ← clamp(τ - η u, τ_min, τ_max)."""
    rows = {}
    for side in SIDES:
        u = (1.0 - cfg.beta) * prev[f"u_{side}"] + cfg.beta * stats[side].grad_tau
        tau = (prev[f"tau_{side}"] - cfg.eta * u).clamp(cfg.tau_min, cfg.tau_max)
        rows.update({f"tau_{side}": tau, f"u_{side}": u, f"s_{side}": stats[side].s, f"b_{side}": stats[side].b})
    return rows


@dataclass
class TemperatureTables:
    """Detached copies of the learned temperatures (per side) and visit counts, for a τ histogram."""

    tau_a: torch.Tensor
    tau_b: torch.Tensor
    visits: torch.Tensor


@LOSSES.register("isogclr", ISogCLRConfig)
class ISogCLRLoss(IndexedPairLoss):
    """iSogCLR with per-sample τ for both anchor sides of the pair; see the module docstring.

    `ISogCLRLoss(ISogCLRConfig(num_samples=N, ...))`; recipes build it through the registry.
    """

    derived_args = ("num_samples",)

    def __init__(self, config: ISogCLRConfig) -> None:
        super().__init__()
        if not isinstance(config, ISogCLRConfig):
            raise TypeError(f"ISogCLRLoss takes an ISogCLRConfig, got {type(config).__name__}")
        _validate(config)
        self.config = config
        # τ starts at tau_init; s, b and the momentum u at 0 (a first visit uses γ = 1, so s = 0 drops out).
        initial = {f"{k}_{side}": config.tau_init if k == "tau" else 0.0 for side in SIDES for k in TABLES}
        self.state = SampleTable(config.num_samples, initial)
        self._objective: torch.Tensor | None = None

    def terms(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> dict[str, torch.Tensor]:
        check_inputs("isogclr", x, y, index, self.config.num_samples)
        index = index.to(device=x.device, dtype=torch.long)
        step = isogclr_step(x, y, self.state.read(index), self.state.first_visit(index), self.config)
        self._objective = step.objective
        if self.training:
            self.state.write(index, step.rows)
        return {"loss": step.loss}

    def temperatures(self) -> TemperatureTables:
        return TemperatureTables(self.state.tau_a.detach().clone(), self.state.tau_b.detach().clone(),
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
