"""The contrastive losses as pure functions: infonce, siglip, cwcl, distill_kd (and clip_and_distill).

Conventions shared by every function here:
- Inputs are this rank's *local* L2-normalised embeddings [B_local, D]; `logit_scale` is the multiplier s
  (already exponentiated, as in open_clip's ClipLoss), a tensor or a float.
- Distributed: features are gathered *with* gradient (`gather_with_grad`), this rank's rows are scored
  against all B = world·B_local columns, and the positives of rank r sit at columns r·B_local + i
  (open_clip `--local-loss --gather-with-grad`). Every rank must hold the same B_local.
- Averaging convention: each rank returns the mean over *its own* anchor rows, so the mean of the ranks'
  losses is the single-process full-batch loss. all_gather's backward sums the gradients that every rank's
  loss sends to a rank's rows, and DDP/accelerate average parameter gradients over ranks; together these give
  exactly the gradient of the full-batch loss. Do not rescale the loss by the world size.
- Losses compute in float32 or wider with autocast off: at s = 100 a bf16 logit cannot resolve the gaps
  between hard negatives that the loss is made of.
- `tile_size` (infonce, cwcl, distill_kd) computes the loss tile by tile (Inf-CL, arXiv 2410.17243) so no
  B×B matrix is ever held; values and gradients equal the dense path up to float rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from mmembed.losses.distributed import gather_no_grad, gather_with_grad, global_row_offset, rank_and_world
from mmembed.losses.tiled import check_tile_size, row_logsumexp, teacher_mix

Tensor = torch.Tensor
Scale = Tensor | float

# direction -> (is the U->V term weighted, is the V->U term weighted)
CWCL_DIRECTIONS: dict[str, tuple[bool, bool]] = {
    "u2v": (True, False),
    "v2u": (False, True),
    "both": (True, True),
}


@contextlib.contextmanager
def _full_precision(device: torch.device) -> Iterator[None]:
    with torch.autocast(device_type=device.type, enabled=False):
        yield


def _prepare(name_a: str, a: Tensor, name_b: str, b: Tensor) -> tuple[Tensor, Tensor]:
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must both be [B_local, D] with the same shape, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    return _widen(a), _widen(b)


def _widen(t: Tensor) -> Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _scalar(value: Scale | None, like: Tensor) -> Tensor | None:
    if value is None:
        return None
    t = torch.as_tensor(value, device=like.device)
    if t.numel() != 1:
        raise ValueError(f"logit scale and bias must be scalars, got shape {tuple(t.shape)}")
    return _widen(t.reshape(()))


def _labels(rows: int, device: torch.device) -> Tensor:
    return torch.arange(rows, device=device) + global_row_offset(rows)


def _ce_rows(
    anchors: Tensor, cands: Tensor, positives: Tensor, scale: Tensor, bias: Tensor | None, tile: int | None
) -> Tensor:
    """Per-anchor CE(softmax over all candidates, own positive). `positives` are the anchors' own pairs."""
    if tile is None:
        logits = scale * anchors @ cands.T
        if bias is not None:
            logits = logits + bias
        return F.cross_entropy(logits, _labels(anchors.shape[0], anchors.device), reduction="none")
    lse = row_logsumexp(anchors, cands, scale, tile)
    positive = scale * (anchors * positives).sum(1)
    if bias is not None:
        # A shared bias cancels in a softmax CE; keep it in the graph so it gets its (zero) gradient.
        lse, positive = lse + bias, positive + bias
    return lse - positive


def infonce(
    x: Tensor, y: Tensor, logit_scale: Scale, logit_bias: Scale | None = None, *, tile_size: int | None = None
) -> Tensor:
    """CLIP loss ½[CE(L, diag) + CE(Lᵀ, diag)], L = s·X Yᵀ (+ b). Reference: open_clip `ClipLoss`."""
    check_tile_size(tile_size)
    x, y = _prepare("x", x, "y", y)
    with _full_precision(x.device):
        scale, bias = _scalar(logit_scale, x), _scalar(logit_bias, x)
        all_x, all_y = gather_with_grad(x), gather_with_grad(y)
        per_x = _ce_rows(x, all_y, y, scale, bias, tile_size)
        per_y = _ce_rows(y, all_x, x, scale, bias, tile_size)
        return 0.5 * (per_x.mean() + per_y.mean())


def siglip(x: Tensor, y: Tensor, logit_scale: Scale, logit_bias: Scale | None) -> Tensor:
    """SigLIP: −(1/B_local) Σ_ij log σ(z_ij (t·⟨x_i, y_j⟩ + b)), z = 2I − 1 (open_clip `SigLipLoss`).

    Each rank scores its rows against all gathered y (open_clip's neighbour exchange computes the same
    blocks one at a time) and divides by B_local, so the rank-mean is the full-batch loss.
    """
    x, y = _prepare("x", x, "y", y)
    with _full_precision(x.device):
        scale, bias = _scalar(logit_scale, x), _scalar(logit_bias, x)
        all_y = gather_with_grad(y)
        logits = scale * x @ all_y.T
        if bias is not None:
            logits = logits + bias
        rows = torch.arange(x.shape[0], device=x.device)
        signs = -torch.ones_like(logits)
        signs[rows, _labels(x.shape[0], x.device)] = 1.0
        return -F.logsigmoid(signs * logits).sum() / x.shape[0]


def _dense_weighted_rows(anchors: Tensor, cands: Tensor, scale: Tensor, weights: Tensor) -> Tensor:
    """(1/Σ_j w_ij) Σ_j w_ij · −log softmax_j(s⟨a_i, c_j⟩) per anchor row."""
    log_probs = F.log_softmax(scale * anchors @ cands.T, dim=1)
    return -(weights * log_probs).sum(1) / weights.sum(1)


def _tiled_weighted_rows(
    anchors: Tensor, cands: Tensor, scale: Tensor, frozen: Tensor, all_frozen: Tensor, tile: int
) -> Tensor:
    """The same rows without a B×B matrix.

    With Σ_j w_ij = W_i, the row is lse_i − s⟨a_i, Σ_j w_ij c_j⟩ / W_i. CWCL's w_ij = ½(1 + ⟨f_i, f_j⟩) is
    affine in f_i, so Σ_j w_ij c_j = ½(Σ_j c_j + f_i·(Fᵀ C)) and W_i = ½(B + ⟨f_i, Σ_j f_j⟩): exact, and only
    [D_f, D]-sized intermediates.
    """
    lse = row_logsumexp(anchors, cands, scale, tile)
    mixed = 0.5 * (cands.sum(0) + frozen @ (all_frozen.T @ cands))
    total_weight = 0.5 * (cands.shape[0] + frozen @ all_frozen.sum(0))
    return lse - scale * (anchors * mixed).sum(1) / total_weight


def cwcl_direction(direction: str) -> tuple[bool, bool]:
    """(is U→V weighted, is V→U weighted) for a direction name; raises on an unknown name."""
    if direction not in CWCL_DIRECTIONS:
        choices = ", ".join(CWCL_DIRECTIONS)
        raise ValueError(f"unknown CWCL direction '{direction}'; expected one of {choices}")
    return CWCL_DIRECTIONS[direction]


def _cwcl_terms(
    p: Tensor, q: Tensor, scale: Tensor, direction: str, tile: int | None,
    weighted: Callable[[Tensor, Tensor], Tensor],
) -> Tensor:
    """½[U→V + V→U]; each term is CWCL-weighted or plain InfoNCE as `direction` says."""
    weighted_u, weighted_v = cwcl_direction(direction)
    all_p, all_q = gather_with_grad(p), gather_with_grad(q)
    term_u = weighted(p, all_q) if weighted_u else _ce_rows(p, all_q, q, scale, None, tile)
    term_v = weighted(q, all_p) if weighted_v else _ce_rows(q, all_p, p, scale, None, tile)
    return 0.5 * (term_u.mean() + term_v.mean())


def cwcl(
    p: Tensor,
    q: Tensor,
    p_frozen: Tensor,
    logit_scale: Scale,
    direction: str = "u2v",
    *,
    tile_size: int | None = None,
) -> Tensor:
    """Continuously weighted contrastive loss (Srinivasa et al., NeurIPS 2023, arXiv 2309.14580).

    p: embeddings of the frozen-anchor modality U, q: of the trained modality V (both [B_local, D]);
    p_frozen: the frozen U tower's own embedding [B_local, D_f] (normalised here, never differentiated),
    giving w_ij = ½(1 + ⟨p̃_i, p̃_j⟩) ∈ [0, 1] with w_ii = 1. The weighted U→V row is
    (1/Σ_j w_ij) Σ_j w_ij · −log softmax_j(s⟨p_i, q_j⟩); V→U is plain InfoNCE ("u2v", the paper's choice).
    The paper sums the two directional terms and writes the plain contrastive loss as that same sum; mmembed's
    CLIP convention halves it, so the total here is ½[U→V + V→U], which with w = I equals `infonce` exactly.
    """
    check_tile_size(tile_size)
    p, q = _prepare("p", p, "q", q)
    if p_frozen.dim() != 2 or p_frozen.shape[0] != p.shape[0]:
        raise ValueError(f"p_frozen must be [B_local={p.shape[0]}, D_f], got {tuple(p_frozen.shape)}")
    with _full_precision(p.device):
        scale = _scalar(logit_scale, p)
        frozen = F.normalize(_widen(p_frozen.detach()).to(p.dtype), dim=1)
        all_frozen = gather_no_grad(frozen)
        if tile_size is None:
            weights = 0.5 * (1.0 + frozen @ all_frozen.T)
            weighted = lambda a, c: _dense_weighted_rows(a, c, scale, weights)
        else:
            weighted = lambda a, c: _tiled_weighted_rows(a, c, scale, frozen, all_frozen, tile_size)
        return _cwcl_terms(p, q, scale, direction, tile_size, weighted)


def cwcl_from_weights(
    p: Tensor, q: Tensor, weights: Tensor, logit_scale: Scale, direction: str = "u2v"
) -> Tensor:
    """Dense CWCL with explicit weights [B_local, B]: this rank's rows, all columns, each row sum > 0.

    For weightings other than the paper's cosine one; `weights = I` reproduces `infonce`.
    """
    p, q = _prepare("p", p, "q", q)
    with _full_precision(p.device):
        scale = _scalar(logit_scale, p)
        weights = _widen(weights.detach()).to(p.dtype)
        expected = (p.shape[0], p.shape[0] * rank_and_world()[1])
        if tuple(weights.shape) != expected:
            raise ValueError(f"weights must be [B_local, B] = {list(expected)}, got {tuple(weights.shape)}")
        weighted = lambda a, c: _dense_weighted_rows(a, c, scale, weights)
        return _cwcl_terms(p, q, scale, direction, None, weighted)


def _teacher_probs(rows: Sequence[Tensor], cols: Sequence[Tensor], scales: Sequence[float]) -> Tensor:
    """P = mean_k softmax_row(c_k · T_k U_kᵀ): averaged after the softmax, as MobileCLIP does."""
    return torch.stack([F.softmax(c * t @ u.T, dim=1) for t, u, c in zip(rows, cols, scales)]).mean(0)


def _clip_kd_rows(
    anchors: Tensor, cands: Tensor, positives: Tensor, scale: Tensor,
    teacher: tuple[Sequence[Tensor], Sequence[Tensor], Sequence[float]], tile: int | None,
) -> tuple[Tensor, Tensor]:
    """Per-anchor (CLIP CE, KD CE) sharing the student's log-sum-exp."""
    t_rows, t_cols, scales = teacher
    if tile is None:
        log_probs = F.log_softmax(scale * anchors @ cands.T, dim=1)
        rows = torch.arange(anchors.shape[0], device=anchors.device)
        clip = -log_probs[rows, _labels(anchors.shape[0], anchors.device)]
        return clip, -(_teacher_probs(t_rows, t_cols, scales) * log_probs).sum(1)
    lse = row_logsumexp(anchors, cands, scale, tile)
    clip = lse - scale * (anchors * positives).sum(1)
    # Σ_j P_ij = 1, so −Σ_j P_ij log softmax_ij = lse_i − Σ_j P_ij ℓ_ij, and Σ_j P_ij ℓ_ij = s⟨a_i, (P C)_i⟩.
    kd = lse - scale * (anchors * teacher_mix(cands, t_rows, t_cols, scales, tile)).sum(1)
    return clip, kd


def _prepare_teachers(
    name: str, teachers: Sequence[Tensor], rows: int, scales: Sequence[float], dtype: torch.dtype
) -> list[Tensor]:
    if len(teachers) != len(scales) or not teachers:
        raise ValueError(f"{name}: need one tensor per teacher scale ({len(scales)}), got {len(teachers)}")
    for k, t in enumerate(teachers):
        if t.dim() != 2 or t.shape[0] != rows:
            raise ValueError(f"{name}[{k}] must be [B_local={rows}, D_{k}], got {tuple(t.shape)}")
    return [_widen(t.detach()).to(dtype) for t in teachers]


def clip_and_distill(
    x: Tensor,
    y: Tensor,
    logit_scale: Scale,
    teacher_x: Sequence[Tensor],
    teacher_y: Sequence[Tensor],
    teacher_scales: Sequence[float],
    *,
    tile_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """(CLIP loss, MobileCLIP KD loss) from one pass over the student logits ℓ = s·X Yᵀ.

    KD = ½[CE(P, ℓ) + CE(P', ℓᵀ)] with P = mean_k softmax_row(c_k Ψxᵏ Ψyᵏᵀ) and P' its text-anchored
    counterpart mean_k softmax_row(c_k Ψyᵏ Ψxᵏᵀ); CE(P, ℓ) = −mean_i Σ_j P_ij log softmax_j(ℓ_i), the
    convention of open_clip's `DistillClipLoss` (a cross-entropy rather than a KL: same gradient, but the
    value includes the teacher's entropy).
    Teacher embeddings are L2-normalised [B_local, D_k], one per teacher, and receive no gradient.
    """
    check_tile_size(tile_size)
    x, y = _prepare("x", x, "y", y)
    with _full_precision(x.device):
        scale = _scalar(logit_scale, x)
        tx = _prepare_teachers("teacher_x", teacher_x, x.shape[0], teacher_scales, x.dtype)
        ty = _prepare_teachers("teacher_y", teacher_y, x.shape[0], teacher_scales, x.dtype)
        all_tx, all_ty = [gather_no_grad(t) for t in tx], [gather_no_grad(t) for t in ty]
        all_x, all_y = gather_with_grad(x), gather_with_grad(y)
        clip_x, kd_x = _clip_kd_rows(x, all_y, y, scale, (tx, all_ty, teacher_scales), tile_size)
        clip_y, kd_y = _clip_kd_rows(y, all_x, x, scale, (ty, all_tx, teacher_scales), tile_size)
        return 0.5 * (clip_x.mean() + clip_y.mean()), 0.5 * (kd_x.mean() + kd_y.mean())


def distill_kd(
    x: Tensor,
    y: Tensor,
    logit_scale: Scale,
    teacher_x: Sequence[Tensor],
    teacher_y: Sequence[Tensor],
    teacher_scales: Sequence[float],
    *,
    tile_size: int | None = None,
) -> Tensor:
    """MobileCLIP's KD term alone (see `clip_and_distill`); open_clip `DistillClipLoss`'s distill term."""
    return clip_and_distill(x, y, logit_scale, teacher_x, teacher_y, teacher_scales, tile_size=tile_size)[1]
