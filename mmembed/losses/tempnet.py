"""TempNet: iSogCLR's robust contrastive loss with τ predicted by a small network (arXiv 2404.04575).

Instead of a τ table, one network per anchor side maps the *detached* embedding to τ ∈ [τ_min, τ_max], so
it generalises to unseen samples. The per-sample moving average s (and its running max b) is kept exactly as
in iSogCLR (`mmembed.losses.dro.dro_statistics`); the DRO gradient ∂F/∂τ_i is pushed through the network
by the term mean_i stopgrad(∂τ_i)·τ_i(θ), whose gradient in the network weights θ is mean_i ∂τ_i ∂τ_i/∂θ.

Follows zhqiu/TempNet `Bimodal_CL/models/losses.py::iSogCLR_TempNet_Loss` and its `TempGenerator`:
  * "loss" = mean_i mean_neg p_ij h_ij (side-a anchors) + the same for side b (TempNet's scale; iSogCLR
    uses LibAUC's, which is (B-1)/2 times larger). The embeddings get gradient from this term only: τ enters
    it detached, and the network sees detached embeddings.
  * "temperature" = mean_i ∂τ_i τ_i + mean_i ∂τ'_i τ'_i. It only moves the network's parameters. TempNet
    trains with backward(clip_loss + temp_loss) too, with a separate, smaller learning rate for the network
    (3e-5 vs 2e-4 in its CC3M script): use the trainer's lr_multipliers rule on `objective.*tau_net`.
Defaults are TempNet's: 256 prototypes, dropout 0.5, τ ∈ [0.005, 0.05], γ = 0.8, ρ = 8.0.

Distributed: as iSogCLR (local anchor rows against gathered columns, mean over local rows, state rows
all-gathered and written on every rank). The network's gradient is a mean over local rows, so averaging it
over ranks (the trainer all-reduces the objective's parameter gradients) gives the single-process gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import nn

from mmembed.losses.base import LOSSES
from mmembed.losses.dro import SIDES, dro_statistics, full_precision, pair_differences, promote, weighted_surrogate
from mmembed.losses.indexed import IndexedPairLoss, check_inputs, check_range, summarize
from mmembed.losses.sample_table import SampleTable


class TemperatureNet(nn.Module):
    """Embedding -> τ ∈ [τ_min, τ_max], TempNet's TempGenerator design.

    A sigmoid feature is compared with M unit prototypes; the readout sees (softmax assignment - 1/M) times
    the sigmoid similarity, so a sample matching no prototype in particular sits at the middle of the range.
    The readout starts as a plain sum (weights 1, bias 0), as in TempNet.
    """

    def __init__(self, embed_dim: int, num_prototypes: int, tau_min: float, tau_max: float,
                 dropout: float) -> None:
        super().__init__()
        self.tau_min, self.tau_max = tau_min, tau_max
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.prototypes = nn.Parameter(torch.randn(num_prototypes, embed_dim))
        # Softmax temperature of the prototype assignment, learned in log space (init 0.01 as TempNet).
        self.log_assign_temp = nn.Parameter(torch.tensor(0.01).log())
        self.readout = nn.Linear(num_prototypes, 1)
        nn.init.ones_(self.readout.weight)
        nn.init.zeros_(self.readout.bias)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        feat = self.dropout(torch.sigmoid(self.proj(embedding.detach())))
        sims = feat @ F.normalize(self.prototypes, dim=1).T
        assign = torch.softmax(sims / self.log_assign_temp.exp(), dim=1)
        logit = self.readout((assign - 1.0 / sims.shape[1]) * torch.sigmoid(sims)).squeeze(1)
        return self.tau_min + (self.tau_max - self.tau_min) * torch.sigmoid(logit)


@dataclass
class TempNetConfig:
    """Recipe args of the `tempnet` loss."""

    embed_dim: int = MISSING  # the pair's embedding width (filled from model.embed_dim by the recipe)
    num_samples: int = MISSING  # dataset size (filled from sizes.json by the recipe): s / b tables are this long
    num_prototypes: int = 256
    dropout: float = 0.5
    tau_min: float = 0.005
    tau_max: float = 0.05
    rho: float = 8.0
    gamma: float = 0.8


def _validate(cfg: TempNetConfig) -> None:
    who = "tempnet"
    for name in ("embed_dim", "num_samples", "num_prototypes"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{who}: {name} must be >= 1, got {getattr(cfg, name)}")
    check_range(who, "tau_min", cfg.tau_min, 1e-6, cfg.tau_max)
    check_range(who, "gamma", cfg.gamma, 1e-6, 1.0)
    check_range(who, "dropout", cfg.dropout, 0.0, 1.0 - 1e-6)


@LOSSES.register("tempnet", TempNetConfig)
class TempNetLoss(IndexedPairLoss):
    """Robust contrastive loss with network-predicted τ; terms {"loss", "temperature"} (see module doc)."""

    derived_args = ("embed_dim", "num_samples")

    def __init__(self, config: TempNetConfig) -> None:
        super().__init__()
        _validate(config)
        self.config = config
        self.tau_nets = nn.ModuleDict({side: TemperatureNet(config.embed_dim, config.num_prototypes,
                                                            config.tau_min, config.tau_max, config.dropout)
                                       for side in SIDES})
        tables = {f"{k}_{side}": 0.0 for side in SIDES for k in ("s", "b")}
        self.state = SampleTable(config.num_samples, tables)
        self._last_tau: dict[str, torch.Tensor] = {}

    def predict_tau(self, side: str, embedding: torch.Tensor) -> torch.Tensor:
        """τ for anchors of `side` ("a" = the pair's first embedding, "b" = its second)."""
        if side not in self.tau_nets:
            raise KeyError(f"tempnet: side must be one of {list(self.tau_nets)}, got '{side}'")
        with full_precision(embedding):
            return self.tau_nets[side](promote(embedding))

    def terms(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.config
        check_inputs("tempnet", x, y, index, cfg.num_samples)
        with full_precision(x):
            index = index.to(device=x.device, dtype=torch.long)
            x, y = promote(x), promote(y)
            diffs = pair_differences(x, y)
            tau = {"a": self.tau_nets["a"](x), "b": self.tau_nets["b"](y)}
            prev = self.state.read(index)
            first = self.state.first_visit(index)
            stats = {side: dro_statistics(getattr(diffs, side), tau[side].detach(), diffs.positives,
                                          prev[f"b_{side}"], prev[f"s_{side}"], first, cfg.gamma, cfg.rho)
                     for side in SIDES}
            loss = sum(weighted_surrogate(stats[side], getattr(diffs, side)) for side in SIDES)
            temperature = sum((stats[side].grad_tau * tau[side]).mean() for side in SIDES)
            self._last_tau = {side: t.detach() for side, t in tau.items()}
            if self.training:
                self.state.write(index, {f"{k}_{side}": getattr(stats[side], k) for side in SIDES
                                         for k in ("s", "b")})
        return {"loss": loss / diffs.num_negatives, "temperature": temperature}

    @torch.no_grad()
    def metrics(self) -> dict[str, float]:
        """Statistics of the τ the networks predicted for the last batch's (local) anchors."""
        out: dict[str, float] = {}
        for side, tau in self._last_tau.items():
            out.update(summarize(f"tau_{side}", tau))
        return out


