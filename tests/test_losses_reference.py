"""Every loss against open_clip's implementation and against a naive float64 transcription of its formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, DistillClipLoss, SigLipLoss

from mmembed.losses import functional as LF

B, D = 9, 6
DT = torch.float64


def unit(*shape: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=gen, dtype=DT), dim=-1)


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.clone().requires_grad_(True)


def grads(loss: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, inputs))


def assert_same(ours: list[torch.Tensor], ref: list[torch.Tensor], tol: float = 1e-10) -> None:
    for k, (a, b) in enumerate(zip(ours, ref)):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m, k=k: f"tensor #{k}: {m}")


# ---------------------------------------------------------------------------------------------------------
# Naive references: loops over the paper formulas, no vectorised log-softmax.
# ---------------------------------------------------------------------------------------------------------
def log_softmax_row(logits: list[torch.Tensor], j: int) -> torch.Tensor:
    return logits[j] - torch.log(sum(torch.exp(v) for v in logits))


def naive_infonce(x, y, s, b=None):
    n = x.shape[0]
    logit = lambda i, j: s * torch.dot(x[i], y[j]) + (0.0 if b is None else b)
    img = sum(-log_softmax_row([logit(i, j) for j in range(n)], i) for i in range(n)) / n
    txt = sum(-log_softmax_row([logit(i, j) for i in range(n)], j) for j in range(n)) / n
    return 0.5 * (img + txt)


def naive_siglip(x, y, t, b):
    n = x.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            total = total + torch.log(1.0 + torch.exp(-z * (t * torch.dot(x[i], y[j]) + b)))
    return total / n


def naive_cwcl_term(anchor, cand, s, weights):
    """−(1/B) Σ_i (1/Σ_j w_ij) Σ_j w_ij log softmax_j(s⟨a_i, c_j⟩); weights=None means the identity."""
    n = anchor.shape[0]
    total = 0.0
    for i in range(n):
        logits = [s * torch.dot(anchor[i], cand[j]) for j in range(n)]
        w = [weights[i][j] if weights is not None else float(i == j) for j in range(n)]
        total = total - sum(w[j] * log_softmax_row(logits, j) for j in range(n)) / sum(w)
    return total / n


def naive_cwcl(p, q, pf, s, direction):
    n = p.shape[0]
    cos = lambda i, j: torch.dot(pf[i], pf[j]) / (pf[i].norm() * pf[j].norm())
    w = [[0.5 * cos(i, j) + 0.5 for j in range(n)] for i in range(n)]
    u2v = naive_cwcl_term(p, q, s, w if direction in ("u2v", "both") else None)
    v2u = naive_cwcl_term(q, p, s, w if direction in ("v2u", "both") else None)
    return 0.5 * (u2v + v2u)


def naive_kd(x, y, s, tx, ty, scales):
    n = x.shape[0]

    def targets(rows, cols):
        out = [[0.0] * n for _ in range(n)]
        for t, u, c in zip(rows, cols, scales):
            for i in range(n):
                logits = [c * torch.dot(t[i], u[j]) for j in range(n)]
                for j in range(n):
                    out[i][j] = out[i][j] + torch.exp(log_softmax_row(logits, j)) / len(scales)
        return out

    def direction(a, c, target):
        total = 0.0
        for i in range(n):
            logits = [s * torch.dot(a[i], c[j]) for j in range(n)]
            total = total - sum(target[i][j] * log_softmax_row(logits, j) for j in range(n))
        return total / n

    return 0.5 * (direction(x, y, targets(tx, ty)) + direction(y, x, targets(ty, tx)))


# ---------------------------------------------------------------------------------------------------------
# Parity with open_clip
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [None, -2.5])
@pytest.mark.parametrize("tile", [None, 4])
def test_infonce_matches_open_clip_clip_loss(bias, tile):
    x, y, s = leaf(unit(B, D, seed=0)), leaf(unit(B, D, seed=1)), leaf(torch.tensor(14.0, dtype=DT))
    b = None if bias is None else leaf(torch.tensor(bias, dtype=DT))
    inputs = [x, y, s] + ([b] if b is not None else [])
    ours = LF.infonce(x, y, s, b, tile_size=tile)
    ref = ClipLoss()(x, y, s, b)
    assert_same([ours], [ref], 1e-12)
    g_ours, g_ref = grads(ours, inputs), grads(ref, inputs)
    assert_same(g_ours, g_ref, 1e-6)
    if b is not None:  # a shared bias cancels in a softmax: its gradient is exactly zero
        assert g_ours[-1].abs().item() < 1e-12


@pytest.mark.parametrize("bias", [None, -10.0, 3.0])
def test_siglip_matches_open_clip_siglip_loss(bias):
    x, y, t = leaf(unit(B, D, seed=2)), leaf(unit(B, D, seed=3)), leaf(torch.tensor(10.0, dtype=DT))
    b = None if bias is None else leaf(torch.tensor(bias, dtype=DT))
    inputs = [x, y, t] + ([b] if b is not None else [])
    ours, ref = LF.siglip(x, y, t, b), SigLipLoss()(x, y, t, b)
    assert_same([ours], [ref], 1e-12)
    assert_same(grads(ours, inputs), grads(ref, inputs), 1e-6)


@pytest.mark.parametrize("tile", [None, 4])
def test_distill_kd_matches_open_clip_distill_clip_loss(tile):
    x, y, s = leaf(unit(B, D, seed=4)), leaf(unit(B, D, seed=5)), leaf(torch.tensor(20.0, dtype=DT))
    tx, ty = unit(B, 5, seed=6), unit(B, 5, seed=7)
    clip, kd = LF.clip_and_distill(x, y, s, [tx], [ty], [60.0], tile_size=tile)
    ref_clip, ref_kd = DistillClipLoss()(x, y, s, tx, ty, 60.0)
    assert_same([clip, kd], [ref_clip, ref_kd], 1e-12)
    assert_same(grads(kd, [x, y, s]), grads(ref_kd, [x, y, s]), 1e-6)
    assert_same([LF.distill_kd(x, y, s, [tx], [ty], [60.0], tile_size=tile)], [ref_kd], 1e-12)


# ---------------------------------------------------------------------------------------------------------
# Naive formulas: values and gradients
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tile", [None, 2])
def test_infonce_matches_naive_formula(tile):
    x, y = leaf(unit(5, 4, seed=10)), leaf(unit(5, 4, seed=11))
    s, b = leaf(torch.tensor(7.0, dtype=DT)), leaf(torch.tensor(1.5, dtype=DT))
    ours, ref = LF.infonce(x, y, s, b, tile_size=tile), naive_infonce(x, y, s, b)
    assert_same([ours], [ref])
    assert_same(grads(ours, [x, y, s, b]), grads(ref, [x, y, s, b]))


def test_siglip_matches_naive_formula():
    x, y = leaf(unit(5, 4, seed=12)), leaf(unit(5, 4, seed=13))
    t, b = leaf(torch.tensor(10.0, dtype=DT)), leaf(torch.tensor(-10.0, dtype=DT))
    ours, ref = LF.siglip(x, y, t, b), naive_siglip(x, y, t, b)
    assert_same([ours], [ref])
    assert_same(grads(ours, [x, y, t, b]), grads(ref, [x, y, t, b]))


@pytest.mark.parametrize("direction", ["u2v", "v2u", "both"])
@pytest.mark.parametrize("tile", [None, 2])
def test_cwcl_matches_naive_formula(direction, tile):
    p, q = leaf(unit(5, 4, seed=14)), leaf(unit(5, 4, seed=15))
    # Deliberately unnormalised and of another width: the frozen tower's raw output.
    pf = 3.0 * torch.randn(5, 7, generator=torch.Generator().manual_seed(16), dtype=DT)
    s = leaf(torch.tensor(9.0, dtype=DT))
    ours, ref = LF.cwcl(p, q, pf, s, direction, tile_size=tile), naive_cwcl(p, q, pf, s, direction)
    assert_same([ours], [ref])
    assert_same(grads(ours, [p, q, s]), grads(ref, [p, q, s]))


@pytest.mark.parametrize("tile", [None, 3])
def test_distill_kd_matches_naive_formula_two_teachers(tile):
    x, y, s = leaf(unit(5, 4, seed=17)), leaf(unit(5, 4, seed=18)), leaf(torch.tensor(12.0, dtype=DT))
    tx, ty = [unit(5, 3, seed=19), unit(5, 6, seed=20)], [unit(5, 3, seed=21), unit(5, 6, seed=22)]
    ours = LF.distill_kd(x, y, s, tx, ty, [70.0, 60.0], tile_size=tile)
    ref = naive_kd(x, y, s, tx, ty, [70.0, 60.0])
    assert_same([ours], [ref])
    assert_same(grads(ours, [x, y, s]), grads(ref, [x, y, s]))


def test_kd_averages_teachers_after_the_softmax():
    """Two teachers differ from one teacher whose logits are their average: P is the mean of softmaxes."""
    x, y, s = unit(5, 4, seed=23), unit(5, 4, seed=24), 10.0
    tx, ty = [unit(5, 3, seed=25), unit(5, 3, seed=26)], [unit(5, 3, seed=27), unit(5, 3, seed=28)]
    two = LF.distill_kd(x, y, s, tx, ty, [100.0, 100.0])
    mean_probs = 0.5 * (F.softmax(100 * tx[0] @ ty[0].T, 1) + F.softmax(100 * tx[1] @ ty[1].T, 1))
    img = -(mean_probs * F.log_softmax(s * x @ y.T, 1)).sum(1).mean()
    mean_probs_t = 0.5 * (F.softmax(100 * ty[0] @ tx[0].T, 1) + F.softmax(100 * ty[1] @ tx[1].T, 1))
    txt = -(mean_probs_t * F.log_softmax(s * y @ x.T, 1)).sum(1).mean()
    assert_same([two], [0.5 * (img + txt)])


# ---------------------------------------------------------------------------------------------------------
# CWCL reduces to InfoNCE
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("direction", ["u2v", "v2u", "both"])
def test_cwcl_with_identity_weights_is_infonce(direction):
    p, q, s = leaf(unit(B, D, seed=30)), leaf(unit(B, D, seed=31)), leaf(torch.tensor(11.0, dtype=DT))
    ours = LF.cwcl_from_weights(p, q, torch.eye(B, dtype=DT), s, direction)
    ref = LF.infonce(p, q, s)
    assert_same([ours], [ref], 1e-12)
    assert_same(grads(ours, [p, q, s]), grads(ref, [p, q, s]), 1e-12)


@pytest.mark.parametrize("tile", [None, 1])
def test_cwcl_with_antipodal_frozen_pair_is_infonce(tile):
    """Two frozen embeddings pointing in opposite directions give w = I through the public `cwcl` path."""
    p, q, s = leaf(unit(2, D, seed=32)), leaf(unit(2, D, seed=33)), leaf(torch.tensor(5.0, dtype=DT))
    frozen = torch.tensor([[1.0, 2.0, -1.0], [-1.0, -2.0, 1.0]], dtype=DT)
    ours, ref = LF.cwcl(p, q, frozen, s, "both", tile_size=tile), LF.infonce(p, q, s)
    assert_same([ours], [ref], 1e-12)
    assert_same(grads(ours, [p, q, s]), grads(ref, [p, q, s]), 1e-12)


def test_cwcl_weights_use_the_frozen_embedding_only():
    """Identical frozen embeddings make every weight 1: U→V becomes a uniform-target cross-entropy."""
    p, q, s = unit(B, D, seed=34), unit(B, D, seed=35), 6.0
    same = torch.ones(B, 3, dtype=DT)
    ours = LF.cwcl(p, q, same, s, "u2v")
    uniform = -F.log_softmax(s * p @ q.T, dim=1).mean(1).mean()
    plain = F.cross_entropy(s * q @ p.T, torch.arange(B))
    assert_same([ours], [0.5 * (uniform + plain)])


# ---------------------------------------------------------------------------------------------------------
# Input checks and precision
# ---------------------------------------------------------------------------------------------------------
def test_bad_inputs_are_named():
    x, y = unit(4, 3, seed=40), unit(5, 3, seed=41)
    with pytest.raises(ValueError, match="x and y"):
        LF.infonce(x, y, 1.0)
    with pytest.raises(ValueError, match="p_frozen"):
        LF.cwcl(x, x, torch.ones(3, 2, dtype=DT), 1.0)
    with pytest.raises(ValueError, match="direction 'sideways'"):
        LF.cwcl(x, x, x, 1.0, "sideways")
    with pytest.raises(ValueError, match="tile_size"):
        LF.infonce(x, x, 1.0, tile_size=0)
    with pytest.raises(ValueError, match=r"teacher_y\[0\]"):
        LF.distill_kd(x, x, 1.0, [x], [y], [1.0])
    with pytest.raises(ValueError, match="one tensor per teacher"):
        LF.distill_kd(x, x, 1.0, [x], [x], [1.0, 2.0])
    with pytest.raises(ValueError, match="weights must be"):
        LF.cwcl_from_weights(x, x, torch.eye(3, dtype=DT), 1.0)


@pytest.mark.parametrize("tile", [None, 3])
def test_low_precision_inputs_and_autocast_compute_in_float32(tile):
    x32, y32 = unit(8, 16, seed=42).float(), unit(8, 16, seed=43).float()
    x16, y16 = x32.bfloat16(), y32.bfloat16()
    scale = 100.0
    ref = LF.infonce(x16.float(), y16.float(), scale, tile_size=tile)
    out = LF.infonce(x16, y16, scale, tile_size=tile)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = LF.infonce(x32, y32, scale, tile_size=tile)
    full = LF.infonce(x32, y32, scale, tile_size=tile)
    torch.testing.assert_close(under_autocast, full, rtol=1e-6, atol=1e-6)
