"""One optimisation step's forward/backward, plain or with contrastive accumulation.

Contrastive accumulation follows GradCache (Gao et al., 2021) rather than open_clip's --accum-freq replay:
the loss sees the embeddings of *all* micro-batches (so the negatives are those of the full batch), is
evaluated exactly once (stateful losses such as iSogCLR update their state once per step, and the logit
scale's gradient is counted once), and each micro-batch is then re-encoded with grad and back-propagated
through the cached embedding gradients. The parameter gradient equals that of one big batch.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mmembed.train.batching import batch_size_of, merge_batches
from mmembed.train.objective import Objective
from mmembed.train.sharding import is_sharded


@dataclass
class StepOutput:
    loss: torch.Tensor
    terms: dict[str, torch.Tensor]


def average_gradients(params: list[nn.Parameter]) -> None:
    """All-reduce-mean the .grad of `params` across ranks (for parameters outside DDP's reducer)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset: offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def plain_step(accelerator: Any, model: nn.Module, objective: Objective, batch: dict,
               step: int) -> StepOutput:
    unwrapped = accelerator.unwrap_model(model)
    with accelerator.autocast():
        out = model(batch)
        loss, terms = objective(unwrapped, out.embeddings, out.features, batch, step)
    accelerator.backward(loss)
    return StepOutput(loss.detach(), terms)


def _as_leaves(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().requires_grad_(True) for k, v in tensors.items()}


def _surrogate(out: Any, leaves: tuple[dict, dict], rows: slice) -> torch.Tensor | None:
    """Σ ⟨fresh output, cached dL/d(output)⟩ over this micro-batch's rows: its gradient is the true one."""
    total = None
    for fresh, cached in ((out.embeddings, leaves[0]), (out.features, leaves[1])):
        for name, leaf in cached.items():
            if leaf.grad is None or not fresh[name].requires_grad:
                continue
            term = (fresh[name].float() * leaf.grad[rows]).sum()
            total = term if total is None else total + term
    return total


def accumulated_step(
    accelerator: Any, model: nn.Module, objective: Objective, micro_batches: list[dict], step: int
) -> StepOutput:
    unwrapped = accelerator.unwrap_model(model)
    with torch.no_grad(), accelerator.autocast():
        cached = [model(mb) for mb in micro_batches]
    embeddings = _as_leaves(merge_batches([c.embeddings for c in cached]))
    features = _as_leaves(merge_batches([c.features for c in cached]))
    full_batch = merge_batches(micro_batches)
    # FSDP reduce-scatters after every backward into sharded gradients (no full-size copy to keep unsynced).
    sharded = is_sharded(unwrapped)
    sync_off = accelerator.no_sync(model) if accelerator.num_processes > 1 and not sharded else nullcontext()
    with sync_off:
        with accelerator.autocast():
            loss, terms = objective(unwrapped, embeddings, features, full_batch, step)
        accelerator.backward(loss)  # the GradScaler's factor is now inside the cached leaf gradients
        start = 0
        for mb in micro_batches:
            rows = slice(start, start + batch_size_of(mb))
            start = rows.stop
            with accelerator.autocast():
                surrogate = _surrogate(model(mb), (embeddings, features), rows)
            if surrogate is not None:
                surrogate.backward()
    # DDP was told not to sync: average every trainable gradient ourselves, once (under FSDP the trainer
    # averages the replicated parameters).
    if not sharded:
        average_gradients([p for p in unwrapped.parameters() if p.requires_grad])
    return StepOutput(loss.detach(), terms)
