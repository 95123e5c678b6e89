"""TempNet: τ range, gradient routing, a naive float64 check of both terms, toy training, 2-rank gloo runs."""

from __future__ import annotations

import pytest
import torch
from dist_utils import run_distributed
from test_losses_isogclr import default_dtype, naive_side, pair_batch

from mmembed.losses.base import LOSSES, LossContext
from mmembed.losses.tempnet import TempNetConfig, TempNetLoss

N, B, D = 24, 8, 16


def tempnet64(seed: int = 0, **overrides) -> TempNetLoss:
    """Float64 loss, dropout off so τ is deterministic."""
    torch.manual_seed(seed)
    with default_dtype(torch.float64):
        return TempNetLoss(TempNetConfig(embed_dim=D, num_samples=N, num_prototypes=32, dropout=0.0,
                                         **overrides))


def leaves(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = pair_batch(seed)
    return x.requires_grad_(True), y.requires_grad_(True)


def test_predicted_tau_stays_in_range() -> None:
    loss_fn = tempnet64(tau_min=0.01, tau_max=0.04)
    wild = torch.randn(64, D, dtype=torch.float64) * 100
    for side in ("a", "b"):
        tau = loss_fn.predict_tau(side, wild)
        assert tau.shape == (64,) and (tau >= 0.01).all() and (tau <= 0.04).all()
    readout = loss_fn.tau_nets["a"].readout
    with torch.no_grad():  # saturate the output sigmoid both ways: the ends are reached, never crossed
        readout.bias.fill_(1e3)
        assert torch.allclose(loss_fn.predict_tau("a", wild), torch.tensor(0.04, dtype=torch.float64))
        readout.bias.fill_(-1e3)
        assert torch.allclose(loss_fn.predict_tau("a", wild), torch.tensor(0.01, dtype=torch.float64))


def test_gradients_reach_the_network_but_not_the_embeddings_through_tau() -> None:
    loss_fn = tempnet64()
    x, y = leaves(0)
    terms = loss_fn(x, y, torch.tensor(1.0), None, LossContext("image", "text", {"index": torch.arange(B)}))
    assert set(terms) == {"loss", "temperature"}
    terms["temperature"].backward(retain_graph=True)
    assert x.grad is None and y.grad is None
    for name, param in loss_fn.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    loss_fn.zero_grad(set_to_none=True)
    terms["loss"].backward()
    assert all(p.grad is None for p in loss_fn.parameters())
    assert x.grad.abs().sum() > 0 and y.grad.abs().sum() > 0


def test_both_terms_match_the_naive_objective() -> None:
    """First visit (s = g): ∇_features "loss" = ∇_features F at fixed τ; ∇_θ "temperature" = ∇_θ F(τ(θ))."""
    rho = 8.0
    loss_fn = tempnet64(rho=rho)
    x, y = leaves(3)
    terms = loss_fn.terms(x, y, torch.arange(5, 5 + B))
    (terms["loss"] + terms["temperature"]).backward()
    ours = {n: p.grad.clone() for n, p in loss_fn.named_parameters()}

    loss_fn.zero_grad(set_to_none=True)
    xs, ys = x.detach().clone().requires_grad_(True), y.detach().clone().requires_grad_(True)
    tau_i, tau_t = loss_fn.predict_tau("a", xs), loss_fn.predict_tau("b", ys)
    # Features see τ as a constant; the networks see the features as constants.
    f_fixed_tau = (naive_side(xs @ ys.T, tau_i.detach(), rho)[0]
                   + naive_side(ys @ xs.T, tau_t.detach(), rho)[0])
    f_fixed_feat = (naive_side((xs @ ys.T).detach(), tau_i, rho)[0]
                    + naive_side((ys @ xs.T).detach(), tau_t, rho)[0])
    ((f_fixed_tau + f_fixed_feat) / B).backward()
    torch.testing.assert_close(x.grad, xs.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(y.grad, ys.grad, rtol=1e-9, atol=1e-12)
    for name, param in loss_fn.named_parameters():
        torch.testing.assert_close(ours[name], param.grad, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize(("rho", "direction"), [(0.0, 1.0), (50.0, -1.0)], ids=["rho0_up", "rho50_down"])
def test_toy_training_moves_tau_the_way_the_dro_gradient_says(rho: float, direction: float) -> None:
    """∂F/∂τ = log s + ρ - E_p[h/τ] is <= ρ (Jensen), so ρ = 0 pushes τ up and a large ρ pushes it down."""
    loss_fn = tempnet64(rho=rho)
    x, y = pair_batch(4)
    optimizer = torch.optim.Adam(loss_fn.parameters(), lr=1e-2)
    before = loss_fn.predict_tau("a", x).mean().item()
    for _ in range(5):
        optimizer.zero_grad()
        terms = loss_fn.terms(x, y, torch.arange(B))
        (terms["loss"] + terms["temperature"]).backward()
        optimizer.step()
    after = loss_fn.predict_tau("a", x).mean().item()
    assert direction * (after - before) > 1e-4, (before, after)
    assert loss_fn.state.visits[:B].eq(5).all()


def test_registry_state_dict_and_metrics() -> None:
    loss_fn = LOSSES.build("tempnet", {"embed_dim": D, "num_samples": N})
    assert isinstance(loss_fn, TempNetLoss) and loss_fn.config.num_prototypes == 256
    x, y = (t.float() for t in pair_batch(0))
    value = loss_fn(x, y, torch.arange(B))
    assert value.ndim == 0 and torch.isfinite(value)
    tables = {f"state.{k}_{s}" for k in ("s", "b") for s in ("a", "b")} | {"state.visits"}
    assert tables <= set(loss_fn.state_dict())
    metrics = loss_fn.metrics()
    assert 0.005 <= metrics["tau_b_min"] <= metrics["tau_b_mean"] <= metrics["tau_b_max"] <= 0.05
    with pytest.raises(ValueError, match="dropout"):
        TempNetLoss(TempNetConfig(embed_dim=D, num_samples=N, dropout=1.0))


# ---------------------------------------------------------------------------------------------------------
# Distributed: 2 gloo ranks with half the batch each == one process with the whole batch
# ---------------------------------------------------------------------------------------------------------
STEPS = 3


def step_index(step: int) -> torch.Tensor:
    return [torch.arange(B), torch.arange(B).flip(0), torch.arange(B, 2 * B)][step]


def _rank_run(rank: int, world: int) -> dict:
    loss_fn = tempnet64()
    rows = slice(rank * B // world, (rank + 1) * B // world)
    out: dict = {"loss": [], "temperature": [], "gx": [], "gy": [], "params": []}
    for step in range(STEPS):
        x, y = (t[rows].clone().requires_grad_(True) for t in pair_batch(step))
        loss_fn.zero_grad(set_to_none=True)
        terms = loss_fn.terms(x, y, step_index(step)[rows])
        (terms["loss"] + terms["temperature"]).backward()
        out["loss"].append(terms["loss"].detach())
        out["temperature"].append(terms["temperature"].detach())
        out["gx"].append(x.grad)
        out["gy"].append(y.grad)
        out["params"].append({n: p.grad.clone() for n, p in loss_fn.named_parameters()})
    out["state"] = {k: v.clone() for k, v in loss_fn.state_dict().items() if k.startswith("state.")}
    return out


def test_two_ranks_match_one_process() -> None:
    world = 2
    ranks = run_distributed(_rank_run, world)
    single = tempnet64()
    for step in range(STEPS):
        x, y = leaves(step)
        single.zero_grad(set_to_none=True)
        terms = single.terms(x, y, step_index(step))
        (terms["loss"] + terms["temperature"]).backward()
        for key in ("loss", "temperature"):
            averaged = sum(r[key][step] for r in ranks) / world
            torch.testing.assert_close(averaged, terms[key].detach(), rtol=1e-11, atol=1e-12)
        for key, grad in (("gx", x.grad), ("gy", y.grad)):
            torch.testing.assert_close(torch.cat([r[key][step] for r in ranks]) / world, grad, rtol=1e-10,
                                       atol=1e-12)
        for name, param in single.named_parameters():  # the trainer all-reduce-means these gradients
            averaged = sum(r["params"][step][name] for r in ranks) / world
            torch.testing.assert_close(averaged, param.grad, rtol=1e-10, atol=1e-12, msg=name)
    for name, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][name]), f"{name} differs across ranks"
        torch.testing.assert_close(value, single.state_dict()[name], rtol=1e-10, atol=1e-14)
