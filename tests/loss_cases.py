"""One table of test cases per registered loss (no tests here): recipe args, the batch context it needs, and a
naive float64 transcription of its paper's formula. The registry-wide reference and 2-process tests run every
case; `test_every_registered_loss_has_cases` fails until a new loss adds itself here."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from test_losses_isogclr import naive_side, naive_surrogate
from test_losses_reference import naive_cwcl, naive_infonce, naive_kd, naive_siglip

from mmembed.losses import LOSSES, LossContext, PairLoss

B, D, N = 8, 6, 16
A, BSIDE = "image", "text"
TEACHER_DIMS, TEACHER_SCALES = [4, 3], [50.0, 20.0]

# reference(module, x, y, scale, bias, data) -> float64 scalar: the sum of the loss's terms on the full batch.
Reference = Callable[[PairLoss, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict], torch.Tensor]


@dataclass(frozen=True)
class LossCase:
    loss: str
    args: dict[str, Any] = field(default_factory=dict)
    reference: Reference | None = None
    uses_bias: bool = False

    @property
    def id(self) -> str:
        return self.loss + "".join(f"-{k}={v}" for k, v in self.args.items() if k in ("tile_size", "direction",
                                                                                      "anchor"))


@contextmanager
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build(case: LossCase) -> PairLoss:
    """The registered loss in float64 (stateful tables included), parameters seeded identically everywhere."""
    torch.manual_seed(0)
    with float64_default():
        return LOSSES.build(case.loss, case.args)


def make_data() -> dict[str, torch.Tensor]:
    """Full-batch float64 inputs: embeddings, frozen tower features, stored teachers, dataset indices."""
    gen = torch.Generator().manual_seed(0)
    unit = lambda *shape: F.normalize(torch.randn(*shape, generator=gen, dtype=torch.float64), dim=-1)
    x = unit(B, D)
    return {"x": x, "y": F.normalize(x + 0.8 * unit(B, D), dim=-1),
            "features_a": torch.randn(B, 5, generator=gen, dtype=torch.float64),
            "features_b": torch.randn(B, 5, generator=gen, dtype=torch.float64),
            "teacher_a": torch.randn(B, sum(TEACHER_DIMS), generator=gen, dtype=torch.float64),
            "teacher_b": torch.randn(B, sum(TEACHER_DIMS), generator=gen, dtype=torch.float64),
            "index": torch.randperm(N, generator=gen)[:B]}


def context(data: dict[str, torch.Tensor], rows: slice) -> LossContext:
    batch = {"index": data["index"][rows],
             "teacher": {A: data["teacher_a"][rows], BSIDE: data["teacher_b"][rows]}}
    features = {A: data["features_a"][rows], BSIDE: data["features_b"][rows]}
    return LossContext(a=A, b=BSIDE, batch=batch, features=features)


def run_module(module: PairLoss, case: LossCase, data: dict, leaves: list[torch.Tensor],
               rows: slice) -> torch.Tensor:
    x, y, scale, bias = leaves
    terms = module(x[rows], y[rows], scale, bias if case.uses_bias else None, context(data, rows))
    return torch.stack(list(terms.values())).sum()


# -- references ------------------------------------------------------------------------------------------
def _infonce(module, x, y, s, b, data):
    return naive_infonce(x, y, s)


def _siglip(module, x, y, s, b, data):
    return naive_siglip(x, y, s, b)


def _cwcl(module, x, y, s, b, data):
    cfg = module.config
    anchor_is_a = cfg.anchor == A
    p, q = (x, y) if anchor_is_a else (y, x)
    return naive_cwcl(p, q, _as_module_sees(data["features_a" if anchor_is_a else "features_b"]), s, cfg.direction)


def _as_module_sees(values: torch.Tensor) -> torch.Tensor:
    """Frozen features and stored teachers are normalised in float32 by design (they arrive as fp16/fp32)."""
    return F.normalize(values.float(), dim=-1).double()


def _split(teacher: torch.Tensor) -> list[torch.Tensor]:
    return [_as_module_sees(part) for part in teacher.split(TEACHER_DIMS, dim=1)]


def _distill(module, x, y, s, b, data):
    lam = module.config.lam
    kd = naive_kd(x, y, s, _split(data["teacher_a"]), _split(data["teacher_b"]), TEACHER_SCALES)
    return (1 - lam) * naive_infonce(x, y, s) + lam * kd


def _first_visit_surrogates(x, y, tau_a, tau_b, rho):
    """Σ over both anchor sides of LibAUC's surrogate at s = g (every index seen for the first time)."""
    sides = []
    for sim, tau in ((x @ y.T, tau_a), (y @ x.T, tau_b)):
        _, g = naive_side(sim.detach(), tau.detach(), rho)
        sides.append(naive_surrogate(sim, tau.detach(), [gi.detach() for gi in g]))
    return sides


def _isogclr(module, x, y, s, b, data):
    cfg = module.config
    tau = torch.full((B,), cfg.tau_init, dtype=torch.float64)
    return 0.5 * sum(_first_visit_surrogates(x, y, tau, tau, cfg.rho))


def _tempnet(module, x, y, s, b, data):
    """'loss' = Σ_sides mean_i mean_neg p h; 'temperature' = Σ_sides mean_i (∂F_i/∂τ_i) τ_i (value only:
    the networks see detached embeddings, so it adds no embedding gradient)."""
    cfg = module.config
    with torch.no_grad():
        tau = {A: module.predict_tau("a", x), BSIDE: module.predict_tau("b", y)}
    loss = sum(_first_visit_surrogates(x, y, tau[A], tau[BSIDE], cfg.rho)) / (B - 1)
    temperature = 0.0
    for sim, t in (((x @ y.T).detach(), tau[A]), ((y @ x.T).detach(), tau[BSIDE])):
        leaf = t.clone().requires_grad_(True)
        grad_tau, = torch.autograd.grad(naive_side(sim, leaf, cfg.rho)[0], leaf)
        temperature = temperature + (grad_tau * t).mean()
    return loss + temperature


DISTILL = {"lam": 0.7, "teacher_dims": TEACHER_DIMS, "teacher_scales": TEACHER_SCALES}
LOSS_CASES: dict[str, list[LossCase]] = {
    "infonce": [LossCase("infonce", {}, _infonce), LossCase("infonce", {"tile_size": 3}, _infonce)],
    "siglip": [LossCase("siglip", {}, _siglip, uses_bias=True)],
    "cwcl": [LossCase("cwcl", {"anchor": BSIDE, "direction": "u2v"}, _cwcl),
             LossCase("cwcl", {"anchor": A, "direction": "both", "tile_size": 3}, _cwcl),
             LossCase("cwcl", {"anchor": BSIDE, "direction": "v2u", "tile_size": 3}, _cwcl)],
    "distill": [LossCase("distill", DISTILL, _distill), LossCase("distill", {**DISTILL, "tile_size": 3}, _distill)],
    "isogclr": [LossCase("isogclr", {"num_samples": N, "tau_init": 0.03}, _isogclr)],
    "tempnet": [LossCase("tempnet", {"embed_dim": D, "num_samples": N, "num_prototypes": 8, "dropout": 0.0},
                         _tempnet)],
}
ALL_CASES = [case for cases in LOSS_CASES.values() for case in cases]
