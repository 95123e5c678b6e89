"""Sharded training state (FSDP2): each rank writes and reads back its own shards, and the shards are stitched
into a full model folder on demand. Everything is safetensors or JSON: nothing is unpickled, not even metadata.

    <checkpoint>/shards/model-rank{r}-of-{W}.safetensors   rank r's rows of every sharded parameter, and the
                                                           replicated parameters and buffers as rank r holds them
    <checkpoint>/shards/optim-rank{r}-of-{W}.safetensors   AdamW state of rank r's rows, keyed "<parameter>/<state>"
    <checkpoint>/shards/optim-groups.json                  the parameter groups: hyperparameters, parameter names

FSDP2 shards each parameter along dim 0 in world-size chunks (torch.chunk's sizes); a model file's safetensors
header records, for each sharded tensor, its full shape and the first row it holds, so stitching reads
nothing but the files. The rest of a checkpoint (objective, scheduler, per-rank RNG and data positions, the
checksums in trainer.json) is as for DDP: mmembed.train.checkpointing.
"""

from __future__ import annotations

import json
import re
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.distributed.tensor import DTensor, Shard

from mmembed.checkpoint import SHARDS_DIR
from mmembed.errors import CorruptFileError, MissingFileError
from mmembed.integrity import check_finite, load_safetensors_checked

GROUPS_FILE = f"{SHARDS_DIR}/optim-groups.json"
# safetensors header metadata key holding {tensor name: {"shape": [...], "offset": first row}}.
LAYOUT_KEY = "mmembed_shards"
RANK_FILE = re.compile(r"^(?:shards/(?:model|optim)-rank(\d+)-of-\d+\.safetensors|rank(\d+)\.pt)$")


def model_file(rank: int, world: int) -> str:
    return f"{SHARDS_DIR}/model-rank{rank}-of-{world}.safetensors"


def optim_file(rank: int, world: int) -> str:
    return f"{SHARDS_DIR}/optim-rank{rank}-of-{world}.safetensors"


def file_owner(name: str) -> int:
    """The rank that reads (and verifies) a checkpoint file: its own shards and RNG state; rank 0 the rest."""
    match = RANK_FILE.match(name)
    return int(match.group(1) or match.group(2)) if match else 0


def _row_offset(tensor: DTensor, rank: int) -> int:
    """First global row of `rank`'s chunk; FSDP2's dim-0 sharding uses torch.chunk's sizes."""
    if tuple(tensor.placements) != (Shard(0),):
        raise ValueError(f"expected FSDP2's dim-0 sharding, got placements {tensor.placements}")
    rows, world = tensor.shape[0], tensor.device_mesh.size()
    return min(rank * -(-rows // world), rows)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    # safetensors wants contiguous, unshared CPU storage.
    return local.detach().cpu().contiguous().clone()


# -- writing ------------------------------------------------------------------------------------------------
def write_model_shard(folder: Path, model: nn.Module, rank: int, world: int) -> str:
    """This rank's part of `model.state_dict()`; returns the file's name relative to `folder`."""
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, dict[str, Any]] = {}
    for key, value in model.state_dict().items():
        tensors[key] = _local(value)
        if isinstance(value, DTensor):
            layout[key] = {"shape": list(value.shape), "offset": _row_offset(value, rank)}
    name = model_file(rank, world)
    (folder / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / name), metadata={LAYOUT_KEY: json.dumps(layout, sort_keys=True)})
    return name


def _ordered_params(optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def write_optimizer_shard(folder: Path, optimizer: torch.optim.Optimizer, names: dict[int, str], rank: int,
                          world: int, write_groups: bool) -> list[str]:
    """This rank's AdamW state (and, on one rank, the parameter groups as JSON); returns the files written.

    `names` maps id(parameter) to its stable name ("towers.image...", "objective...")."""
    params = _ordered_params(optimizer)
    state = optimizer.state_dict()
    tensors = {f"{names[id(params[index])]}/{key}": _local(value)
               for index, entries in state["state"].items() for key, value in entries.items()}
    written = [optim_file(rank, world)]
    save_file(tensors, str(folder / written[0]))
    if write_groups:
        groups = [{**{k: v for k, v in group.items() if k != "params"},
                   "params": [names[id(params[i])] for i in group["params"]]} for group in state["param_groups"]]
        (folder / GROUPS_FILE).write_text(json.dumps(groups, indent=1) + "\n")
        written.append(GROUPS_FILE)
    return written


# -- reading ------------------------------------------------------------------------------------------------
def load_model_shard(folder: Path, model: nn.Module, rank: int, world: int) -> None:
    """Copy this rank's shard file into the (identically sharded) model, in place."""
    path = folder / model_file(rank, world)
    loaded = load_safetensors_checked(path)
    targets = model.state_dict()
    if loaded.keys() != targets.keys():
        extra, missing = sorted(loaded.keys() - targets.keys()), sorted(targets.keys() - loaded.keys())
        raise CorruptFileError(path, f"holds another model's tensors (unexpected {extra[:3]}, missing "
                                     f"{missing[:3]}); resume with the recipe that wrote it")
    with torch.no_grad():
        for key, target in targets.items():
            local = target.to_local() if isinstance(target, DTensor) else target
            if local.shape != loaded[key].shape:
                raise CorruptFileError(path, f"{key} has shape {tuple(loaded[key].shape)}, this rank's shard is "
                                             f"{tuple(local.shape)}")
            local.copy_(loaded[key])


def _as_state(value: torch.Tensor, param: nn.Parameter, key: str) -> torch.Tensor:
    """A loaded local tensor back in the form the optimizer keeps for `param` (a DTensor for a sharded one)."""
    if isinstance(param, DTensor) and key != "step":
        return DTensor.from_local(value.to(param.device), param.device_mesh, param.placements, run_check=False,
                                  shape=param.shape, stride=param.stride())
    return value


def load_optimizer_shard(folder: Path, optimizer: torch.optim.Optimizer, names: dict[int, str], rank: int,
                         world: int) -> None:
    path = folder / optim_file(rank, world)
    loaded = load_safetensors_checked(path)
    groups = read_groups(folder)
    params = _ordered_params(optimizer)
    by_name = {names[id(p)]: (i, p) for i, p in enumerate(params)}
    wanted = [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]
    if [g["params"] for g in groups] != wanted:
        raise CorruptFileError(folder / GROUPS_FILE, "its parameter groups differ from this run's optimizer; "
                                                     "resume with the recipe that wrote it")
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in loaded.items():
        name, _, entry = key.rpartition("/")
        if name not in by_name:
            raise CorruptFileError(path, f"holds state of unknown parameter {name}")
        index, param = by_name[name]
        state.setdefault(index, {})[entry] = _as_state(value, param, entry)
    offsets = _group_offsets(groups)
    param_groups = [{**{k: tuple(v) if isinstance(v, list) else v for k, v in group.items() if k != "params"},
                     "params": list(range(start, start + len(group["params"])))}
                    for group, start in zip(groups, offsets)]
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})


def _group_offsets(groups: list[dict[str, Any]]) -> list[int]:
    offsets, start = [], 0
    for group in groups:
        offsets.append(start)
        start += len(group["params"])
    return offsets


def read_groups(folder: Path) -> list[dict[str, Any]]:
    path = folder / GROUPS_FILE
    if not path.is_file():
        raise MissingFileError(f"{path} does not exist")
    try:
        groups = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFileError(path, f"not valid JSON: {err}") from err
    if not isinstance(groups, list) or not all(isinstance(g, dict) and "params" in g for g in groups):
        raise CorruptFileError(path, "not a list of parameter groups")
    return groups


# -- stitching ----------------------------------------------------------------------------------------------
def shard_files(folder: Path, world: int) -> list[Path]:
    paths = [folder / model_file(rank, world) for rank in range(world)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise MissingFileError(f"the sharded checkpoint {folder} lacks {missing[:3]}")
    return paths


def _open(stack: ExitStack, path: Path) -> Any:
    try:
        return stack.enter_context(safe_open(str(path), framework="pt"))
    except Exception as err:  # safetensors raises several types for damaged files
        raise CorruptFileError(path, f"unreadable shard file (truncated or damaged?): {err}") from err


def _layout(handle: Any, path: Path) -> dict[str, dict[str, Any]]:
    try:
        return json.loads((handle.metadata() or {}).get(LAYOUT_KEY, "{}"))
    except json.JSONDecodeError as err:
        raise CorruptFileError(path, f"its shard layout is not valid JSON: {err}") from err


def _stitch(key: str, shape: list[int], pieces: list[tuple[Path, torch.Tensor, int]]) -> torch.Tensor:
    """The full tensor from every rank's rows, checking that they tile it exactly."""
    rows = 0
    for path, piece, offset in pieces:
        if offset != rows:
            raise CorruptFileError(path, f"{key}: its rows start at {offset}, expected {rows}")
        rows += piece.shape[0]
    full = torch.cat([piece for _, piece, _ in pieces], dim=0)
    if list(full.shape) != list(shape):
        raise CorruptFileError(pieces[0][0], f"{key}: the shards give {list(full.shape)}, the layout says {shape}")
    return full


def consolidated_state(folder: Path, world: int) -> dict[str, torch.Tensor]:
    """The full model state dict from a checkpoint's shard files (rank 0's copy of everything replicated).

    Tensors are read one at a time, so the peak memory is the full model plus one tensor's shards."""
    paths = shard_files(folder, world)
    full: dict[str, torch.Tensor] = {}
    with ExitStack() as stack:
        handles = [_open(stack, p) for p in paths]
        layouts = [_layout(h, p) for h, p in zip(handles, paths)]
        names = handles[0].keys()  # a safetensors handle is not iterable
        for key in names:
            if key not in layouts[0]:
                full[key] = _checked(handles[0], key, paths[0])
                continue
            pieces = [(paths[r], _checked(handles[r], key, paths[r]), int(layouts[r][key]["offset"]))
                      for r in range(world)]
            full[key] = _stitch(key, layouts[0][key]["shape"], pieces)
    return full


def _checked(handle: Any, key: str, path: Path) -> torch.Tensor:
    try:
        tensor = handle.get_tensor(key)
    except Exception as err:  # a key missing on one rank, or damaged data
        raise CorruptFileError(path, f"cannot read {key}: {err}") from err
    check_finite({key: tensor}, path)
    return tensor


class ShardedLayout:
    """What CheckpointManager asks of the sharded format: each rank writes and loads its own shards."""

    name = "fsdp2-sharded"

    def __init__(self, param_names: dict[int, str]) -> None:
        # id(parameter) -> its stable name; the optimizer's state is stored under these names.
        self.param_names = param_names

    def write(self, folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, rank: int,
              world: int) -> list[str]:
        """This rank's shard files (relative names); rank 0 also writes the parameter groups."""
        files = [write_model_shard(folder, model, rank, world)]
        files += write_optimizer_shard(folder, optimizer, self.param_names, rank, world, write_groups=rank == 0)
        return files

    def load(self, folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, rank: int, world: int) -> None:
        load_model_shard(folder, model, rank, world)
        load_optimizer_shard(folder, optimizer, self.param_names, rank, world)
