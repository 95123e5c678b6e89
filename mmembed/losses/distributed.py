"""Cross-rank helpers for losses. They use torch.distributed directly, so losses need no accelerate."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank along dim 0; gradients flow back to each rank's own rows.

    torch.distributed.nn's all_gather sums the incoming gradients across ranks in its backward, which is
    what makes "local rows against all columns" give the full-batch gradient (open_clip --gather-with-grad).
    """
    _, world = rank_and_world()
    if world == 1:
        return x
    return torch.cat(dist_fn.all_gather(x), dim=0)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    _, world = rank_and_world()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def global_row_offset(local_rows: int) -> int:
    """First global row of this rank when every rank holds `local_rows` rows."""
    rank, _ = rank_and_world()
    return rank * local_rows
