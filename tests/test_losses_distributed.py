"""Two gloo processes with half the batch each reproduce one process on the whole batch, for every case of
every registered loss (tests/loss_cases.py, checked against the registry), called as the trainer calls it.

Each rank holds the *full* batch as leaf tensors (like replicated parameters), feeds its own half to the loss
module and backpropagates; gradients are then averaged over ranks as DDP/accelerate do (the trainer does the
same for the loss's own parameters). The mean of the ranks' losses must equal the single-process loss, the
averaged gradients (x, y, logit scale and bias, loss parameters) the single-process gradients, and a stateful
loss's tables after the step the single-process tables on every rank.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from dist_utils import run_distributed
from loss_cases import ALL_CASES, B, LossCase, build, make_data, run_module

from mmembed.losses import functional as LF

WORLD = 2


def run_case(case: LossCase, data: dict[str, torch.Tensor], rows: slice) -> dict[str, object]:
    module = build(case)
    leaves = [data["x"].clone(), data["y"].clone(), torch.tensor(7.5, dtype=torch.float64),
              torch.tensor(-2.0, dtype=torch.float64)]
    leaves = [t.requires_grad_() for t in leaves]
    loss = run_module(module, case, data, leaves, rows)
    loss.backward()
    tensors = [*leaves, *module.parameters()]
    grads = [t.grad if t.grad is not None else torch.zeros_like(t) for t in tensors]
    return {"loss": loss.detach(), "grads": grads, "state": {k: v.clone() for k, v in module.named_buffers()}}


def rank_results(rank: int, world: int, data: dict[str, torch.Tensor]) -> dict[str, dict]:
    rows = slice(rank * B // world, (rank + 1) * B // world)
    out = {}
    for case in ALL_CASES:
        result = run_case(case, data, rows)
        for g in result["grads"]:  # what DDP does to every parameter gradient
            dist.all_reduce(g)
            g /= world
        out[case.id] = result
    out["cwcl_from_weights"] = functional_cwcl_from_weights(data, rows, world)
    return out


def functional_cwcl_from_weights(data: dict[str, torch.Tensor], rows: slice, world: int) -> dict[str, object]:
    """The functional API's explicit-weights CWCL, which no registered loss calls."""
    weights = torch.rand(B, B, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x, y, s = data["x"].clone().requires_grad_(), data["y"].clone().requires_grad_(), torch.tensor(
        7.5, dtype=torch.float64, requires_grad=True)
    loss = LF.cwcl_from_weights(x[rows], y[rows], weights[rows], s, "both")
    loss.backward()
    grads = [x.grad, y.grad, s.grad]
    if world > 1:
        for g in grads:
            dist.all_reduce(g)
            g /= world
    return {"loss": loss.detach(), "grads": grads, "state": {}}


@pytest.fixture(scope="module")
def distributed() -> list[dict[str, dict]]:
    return run_distributed(rank_results, WORLD, make_data())


def _single(case_id: str) -> dict[str, object]:
    data = make_data()
    if case_id == "cwcl_from_weights":
        return functional_cwcl_from_weights(data, slice(None), 1)
    return run_case(next(c for c in ALL_CASES if c.id == case_id), data, slice(None))


@pytest.mark.parametrize("case_id", [c.id for c in ALL_CASES] + ["cwcl_from_weights"])
def test_two_ranks_equal_one_process(case_id: str, distributed: list[dict[str, dict]]) -> None:
    single = _single(case_id)
    rank_losses = torch.stack([r[case_id]["loss"] for r in distributed])
    torch.testing.assert_close(rank_losses.mean(), single["loss"], rtol=1e-10, atol=1e-12)
    for rank in distributed:
        for k, (got, want) in enumerate(zip(rank[case_id]["grads"], single["grads"], strict=True)):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12, msg=lambda m, k=k: f"tensor #{k}: {m}")
        for name, table in single["state"].items():
            torch.testing.assert_close(rank[case_id]["state"][name], table, rtol=1e-10, atol=1e-14,
                                       msg=lambda m, n=name: f"state {n}: {m}")


def test_ranks_see_different_halves(distributed: list[dict[str, dict]]) -> None:
    """Guards the test itself: with one half per rank the per-rank losses differ from each other."""
    assert not torch.allclose(distributed[0]["infonce"]["loss"], distributed[1]["infonce"]["loss"])
