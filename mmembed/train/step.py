"""One optimisation step's forward/backward, plain or with contrastive accumulation.

Contrastive accumulation follows GradCache (Gao et al., 2021) rather than open_clip's --accum-freq replay:
the loss sees the embeddings of *all* micro-batches (so the negatives are those of the full batch), is
evaluated exactly once (stateful losses such as iSogCLR update their state once per step, and the logit
scale's gradient is counted once), and each micro-batch is then re-encoded with grad and back-propagated
through the cached embedding gradients. The parameter gradient equals that of one big batch.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mmembed.train.objective import BatchPart, Objective
from mmembed.train.sharding import is_sharded


@dataclass
class StepOutput:
    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    # Recipe pair index -> its weighted loss this step (detached); only the pairs the step trained.
    pair_losses: dict[int, torch.Tensor] = field(default_factory=dict)


def average_gradients(params: list[nn.Parameter]) -> None:
    """All-reduce-mean the .grad of `params` across ranks (for parameters outside DDP's reducer).

    As DDP with find_unused_parameters does: a parameter no rank gave a gradient keeps none (the optimizer
    skips it); one that only some ranks gave a gradient gets zeros on the others before averaging. Costs one
    extra all-reduce of one flag per parameter.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    params = list(params)
    if not params:
        return
    has_grad = torch.tensor([float(p.grad is not None) for p in params], device=params[0].device)
    dist.all_reduce(has_grad)
    used = [p for p, count in zip(params, has_grad.tolist(), strict=True) if count > 0]
    if not used:
        return
    for param in used:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
    grads = [p.grad for p in used]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset: offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def plain_step(accelerator: Any, model: nn.Module, objective: Objective, batch: dict,
               step: int, manual_sync: bool = False) -> StepOutput:
    """One batch's forward and backward. `manual_sync`: DDP does not reduce; gradients are averaged after
    backward, so parameters this batch leaves unused (another source's tower) keep no gradient on any rank
    (docs/design.md, "Multi-source training")."""
    unwrapped = accelerator.unwrap_model(model)
    sync_off = accelerator.no_sync(model) if manual_sync and accelerator.num_processes > 1 else nullcontext()
    with sync_off:
        with accelerator.autocast():
            out = model(batch)
            result = objective.over_parts(unwrapped, [BatchPart(out.embeddings, out.features, batch)], step)
        accelerator.backward(result.loss)
    if manual_sync:
        average_gradients(_trainable(unwrapped))
    return StepOutput(result.loss.detach(), result.terms, result.pair_losses)


def _as_leaves(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().requires_grad_(True) for k, v in tensors.items()}


def _surrogate(out: Any, part: BatchPart) -> torch.Tensor | None:
    """Σ ⟨fresh output, cached dL/d(output)⟩ over this micro-batch: its gradient is the true one."""
    total = None
    for fresh, cached in ((out.embeddings, part.embeddings), (out.features, part.features)):
        for name, leaf in cached.items():
            if leaf.grad is None or not fresh[name].requires_grad:
                continue
            term = (fresh[name].float() * leaf.grad).sum()
            total = term if total is None else total + term
    return total


def accumulated_step(
    accelerator: Any, model: nn.Module, objective: Objective, micro_batches: list[dict], step: int
) -> StepOutput:
    """GradCache: embed every micro-batch without grad, evaluate the loss once on the cached embeddings
    (micro-batches of different sources: each pair over those that train it), then re-encode each
    micro-batch with grad and back-propagate the cached embedding gradients."""
    unwrapped = accelerator.unwrap_model(model)
    with torch.no_grad(), accelerator.autocast():
        cached = [model(mb) for mb in micro_batches]
    parts = [BatchPart(_as_leaves(c.embeddings), _as_leaves(c.features), mb)
             for c, mb in zip(cached, micro_batches, strict=True)]
    # FSDP reduce-scatters after every backward into sharded gradients (no full-size copy to keep unsynced).
    sharded = is_sharded(unwrapped)
    sync_off = accelerator.no_sync(model) if accelerator.num_processes > 1 and not sharded else nullcontext()
    with sync_off:
        with accelerator.autocast():
            result = objective.over_parts(unwrapped, parts, step)
        accelerator.backward(result.loss)  # the GradScaler's factor is now inside the cached leaf gradients
        for part, mb in zip(parts, micro_batches, strict=True):
            with accelerator.autocast():
                surrogate = _surrogate(model(mb), part)
            if surrogate is not None:
                surrogate.backward()
    # DDP was told not to sync: average every trainable gradient ourselves, once (under FSDP the trainer
    # averages the replicated parameters).
    if not sharded:
        average_gradients(_trainable(unwrapped))
    return StepOutput(result.loss.detach(), result.terms, result.pair_losses)
