"""iSogCLR: parity with LibAUC GCLoss_v2, a naive float64 version of the paper, and 2-rank gloo runs."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from dist_utils import run_distributed

from mmembed.losses.base import LOSSES, LossContext
from mmembed.losses.isogclr import ISogCLRConfig, ISogCLRLoss

N, B, D = 24, 8, 16


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Tables allocated under float64 hold tau_init exactly (float32 then .double() would round 0.01)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def isogclr(num_samples: int, **overrides) -> ISogCLRLoss:
    return ISogCLRLoss(ISogCLRConfig(num_samples=num_samples, **overrides))


def isogclr64(num_samples: int, **overrides) -> ISogCLRLoss:
    with default_dtype(torch.float64):
        return isogclr(num_samples, **overrides)


def load_libauc_contrastive() -> ModuleType:
    """libauc/losses/contrastive.py by file path: libauc.losses/__init__ imports modules with extra deps."""
    spec = importlib.util.find_spec("libauc")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("libauc is not installed (make setup installs libauc==2.0.1 with --no-deps)")
    path = Path(next(iter(spec.submodule_search_locations))) / "losses" / "contrastive.py"
    file_spec = importlib.util.spec_from_file_location("libauc_losses_contrastive", path)
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module


def pair_batch(seed: int, rows: int = B, dim: int = D) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit vectors where y_i correlates with x_i, so positives are closer than negatives (float64)."""
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(rows, dim, generator=g, dtype=torch.float64), dim=1)
    y = F.normalize(x + 0.8 * torch.randn(rows, dim, generator=g, dtype=torch.float64), dim=1)
    return x, y


def index_schedule() -> list[torch.Tensor]:
    """6 batches: two of unseen indices, then four drawn from the seen ones (repeats across batches)."""
    g = torch.Generator().manual_seed(123)
    seen = torch.arange(2 * B)
    return [torch.arange(B), torch.arange(B, 2 * B)] + [seen[torch.randperm(2 * B, generator=g)[:B]]
                                                        for _ in range(4)]


def run_step(loss_fn, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor):
    x, y = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    out = loss_fn(x, y, index)
    loss = out[0] if isinstance(out, tuple) else out
    loss.backward()
    return loss.detach(), x.grad, y.grad


@pytest.mark.parametrize("overrides", [{}, {"tau_init": 0.03, "eta": 1e-3}], ids=["defaults", "interior_tau"])
def test_matches_libauc_gcloss_v2_over_batches(overrides: dict) -> None:
    contrastive = load_libauc_contrastive()
    with default_dtype(torch.float64):  # LibAUC allocates its state with the default dtype
        ref = contrastive.GCLoss_v2(N=N, tau=overrides.get("tau_init", 0.01), eta=overrides.get("eta", 0.01),
                                    temperature_scheme="individual_learnable", gamma_schedule="constant")
    ours = isogclr64(N, **overrides)
    for step, index in enumerate(index_schedule()):
        x, y = pair_batch(step)
        ref_loss, ref_gx, ref_gy = run_step(ref, x, y, index)
        loss, gx, gy = run_step(ours, x, y, index)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gx, ref_gx, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(gy, ref_gy, rtol=1e-10, atol=1e-12)
        pairs = {"s_a": ref.u1, "s_b": ref.u2, "b_a": ref.b1, "b_b": ref.b2,
                 "u_a": ref.grad_tau_img, "u_b": ref.grad_tau_txt,
                 "tau_a": ref.learnable_tau_img, "tau_b": ref.learnable_tau_txt}
        for name, ref_table in pairs.items():
            torch.testing.assert_close(ours.state.table(name), ref_table.squeeze(1), rtol=1e-10, atol=1e-14,
                                       msg=lambda m, name=name, step=step: f"{name} at step {step}: {m}")
    if overrides:  # the comparison must cover τ values away from the clamps, not only τ_min / τ_max
        tau = ours.state.tau_a[: 2 * B]
        assert ((tau > 0.005 + 1e-6) & (tau < 0.05 - 1e-6)).float().mean() > 0.5


# ---------------------------------------------------------------------------------------------------------
# Naive float64 implementation of the paper (loops over anchors, autograd for every derivative)
# ---------------------------------------------------------------------------------------------------------
def naive_side(sim: torch.Tensor, tau: torch.Tensor, rho: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Σ_i [τ_i ρ + τ_i log mean_{j≠i} exp(h_ij/τ_i)] and the g_i, rows of `sim` being the anchors."""
    total, gs = sim.new_zeros(()), []
    for i in range(sim.shape[0]):
        h = torch.cat([sim[i, :i], sim[i, i + 1:]]) - sim[i, i]
        g = torch.exp(h / tau[i]).mean()
        gs.append(g)
        total = total + tau[i] * rho + tau[i] * torch.log(g)
    return total, gs


def naive_surrogate(sim: torch.Tensor, tau: torch.Tensor, s: list[torch.Tensor]) -> torch.Tensor:
    """LibAUC's value: mean_i Σ_{j≠i} stopgrad(exp(h_ij/τ_i)/s_i) h_ij."""
    total = sim.new_zeros(())
    for i in range(sim.shape[0]):
        h = torch.cat([sim[i, :i], sim[i, i + 1:]]) - sim[i, i]
        total = total + ((torch.exp(h / tau[i]) / s[i]).detach() * h).sum()
    return total / sim.shape[0]


def test_matches_naive_paper_objective_and_update() -> None:
    rho, gamma, eta, beta, tau0 = 6.0, 0.9, 1e-4, 0.9, 0.02
    loss_fn = isogclr64(N, tau_init=tau0, rho=rho, gamma=gamma, eta=eta, beta=beta)
    index = torch.arange(3, 3 + B)
    x, y = pair_batch(7)
    loss, gx, gy = run_step(loss_fn, x, y, index)

    xs, ys = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    tau_i = torch.full((B,), tau0, dtype=torch.float64, requires_grad=True)
    tau_t = torch.full((B,), tau0, dtype=torch.float64, requires_grad=True)
    f_img, g_img = naive_side(xs @ ys.T, tau_i, rho)
    f_txt, g_txt = naive_side(ys @ xs.T, tau_t, rho)
    objective = (f_img + f_txt) / B  # F = (1/n) Σ_i [...], the paper's objective on this batch
    objective.backward()

    # First visit: s = g, so the surrogate's value is the naive one and its gradient is (B-1)/2 · ∇F.
    surrogate = 0.5 * (naive_surrogate(x @ y.T, tau_i, g_img) + naive_surrogate(y @ x.T, tau_t, g_txt))
    torch.testing.assert_close(loss, surrogate, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx, (B - 1) / 2 * xs.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gy, (B - 1) / 2 * ys.grad, rtol=1e-9, atol=1e-12)
    # τ step from zero momentum: u = β ∂F_i/∂τ_i (= B · ∂F/∂τ_i), τ ← τ - η u (small η: no clamp).
    torch.testing.assert_close(loss_fn.state.u_a[index], beta * B * tau_i.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(loss_fn.state.tau_a[index], tau0 - eta * beta * B * tau_i.grad, rtol=1e-12,
                               atol=1e-15)
    torch.testing.assert_close(loss_fn.state.tau_b[index], tau0 - eta * beta * B * tau_t.grad, rtol=1e-12,
                               atol=1e-15)
    assert (loss_fn.state.tau_a[index] != tau0).all()

    # Second visit with new features: s ← (1-γ) s + γ g at the *new* τ; stored as s·exp(-b).
    tau_new = loss_fn.state.tau_a[index].clone()
    x2, y2 = pair_batch(8)
    run_step(loss_fn, x2, y2, index)
    _, g2 = naive_side(x2 @ y2.T, tau_new, rho)
    expected_s = torch.stack([(1 - gamma) * g_img[i].detach() + gamma * g2[i] for i in range(B)])
    stored = loss_fn.state.s_a[index] * torch.exp(loss_fn.state.b_a[index])
    torch.testing.assert_close(stored, expected_s, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# State handling, call forms, errors
# ---------------------------------------------------------------------------------------------------------
def test_first_visit_is_per_sample_in_a_mixed_batch() -> None:
    """The documented deviation from LibAUC: an unseen sample in a batch with seen ones gets s = g."""
    loss_fn = isogclr64(N)
    x, y = pair_batch(1)
    run_step(loss_fn, x, y, torch.arange(B))
    mixed = torch.cat([torch.arange(B // 2), torch.arange(B, B + B // 2)])
    x2, y2 = pair_batch(2)
    tau = loss_fn.state.tau_a[mixed].clone()
    run_step(loss_fn, x2, y2, mixed)
    _, g = naive_side(x2 @ y2.T, tau, 6.0)
    stored = loss_fn.state.s_a[mixed] * torch.exp(loss_fn.state.b_a[mixed])
    torch.testing.assert_close(stored[B // 2:], torch.stack(g[B // 2:]), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(stored[: B // 2], torch.stack(g[: B // 2]))  # seen ones are averaged
    assert loss_fn.state.visits[mixed].tolist() == [2] * (B // 2) + [1] * (B // 2)


def test_duplicate_indices_keep_the_last_occurrence() -> None:
    loss_fn = isogclr64(N)
    index = torch.tensor([5, 1, 5, 2, 3, 4, 6, 7])
    x, y = pair_batch(3)
    run_step(loss_fn, x, y, index)
    single = isogclr64(N)  # what row 2 alone would have written for index 5
    run_step(single, x, y, torch.tensor([8, 1, 5, 2, 3, 4, 6, 7]))
    assert loss_fn.state.visits[5] == 2
    for name in ("tau_a", "s_b", "b_a", "u_b"):
        assert loss_fn.state.table(name)[5] == single.state.table(name)[5]


def test_eval_mode_leaves_state_untouched_and_pair_form_matches_direct() -> None:
    loss_fn = isogclr64(N)
    x, y = pair_batch(4)
    index = torch.arange(B)
    loss_fn.eval()
    before = {k: v.clone() for k, v in loss_fn.state_dict().items()}
    ctx = LossContext(a="image", b="text", batch={"index": index})
    terms = loss_fn(x, y, torch.tensor(3.0), None, ctx)
    assert set(terms) == {"loss"}
    torch.testing.assert_close(terms["loss"], loss_fn(x, y, index))
    assert all(torch.equal(before[k], v) for k, v in loss_fn.state_dict().items())
    loss_fn.train()
    loss_fn(x, y, torch.tensor(3.0), None, ctx)
    assert loss_fn.state.visits[:B].eq(1).all() and loss_fn.state.visits[B:].eq(0).all()


def test_state_dict_round_trip_carries_the_tables() -> None:
    loss_fn = isogclr64(N)
    for step, index in enumerate(index_schedule()[:3]):
        run_step(loss_fn, *pair_batch(step), index)
    state = loss_fn.state_dict()
    tables = {f"state.{k}_{s}" for k in ("tau", "s", "b", "u") for s in ("a", "b")}
    expected = tables | {"state.visits"}
    assert set(state) == expected
    restored = isogclr64(N)
    restored.load_state_dict(state)
    x, y = pair_batch(10)
    torch.testing.assert_close(restored(x, y, torch.arange(B)), loss_fn(x, y, torch.arange(B)))


def test_metrics_and_temperature_tables() -> None:
    loss_fn = isogclr64(N)
    assert loss_fn.metrics()["tau_a_mean"] == pytest.approx(0.01)
    run_step(loss_fn, *pair_batch(0), torch.arange(B))
    metrics = loss_fn.metrics()
    tables = loss_fn.temperatures()
    assert metrics["seen_fraction"] == pytest.approx(B / N)
    assert metrics["tau_b_mean"] == pytest.approx(float(tables.tau_b[:B].mean()))
    assert metrics["tau_a_min"] >= 0.005 and metrics["tau_a_max"] <= 0.05
    assert "robust_objective" in metrics
    assert tables.visits.sum() == B and tables.tau_a.shape == (N,)


def test_registry_builds_with_validated_config() -> None:
    loss_fn = LOSSES.build("isogclr", {"num_samples": N, "rho": 7.0})
    assert isinstance(loss_fn, ISogCLRLoss) and loss_fn.config == ISogCLRConfig(num_samples=N, rho=7.0)
    with pytest.raises(ValueError, match="tau_init"):
        isogclr(N, tau_init=0.1)


def test_bad_inputs_raise_clear_errors() -> None:
    loss_fn = isogclr(N)
    x, y = pair_batch(0)
    x, y = x.float(), y.float()
    with pytest.raises(IndexError, match="num_samples=24"):
        loss_fn(x, y, torch.arange(B) + N)
    with pytest.raises(TypeError, match="integer tensor"):
        loss_fn(x, y, torch.arange(B).float())
    with pytest.raises(ValueError, match="shape"):
        loss_fn(x, y, torch.arange(B - 1))
    with pytest.raises(KeyError, match="batch\\['index'\\]"):
        loss_fn(x, y, torch.tensor(1.0), None, LossContext(a="image", b="text", batch={}))


def test_bf16_autocast_computes_in_float32() -> None:
    loss_fn = isogclr(N)
    x, y = (t.float() for t in pair_batch(5))
    reference = isogclr(N)(x, y, torch.arange(B))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(x, y, torch.arange(B))
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reference)


# ---------------------------------------------------------------------------------------------------------
# Distributed: 2 gloo ranks with half the batch each == one process with the whole batch
# ---------------------------------------------------------------------------------------------------------
DIST_STEPS = 3


def dist_indices(step: int) -> torch.Tensor:
    return [torch.arange(B), torch.arange(B, 2 * B), torch.arange(2 * B).flip(0)[::2]][step]


def _rank_run(rank: int, world: int) -> dict:
    loss_fn = isogclr64(N, tau_init=0.02, eta=1e-3)
    rows = slice(rank * B // world, (rank + 1) * B // world)
    out = {"loss": [], "gx": [], "gy": []}
    for step in range(DIST_STEPS):
        x, y = pair_batch(step)
        loss, gx, gy = run_step(loss_fn, x[rows], y[rows], dist_indices(step)[rows])
        out["loss"].append(loss)
        out["gx"].append(gx)
        out["gy"].append(gy)
    out["state"] = {k: v.clone() for k, v in loss_fn.state_dict().items()}
    return out


def test_two_ranks_match_one_process() -> None:
    world = 2
    ranks = run_distributed(_rank_run, world)
    single = isogclr64(N, tau_init=0.02, eta=1e-3)
    for step in range(DIST_STEPS):
        x, y = pair_batch(step)
        loss, gx, gy = run_step(single, x, y, dist_indices(step))
        # Mean of the ranks' local-row losses == global loss; DDP's mean of gradients == single process.
        torch.testing.assert_close(sum(r["loss"][step] for r in ranks) / world, loss, rtol=1e-12, atol=1e-12)
        for key, grad in (("gx", gx), ("gy", gy)):
            averaged = torch.cat([r[key][step] for r in ranks]) / world
            torch.testing.assert_close(averaged, grad, rtol=1e-10, atol=1e-12)
    for name, value in single.state_dict().items():
        assert torch.equal(ranks[0]["state"][name], ranks[1]["state"][name]), f"{name} differs across ranks"
        torch.testing.assert_close(ranks[0]["state"][name], value, rtol=1e-10, atol=1e-14)
    assert single.state.visits[: 2 * B].gt(0).all()
