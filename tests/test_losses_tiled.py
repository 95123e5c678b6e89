"""The tiled (Inf-CL) path: custom backward checked by gradcheck, and tiled == dense in float32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmembed.losses import functional as LF
from mmembed.losses.tiled import row_logsumexp, teacher_mix


def unit(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=gen, dtype=torch.float64), dim=-1).to(dtype)


# ---------------------------------------------------------------------------------------------------------
# gradcheck of the two custom autograd functions (float64, tiles that do not divide the sizes)
# ---------------------------------------------------------------------------------------------------------
def test_row_logsumexp_gradcheck():
    a = unit(5, 3, seed=0).requires_grad_()
    c = unit(7, 3, seed=1).requires_grad_()
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, c, s: row_logsumexp(a, c, s, 2), (a, c, scale))


def test_row_logsumexp_equals_dense_logsumexp():
    a, c = unit(6, 4, seed=2), unit(11, 4, seed=3)
    for tile in (1, 4, 6, 100):
        torch.testing.assert_close(row_logsumexp(a, c, 8.0, tile), torch.logsumexp(8.0 * a @ c.T, dim=1))


def test_teacher_mix_gradcheck_and_value():
    c = unit(7, 3, seed=4).requires_grad_()
    rows, cols = [unit(5, 2, seed=5), unit(5, 4, seed=6)], [unit(7, 2, seed=7), unit(7, 4, seed=8)]
    scales = [9.0, 4.0]
    assert torch.autograd.gradcheck(lambda c: teacher_mix(c, rows, cols, scales, 3), (c,))
    probs = 0.5 * (F.softmax(9.0 * rows[0] @ cols[0].T, 1) + F.softmax(4.0 * rows[1] @ cols[1].T, 1))
    torch.testing.assert_close(teacher_mix(c, rows, cols, scales, 3), probs @ c)


@pytest.mark.parametrize("loss", ["infonce", "cwcl", "distill_kd"])
def test_tiled_losses_gradcheck(loss):
    x, y = unit(5, 3, seed=9).requires_grad_(), unit(5, 3, seed=10).requires_grad_()
    s = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    frozen, tx, ty = unit(5, 4, seed=11), unit(5, 2, seed=12), unit(5, 2, seed=13)
    fns = {
        "infonce": lambda x, y, s: LF.infonce(x, y, s, tile_size=2),
        "cwcl": lambda x, y, s: LF.cwcl(x, y, frozen, s, "both", tile_size=2),
        "distill_kd": lambda x, y, s: LF.distill_kd(x, y, s, [tx], [ty], [30.0], tile_size=2),
    }
    assert torch.autograd.gradcheck(fns[loss], (x, y, s))


# ---------------------------------------------------------------------------------------------------------
# tiled == dense in float32 to 1e-5, values and gradients
# ---------------------------------------------------------------------------------------------------------
B, D = 37, 16


def _float32_case(seed: int) -> dict[str, torch.Tensor]:
    return {
        "x": unit(B, D, seed=seed, dtype=torch.float32),
        "y": unit(B, D, seed=seed + 1, dtype=torch.float32),
        "frozen": torch.randn(B, 12, generator=torch.Generator().manual_seed(seed + 2)),
        "tx": unit(B, 8, seed=seed + 3, dtype=torch.float32),
        "ty": unit(B, 8, seed=seed + 4, dtype=torch.float32),
        "tx2": unit(B, 5, seed=seed + 5, dtype=torch.float32),
        "ty2": unit(B, 5, seed=seed + 6, dtype=torch.float32),
    }


def _loss(name: str, case: dict[str, torch.Tensor], x, y, s, tile):
    if name == "infonce":
        return LF.infonce(x, y, s, tile_size=tile)
    if name.startswith("cwcl"):
        return LF.cwcl(x, y, case["frozen"], s, name.split("_")[1], tile_size=tile)
    return LF.distill_kd(x, y, s, [case["tx"], case["tx2"]], [case["ty"], case["ty2"]], [100.0, 60.0],
                         tile_size=tile)


@pytest.mark.parametrize("name", ["infonce", "cwcl_u2v", "cwcl_v2u", "cwcl_both", "distill_kd"])
@pytest.mark.parametrize("tile", [5, 16])
@pytest.mark.parametrize("scale", [14.3, 100.0])
def test_tiled_equals_dense_float32(name, tile, scale):
    case = _float32_case(seed=20)
    results = []
    for tile_size in (None, tile):
        x, y = case["x"].clone().requires_grad_(), case["y"].clone().requires_grad_()
        s = torch.tensor(scale, requires_grad=True)
        value = _loss(name, case, x, y, s, tile_size)
        value.backward()
        results.append((value.detach(), x.grad, y.grad, s.grad))
    for dense, tiled in zip(*results):
        torch.testing.assert_close(tiled, dense, rtol=1e-5, atol=1e-5)


def test_tiled_path_keeps_no_batch_by_batch_tensor():
    """Everything autograd saves for the tiled loss is O(B·D) or O(tile²), never B×B or B×tile-rows."""
    n, tile = 300, 16
    x = unit(n, 8, seed=30, dtype=torch.float32).requires_grad_()
    y = unit(n, 8, seed=31, dtype=torch.float32).requires_grad_()
    frozen, tx, ty = unit(n, 8, seed=32), unit(n, 4, seed=33), unit(n, 4, seed=34)
    largest = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal largest
        largest = max(largest, t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = LF.infonce(x, y, 20.0, tile_size=tile)
        loss = loss + LF.cwcl(x, y, frozen.float(), 20.0, "both", tile_size=tile)
        loss = loss + LF.distill_kd(x, y, 20.0, [tx.float()], [ty.float()], [100.0], tile_size=tile)
    loss.backward()
    assert largest <= n * 8, f"a saved tensor has {largest} elements; B×B would be {n * n}"
