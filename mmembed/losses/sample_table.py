"""Per-sample state of a loss: float tables indexed by dataset index, kept identical on every rank."""

from __future__ import annotations

import torch
from torch import nn

from mmembed.losses.distributed import gather_no_grad


def last_occurrence(index: torch.Tensor) -> torch.Tensor:
    """Position of the last occurrence of each distinct value: a deterministic winner for duplicate writes."""
    unique, inverse = torch.unique(index, return_inverse=True)
    positions = torch.arange(index.numel(), device=index.device)
    last = torch.full((unique.numel(),), -1, dtype=positions.dtype, device=index.device)
    return last.scatter_reduce_(0, inverse, positions, reduce="amax")


class SampleTable(nn.Module):
    """Float tables of length `num_samples` indexed by dataset index, plus a visit counter (all buffers).

    Buffers are part of state_dict, so checkpoints carry them. `write` all-gathers the local rows and every
    rank applies all of them, which keeps the tables identical across ranks.
    """

    def __init__(self, num_samples: int, initial: dict[str, float]) -> None:
        super().__init__()
        self.names = tuple(initial)
        for name, value in initial.items():
            self.register_buffer(name, torch.full((num_samples,), float(value)))
        self.register_buffer("visits", torch.zeros(num_samples, dtype=torch.long))

    def table(self, name: str) -> torch.Tensor:
        return getattr(self, name)

    def read(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: self.table(name)[index] for name in self.names}

    def first_visit(self, index: torch.Tensor) -> torch.Tensor:
        return self.visits[index] == 0

    @torch.no_grad()
    def write(self, index: torch.Tensor, rows: dict[str, torch.Tensor]) -> None:
        """Store every rank's `rows` (name -> [n_local]) at their gathered indices; count the visits."""
        names = list(rows)
        packed = gather_no_grad(torch.stack([rows[n].to(self.table(n).dtype) for n in names], dim=1))
        index_all = gather_no_grad(index)
        keep = last_occurrence(index_all)
        for column, name in enumerate(names):
            self.table(name)[index_all[keep]] = packed[keep, column]
        self.visits.index_put_((index_all,), torch.ones_like(index_all), accumulate=True)
