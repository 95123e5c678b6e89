"""FSDP2 for mmembed: whether a run shards, how the model is split into units, and the two parts of a step that
change when parameters are sharded (averaging the gradients of replicated parameters, clipping the norm).

mmembed applies torch's `fully_shard` itself, per tower, from each tower class's `shard_spec`, and keeps
accelerate for launching, process groups, devices and autocast; why, and what is sharded or replicated:
docs/design.md, "Sharding (FSDP2)". The sharded checkpoint format is in `sharded_checkpoint.py`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor

from mmembed.errors import UserError

log = logging.getLogger("mmembed.train")

# What `accelerate launch` exports for a config with `distributed_type: FSDP` (launch/fsdp_node.yaml).
FSDP_LAUNCH_ENV = "ACCELERATE_USE_FSDP"
FSDP_VERSION_ENV = "FSDP_VERSION"


def launch_requests_fsdp() -> bool:
    """Whether `accelerate launch` ran this process from an FSDP config (which must ask for FSDP2)."""
    if os.environ.get(FSDP_LAUNCH_ENV, "false").lower() != "true":
        return False
    version = os.environ.get(FSDP_VERSION_ENV, "1")
    if version != "2":
        raise UserError(f"the launch config asks for FSDP version {version}; mmembed shards with FSDP2: set "
                        "fsdp_config.fsdp_version: 2 (as launch/fsdp_node.yaml does)")
    return True


def resolve_sharding(setting: str) -> str:
    """'ddp' or 'fsdp' for the recipe's train.sharding ('auto' follows the launch config)."""
    launched = launch_requests_fsdp()
    if setting == "auto":
        return "fsdp" if launched else "ddp"
    if setting == "ddp" and launched:
        raise UserError("the launch config asks for FSDP (distributed_type: FSDP) but the recipe sets "
                        "train.sharding: ddp; launch with a DDP config (launch/gpu_node.yaml) or set "
                        "train.sharding=fsdp (or auto)")
    return setting


@contextmanager
def accelerate_unaware_of_fsdp() -> Iterator[None]:
    """Create accelerate's state as for DDP: on GPUs an FSDP launch switches accelerate into its own FSDP mode,
    whose prepare() would wrap the model a second way (on CPUs accelerate ignores FSDP altogether)."""
    saved = os.environ.pop(FSDP_LAUNCH_ENV, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[FSDP_LAUNCH_ENV] = saved


def ensure_process_group(device: torch.device) -> None:
    """FSDP needs a process group even for one process (e.g. `mmembed train` with train.sharding: fsdp)."""
    if dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


# -- applying FSDP2 -----------------------------------------------------------------------------------------
@dataclass
class ShardReport:
    """What `shard_model` did, for the start-up line."""

    world_size: int
    precision: str
    parts: list[str] = field(default_factory=list)
    replicated: list[str] = field(default_factory=list)


def _has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def unit_policy(module: nn.Module, precision: str, block: bool) -> MixedPrecisionPolicy:
    """bf16 blocks with fp32 gradient reduction; fp32 for the rest.

    Blocks hold most weights and FLOPs: under bf16 FSDP gathers their weights in bf16 and casts their inputs
    to bf16, so the residual stream between blocks is bf16 (as in open_clip's and torchtitan's FSDP2). The rest
    of a tower (stems, embeddings, final norms, projections, the audio front end) and the heads keep fp32
    weights and take their inputs as they come, as do blocks with BatchNorm (its running statistics stay fp32
    buffers, which not every kernel accepts next to bf16 weights); autocast runs around the forward as under
    DDP and gives each op of these its precision.
    """
    if precision != "bf16" or not block or _has_batch_norm(module):
        return MixedPrecisionPolicy(cast_forward_inputs=False)
    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


def _shard_tower(tower: nn.Module, mesh: object, precision: str, reshard: bool, compile_blocks: bool) -> int:
    """Shard each unit of the tower's shard_spec, then the rest of it as one more unit; return the unit count."""
    spec = type(tower).shard_spec
    names = spec.units(tower)
    nested = [a for a in names for b in names if a != b and a.startswith(f"{b}.")]
    if nested:
        raise ValueError(f"{type(tower).__name__}.shard_spec names nested units: {nested[:3]}")
    # A frozen tower never runs backward, which is where a kept-unsharded unit would be freed again.
    reshard = reshard or not any(p.requires_grad for p in tower.parameters())
    for name in names:
        unit = tower.get_submodule(name)
        if compile_blocks:
            unit.compile()  # in place, so parameter names stay the same; FSDP's hooks run outside the graph
        fully_shard(unit, mesh=mesh, reshard_after_forward=reshard,
                    mp_policy=unit_policy(unit, precision, block=True))
    fully_shard(tower, mesh=mesh, reshard_after_forward=reshard, mp_policy=unit_policy(tower, precision, False))
    for method in spec.forward_methods:
        register_fsdp_forward_method(tower, method)
    return len(names)


def shard_model(model: nn.Module, device: torch.device, *, precision: str, reshard_after_forward: bool,
                compile_blocks: bool) -> ShardReport:
    """Apply FSDP2 to a MultiModalModel in place: every tower per its shard_spec units, every head with
    parameters as one unit. A frozen tower with a feature cache stays replicated: the cache decides per rank
    whether the tower runs at all, so its forward cannot be a collective. Logit scales and biases (scalars)
    stay replicated; `replicated_trainable` names them for gradient averaging."""
    if precision == "fp16":
        raise UserError("train.precision: fp16 with train.sharding: fsdp is not supported (its gradient scaler "
                        "would see only each rank's shard of the gradients); use bf16")
    mesh = init_device_mesh(device.type, (world_size(),))
    report = ShardReport(world_size(), precision)
    for modality, tower in model.towers.items():
        kind = type(tower).__name__
        if model.feature_cache(modality) is not None:
            report.replicated.append(f"{modality} ({kind}, frozen and cached)")
            continue
        units = _shard_tower(tower, mesh, precision, reshard_after_forward, compile_blocks)
        frozen = "" if any(p.requires_grad for p in tower.parameters()) else ", frozen"
        report.parts.append(f"{modality} ({kind}{frozen}): {units} blocks + rest")
    heads = [m for m, head in model.heads.items() if any(True for _ in head.parameters())]
    for modality in heads:
        head = model.heads[modality]
        fully_shard(head, mesh=mesh, reshard_after_forward=reshard_after_forward,
                    mp_policy=unit_policy(head, precision, block=False))
    if heads:
        report.parts.append(f"heads of {', '.join(heads)}")
    scalars = len(model.logit_scales) + len(model.logit_biases)
    report.replicated.append(f"{scalars} logit scale/bias scalar(s)")
    model.to(device)  # the replicated parts; FSDP already placed the shards
    return report


def is_sharded(module: nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in module.parameters())


def replicated_trainable(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """Trainable parameters FSDP does not own: their gradients must be averaged over ranks by mmembed."""
    return [p for p in params if p.requires_grad and not isinstance(p, DTensor)]


def split_sharded_groups(groups: list[dict]) -> list[dict]:
    """Each optimizer group split into its sharded and its replicated parameters (same hyperparameters):
    one optimizer kernel call takes one group, and it refuses a mix of DTensors and plain tensors."""
    split = []
    for group in groups:
        for sharded in (True, False):
            params = [p for p in group["params"] if isinstance(p, DTensor) == sharded]
            if params:
                split.append({**group, "params": params})
    return split


# -- bytes per rank -----------------------------------------------------------------------------------------
def _local_bytes(p: torch.Tensor) -> int:
    local = p.to_local() if isinstance(p, DTensor) else p
    return local.numel() * local.element_size()


def _full_bytes(p: torch.Tensor) -> int:
    return p.numel() * p.element_size()


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def memory_line(params: list[nn.Parameter], sharded: bool, report: ShardReport | None) -> str:
    """One line: what is sharded and what each rank holds (parameters, gradients, AdamW moments)."""
    trainable = [p for p in params if p.requires_grad]
    local = sum(_local_bytes(p) for p in params)
    local_trainable = sum(_local_bytes(p) for p in trainable)
    total = sum(_full_bytes(p) for p in params)
    per_rank = (f"per rank: parameters {_mib(local)} of {_mib(total)}, gradients {_mib(local_trainable)}, "
                f"AdamW moments {_mib(2 * local_trainable)}")
    if not sharded or report is None:
        return f"sharding: none (DDP, a full replica per rank over {world_size()} rank(s)); {per_rank}"
    gathered = "all-gather bf16 (blocks), reduce fp32" if report.precision == "bf16" else "fp32"
    return (f"sharding: FSDP2 over {report.world_size} rank(s), {gathered}; sharded: {'; '.join(report.parts)}; "
            f"replicated: {', '.join(report.replicated)}; {per_rank}")


# -- the step -----------------------------------------------------------------------------------------------
def clip_grad_norm_(params: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ over sharded and replicated gradients together.

    The norm is that of the full gradient: the squares of each rank's (disjoint) shards are summed over ranks,
    replicated gradients (equal on every rank) are counted once.
    """
    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g.to_local() for g in grads if isinstance(g, DTensor)]
    plain = [g for g in grads if not isinstance(g, DTensor)]
    device = (sharded or plain)[0].device if grads else torch.device("cpu")
    square = torch.zeros((), dtype=torch.float32, device=device)
    for g in sharded:
        square += g.float().pow(2).sum()
    if world_size() > 1:
        dist.all_reduce(square)
    for g in plain:
        square += g.float().pow(2).sum()
    total = square.sqrt()
    coefficient = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in [*sharded, *plain]:
        g.mul_(coefficient.to(g.dtype))
    return total
