"""Two gloo processes with half the batch each reproduce one process on the whole batch.

Each rank holds the *full* batch as leaf tensors (like replicated parameters), feeds its own half to the loss
and backpropagates; gradients are then averaged over ranks as DDP/accelerate do. The mean of the ranks'
losses must equal the single-process loss, and the averaged gradients (w.r.t. x, y, the logit scale and
bias) must equal the single-process gradients.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from dist_utils import run_distributed

from mmembed.losses import functional as LF

B, D, WORLD = 8, 6, 2
CASES = [
    "infonce", "infonce_tiled", "siglip", "cwcl_u2v", "cwcl_both_tiled", "cwcl_v2u_tiled",
    "cwcl_from_weights", "distill_kd", "distill_kd_tiled", "clip_and_distill_tiled",
]


def make_batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    unit = lambda *shape: F.normalize(torch.randn(*shape, generator=gen, dtype=torch.float64), dim=-1)
    return {
        "x": unit(B, D), "y": unit(B, D), "frozen": torch.randn(B, 5, generator=gen, dtype=torch.float64),
        "tx": unit(B, 4), "ty": unit(B, 4), "tx2": unit(B, 3), "ty2": unit(B, 3),
        "weights": torch.rand(B, B, generator=gen, dtype=torch.float64),
    }


def compute(case: str, data: dict[str, torch.Tensor], x, y, s, b, rows: slice) -> torch.Tensor:
    """The loss `case` on rows `rows` of the batch (all rows for one process, a half for a rank)."""
    tile = 3 if case.endswith("_tiled") else None
    x, y = x[rows], y[rows]
    teachers = ([data["tx"][rows], data["tx2"][rows]], [data["ty"][rows], data["ty2"][rows]], [50.0, 20.0])
    if case.startswith("infonce"):
        return LF.infonce(x, y, s, b, tile_size=tile)
    if case == "siglip":
        return LF.siglip(x, y, s, b)
    if case == "cwcl_from_weights":
        return LF.cwcl_from_weights(x, y, data["weights"][rows], s, "both")
    if case.startswith("cwcl"):
        return LF.cwcl(x, y, data["frozen"][rows], s, case.split("_")[1], tile_size=tile)
    if case.startswith("distill_kd"):
        return LF.distill_kd(x, y, s, *teachers, tile_size=tile)
    clip, kd = LF.clip_and_distill(x, y, s, *teachers, tile_size=tile)
    return 0.3 * clip + 0.7 * kd


def run_case(
    case: str, data: dict[str, torch.Tensor], rows: slice
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    leaves = [data["x"].clone(), data["y"].clone(), torch.tensor(7.5, dtype=torch.float64),
              torch.tensor(-2.0, dtype=torch.float64)]
    leaves = [t.requires_grad_() for t in leaves]
    loss = compute(case, data, *leaves, rows)
    loss.backward()
    return loss.detach(), [t.grad if t.grad is not None else torch.zeros_like(t) for t in leaves]


def rank_results(rank: int, world: int, data: dict[str, torch.Tensor]) -> dict[str, tuple]:
    rows = slice(rank * B // world, (rank + 1) * B // world)
    out = {}
    for case in CASES:
        loss, grads = run_case(case, data, rows)
        for g in grads:  # what DDP does to every parameter gradient
            dist.all_reduce(g)
            g /= world
        out[case] = (loss, grads)
    return out


@pytest.fixture(scope="module")
def distributed() -> list[dict[str, tuple]]:
    return run_distributed(rank_results, WORLD, make_batch())


@pytest.mark.parametrize("case", CASES)
def test_two_ranks_equal_one_process(case, distributed):
    data = make_batch()
    loss, grads = run_case(case, data, slice(None))
    rank_losses = torch.stack([r[case][0] for r in distributed])
    torch.testing.assert_close(rank_losses.mean(), loss, rtol=1e-10, atol=1e-12)
    for rank in distributed:
        for name, got, want in zip(["x", "y", "logit_scale", "logit_bias"], rank[case][1], grads):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


def test_ranks_see_different_halves(distributed):
    """Guards the test itself: with one half per rank the per-rank losses differ from each other."""
    assert not torch.allclose(distributed[0]["infonce"][0], distributed[1]["infonce"][0])
