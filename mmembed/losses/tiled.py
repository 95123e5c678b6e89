"""Tile-by-tile primitives that let contrastive losses avoid materialising a B×B logit matrix (Inf-CL).

Inf-CL (Wang et al., arXiv 2410.17243) observes that a softmax cross-entropy needs only, per anchor row, the
log-sum-exp over its logits and a few logits it already knows (the positive); everything else can be
computed tile by tile and discarded. Gradients are recomputed tile by tile from the saved per-row LSE, so
peak memory is O(tile² + B·D) instead of O(B²).

Two custom autograd functions cover every tiled loss in mmembed:
- `row_logsumexp(a, c, scale, tile)`: lse_i = log Σ_j exp(s·⟨a_i, c_j⟩), with gradients for a, c and s;
- `teacher_mix(c, teacher_rows, teacher_cols, teacher_scales, tile)`: P @ c where
  P = mean_k softmax_row(c_k · T_k Uₖᵀ) is the distillation target (teachers carry no gradient).

Both compute in float32 or wider with autocast off: at scale 100, bf16 logits lose the differences between
near-tied negatives that the loss is made of.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.autograd.function import FunctionCtx, once_differentiable


def check_tile_size(tile_size: int | None) -> None:
    if tile_size is None:
        return
    if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < 1:
        raise ValueError(f"tile_size must be a positive integer or None, got {tile_size!r}")


def _blocks(n: int, tile: int) -> Iterator[slice]:
    for start in range(0, n, tile):
        yield slice(start, min(start + tile, n))


def _no_autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device_type=device.type, enabled=False)


class _RowLogSumExp(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, a: torch.Tensor, c: torch.Tensor, scale: torch.Tensor, tile: int
    ) -> torch.Tensor:
        with _no_autocast(a.device):
            lse = a.new_full((a.shape[0],), float("-inf"))
            for rows in _blocks(a.shape[0], tile):
                for cols in _blocks(c.shape[0], tile):
                    logits = (a[rows] @ c[cols].T).mul_(scale)
                    lse[rows] = torch.logaddexp(lse[rows], torch.logsumexp(logits, dim=1))
        ctx.save_for_backward(a, c, scale, lse)
        ctx.tile = tile  # type: ignore[attr-defined]
        return lse

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: FunctionCtx, grad_lse: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        a, c, scale, lse = ctx.saved_tensors  # type: ignore[attr-defined]
        tile: int = ctx.tile  # type: ignore[attr-defined]
        grad_a, grad_c = torch.zeros_like(a), torch.zeros_like(c)
        grad_scale = torch.zeros((), dtype=a.dtype, device=a.device)
        with _no_autocast(a.device):
            for rows in _blocks(a.shape[0], tile):
                for cols in _blocks(c.shape[0], tile):
                    # d lse_i / d logit_ij = softmax_ij, weighted by row i's incoming gradient; built in
                    # place so that one tile-sized buffer is live at a time.
                    weights = (a[rows] @ c[cols].T).mul_(scale).sub_(lse[rows, None]).exp_()
                    weights.mul_(grad_lse[rows, None])
                    mixed = weights @ c[cols]
                    grad_a[rows] += scale * mixed
                    grad_c[cols] += scale * (weights.T @ a[rows])
                    # Σ_ij w_ij ⟨a_i, c_j⟩ = Σ_i ⟨a_i, (W C)_i⟩: reuses `mixed` instead of keeping the dots.
                    grad_scale += (a[rows] * mixed).sum()
        return grad_a, grad_c, grad_scale.reshape(scale.shape).to(scale.dtype), None


def row_logsumexp(a: torch.Tensor, c: torch.Tensor, scale: torch.Tensor, tile: int) -> torch.Tensor:
    """lse_i = log Σ_j exp(scale·⟨a_i, c_j⟩) for a [N, D] and c [M, D], never holding more than tile×tile."""
    check_tile_size(tile)
    scale = torch.as_tensor(scale, dtype=a.dtype, device=a.device)
    return _RowLogSumExp.apply(a, c, scale, int(tile))


def teacher_row_lse(rows: torch.Tensor, cols: torch.Tensor, scale: float, tile: int) -> torch.Tensor:
    """Per-row log-sum-exp of one teacher's fixed logits scale·rows colsᵀ (no gradient)."""
    with torch.no_grad():
        return row_logsumexp(rows, cols, torch.tensor(scale, dtype=rows.dtype, device=rows.device), tile)


def _teacher_tile(
    rows: slice,
    cols: slice,
    teacher_rows: Sequence[torch.Tensor],
    teacher_cols: Sequence[torch.Tensor],
    scales: Sequence[float],
    lses: Sequence[torch.Tensor],
) -> torch.Tensor:
    """One tile of P = mean_k softmax_row(c_k T_k U_kᵀ): averaged after the softmax, as MobileCLIP does."""
    total: torch.Tensor | None = None
    for t, u, s, lse in zip(teacher_rows, teacher_cols, scales, lses):
        probs = (t[rows] @ u[cols].T).mul_(s).sub_(lse[rows, None]).exp_()
        total = probs if total is None else total.add_(probs)
    assert total is not None
    return total.div_(len(scales))


class _TeacherMix(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, c: torch.Tensor, tile: int, scales: tuple[float, ...], n_teachers: int,
        *teachers: torch.Tensor,
    ) -> torch.Tensor:
        teacher_rows, teacher_cols = teachers[:n_teachers], teachers[n_teachers:]
        n_rows = teacher_rows[0].shape[0]
        with _no_autocast(c.device):
            lses = [teacher_row_lse(t, u, s, tile) for t, u, s in zip(teacher_rows, teacher_cols, scales)]
            out = c.new_zeros((n_rows, c.shape[1]))
            for rows in _blocks(n_rows, tile):
                for cols in _blocks(c.shape[0], tile):
                    out[rows] += _teacher_tile(rows, cols, teacher_rows, teacher_cols, scales, lses) @ c[cols]
        ctx.save_for_backward(*teacher_rows, *teacher_cols, *lses)
        ctx.meta = (tile, scales, n_teachers, c.shape[0])  # type: ignore[attr-defined]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        tile, scales, k, n_cols = ctx.meta  # type: ignore[attr-defined]
        saved = ctx.saved_tensors  # type: ignore[attr-defined]
        teacher_rows, teacher_cols, lses = saved[:k], saved[k : 2 * k], saved[2 * k :]
        grad_c = grad_out.new_zeros((n_cols, grad_out.shape[1]))
        with _no_autocast(grad_out.device):
            for rows in _blocks(teacher_rows[0].shape[0], tile):
                for cols in _blocks(n_cols, tile):
                    probs = _teacher_tile(rows, cols, teacher_rows, teacher_cols, scales, lses)
                    grad_c[cols] += probs.T @ grad_out[rows]
        return (grad_c, None, None, None) + (None,) * (2 * k)


def teacher_mix(
    c: torch.Tensor,
    teacher_rows: Sequence[torch.Tensor],
    teacher_cols: Sequence[torch.Tensor],
    teacher_scales: Sequence[float],
    tile: int,
) -> torch.Tensor:
    """P @ c with P = mean_k softmax_row(scale_k · teacher_rows[k] @ teacher_cols[k]ᵀ), tile by tile.

    c: [M, D] (differentiable); teacher_rows[k]: [N, D_k]; teacher_cols[k]: [M, D_k]. Returns [N, D].
    """
    check_tile_size(tile)
    if not (len(teacher_rows) == len(teacher_cols) == len(teacher_scales)) or not teacher_rows:
        raise ValueError(
            f"need one scale per teacher and at least one teacher, got {len(teacher_rows)} row sets, "
            f"{len(teacher_cols)} column sets and {len(teacher_scales)} scales"
        )
    teachers = [t.detach().to(c.dtype) for t in (*teacher_rows, *teacher_cols)]
    scales = tuple(float(s) for s in teacher_scales)
    return _TeacherMix.apply(c, int(tile), scales, len(teacher_rows), *teachers)
