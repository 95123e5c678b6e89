"""FSDP2 building blocks: each tower's shard units, a sharded tower computing what the plain one does, the
gradient norm over shards, sharded checkpoint files (round trip and stitching, checked against torch's own
gather), and how a run decides to shard. End-to-end runs: tests/test_fsdp_train.py."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from dist_utils import run_distributed
from test_towers_common import make_tiny_bert, tiny_inputs, tiny_tower_args
from torch import nn

from mmembed.config.model import TowerSpec
from mmembed.errors import CorruptFileError, MissingFileError, UserError
from mmembed.towers import build_tower, list_towers

ALL_TOWERS = list_towers()


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def _build(name: str, hf_folder: Path) -> nn.Module:
    torch.manual_seed(0)
    return build_tower(TowerSpec(type=name, args=tiny_tower_args(name, hf_folder)))


@pytest.mark.parametrize("name", ALL_TOWERS)
def test_every_tower_names_its_repeated_blocks_as_units(name: str, hf_folder: Path) -> None:
    """Units are disjoint submodules with parameters, all of one kind (the repeated block or stage)."""
    tower = _build(name, hf_folder)
    units = type(tower).shard_spec.units(tower)
    assert len(units) >= 2, units
    modules = [tower.get_submodule(u) for u in units]
    assert all(any(True for _ in m.parameters()) for m in modules)
    assert len({type(m) for m in modules}) == 1, {type(m).__name__ for m in modules}
    assert not [a for a in units for b in units if a != b and a.startswith(f"{b}.")]
    for method in type(tower).shard_spec.forward_methods:
        assert callable(getattr(tower, method))


def _sharded_towers_match(rank: int, world: int, names: list[str], hf_folder: Path) -> dict[str, float]:
    """Each tower, sharded over the group, against an unsharded copy: the same features and gradients."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh

    from mmembed.train.sharding import _shard_tower

    worst = {}
    mesh = init_device_mesh("cpu", (world,))
    for name in names:
        tower = _build(name, hf_folder).train()
        plain = copy.deepcopy(tower)
        _shard_tower(tower, mesh, "no", reshard=True, compile_blocks=False)
        inputs = tiny_inputs(plain)
        torch.manual_seed(1)
        ref = plain.encode(inputs)
        ref.square().sum().backward()
        torch.manual_seed(1)
        out = tower.encode(inputs)  # encode, not forward: what the model calls
        out.square().sum().backward()
        grads = {n: p.grad.full_tensor() for n, p in tower.named_parameters() if p.grad is not None}
        ref_grads = {n: p.grad for n, p in plain.named_parameters() if p.grad is not None}
        assert grads.keys() == ref_grads.keys(), name
        full = get_model_state_dict(tower, options=StateDictOptions(full_state_dict=True))
        assert full.keys() == plain.state_dict().keys(), name  # names survive sharding
        worst[name] = max([(out - ref).abs().max().item()] + [(grads[n] - ref_grads[n]).abs().max().item()
                                                             for n in grads])
    # train.compile under FSDP compiles each unit in place (names kept); the tower's own call stays eager.
    tower = _build("open_clip_vision", hf_folder)
    _shard_tower(tower, mesh, "no", reshard=True, compile_blocks=True)
    units = [tower.get_submodule(u) for u in type(tower).shard_spec.units(tower)]
    worst["compiled units"] = float(not all(u._compiled_call_impl is not None for u in units)
                                    or tower._compiled_call_impl is not None)
    return worst


def test_sharded_towers_compute_what_plain_towers_do(hf_folder: Path) -> None:
    names = [n for n in ALL_TOWERS if n != "hf_audio"] + ["hf_audio"]  # hf_audio builds its model lazily
    tiny_tower_args("hf_audio", hf_folder)
    results = run_distributed(_sharded_towers_match, 2, names, hf_folder)
    for rank_result in results:
        assert set(rank_result) == {*names, "compiled units"}
        for name, worst in rank_result.items():
            assert worst < 1e-5, (name, worst)


# -- gradient norm over shards ------------------------------------------------------------------------------
def _clip_matches_torch(rank: int, world: int) -> tuple[float, float, float]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from mmembed.train.sharding import clip_grad_norm_

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 3))
    scale = nn.Parameter(torch.tensor(2.0))  # replicated, as a logit scale is
    plain = copy.deepcopy(model)
    fully_shard(model[0], mesh=init_device_mesh("cpu", (world,)))
    fully_shard(model[1], mesh=init_device_mesh("cpu", (world,)))
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(3))  # the same rows on every rank
    (model(x).sum() * scale).backward()
    (plain(x).sum() * scale.detach()).backward()
    scale.grad = torch.tensor(30.0)
    plain_scale = nn.Parameter(torch.tensor(2.0))
    plain_scale.grad = torch.tensor(30.0)
    expected = torch.nn.utils.clip_grad_norm_([*plain.parameters(), plain_scale], 1.0)
    total = clip_grad_norm_([*model.parameters(), scale], 1.0)
    full = torch.cat([p.grad.full_tensor().reshape(-1) for p in model.parameters()])
    ref = torch.cat([p.grad.reshape(-1) for p in plain.parameters()])
    return float(total - expected), float((full - ref).abs().max()), float(scale.grad - plain_scale.grad)


def test_clip_grad_norm_over_shards_is_the_full_gradient_norm() -> None:
    """Each rank holds half of each gradient; the norm and the clipped gradients are those of the whole."""
    # The replicated gradient (30, the same on both ranks) counts once, as torch counts it once.
    for norm_error, grad_error, scale_error in run_distributed(_clip_matches_torch, 2):
        assert abs(norm_error) < 1e-4 and grad_error < 1e-6 and abs(scale_error) < 1e-6


# -- sharded checkpoint files -------------------------------------------------------------------------------
class _Odd(nn.Module):
    """Row counts that do not split evenly over 2 ranks (7, 3), and one row (rank 1 holds none)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(5, 7), nn.Linear(7, 3)
        self.one = nn.Parameter(torch.randn(1, 4))
        self.register_buffer("count", torch.tensor([3.0, 4.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x)).sum() + self.one.sum() * x.sum()


def _sharded_odd(world: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = _Odd()
    fully_shard(model, mesh=init_device_mesh("cpu", (world,)))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _shard_round_trip(rank: int, world: int, folder: Path) -> dict[str, object]:
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from mmembed.train.sharded_checkpoint import ShardedLayout, consolidated_state

    model, optimizer = _sharded_odd(world)
    x = torch.randn(2, 5, generator=torch.Generator().manual_seed(rank))
    model(x).backward()
    optimizer.step()
    optimizer.zero_grad()
    names = {id(p): n for n, p in model.named_parameters()}
    layout = ShardedLayout(names)
    layout.write(folder, model, optimizer, rank, world)
    dist.barrier()
    gathered = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    stitched = consolidated_state(folder, world) if rank == 0 else gathered
    # Continue the original for one step; a fresh model and optimizer loaded from the files must do the same.
    model(x).backward()
    optimizer.step()
    fresh, fresh_optimizer = _sharded_odd(world)
    fresh(x).backward()  # creates state that loading must replace
    fresh_optimizer.step()
    fresh_optimizer.zero_grad()
    ShardedLayout({id(p): n for n, p in fresh.named_parameters()}).load(folder, fresh, fresh_optimizer, rank, world)
    fresh(x).backward()
    fresh_optimizer.step()
    same = all(torch.equal(a.to_local(), b.to_local()) for a, b in zip(model.parameters(), fresh.parameters()))
    return {"stitched_equals_torch": all(torch.equal(stitched[k], gathered[k]) for k in gathered)
            and stitched.keys() == gathered.keys(), "resumed_step_equal": same}


def test_shard_files_round_trip_and_stitch_to_torchs_full_state(tmp_path: Path) -> None:
    results = run_distributed(_shard_round_trip, 2, tmp_path)
    for result in results:
        assert result == {"stitched_equals_torch": True, "resumed_step_equal": True}
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["shards/model-rank0-of-2.safetensors", "shards/model-rank1-of-2.safetensors",
                     "shards/optim-groups.json", "shards/optim-rank0-of-2.safetensors",
                     "shards/optim-rank1-of-2.safetensors"]
    # JSON and safetensors only: nothing in a sharded checkpoint is a pickle.
    groups = json.loads((tmp_path / "shards" / "optim-groups.json").read_text())
    assert sorted(groups[0]["params"]) == ["a.bias", "a.weight", "b.bias", "b.weight", "one"]


def _rewrite_layout(path: Path, edit: object) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from mmembed.train.sharded_checkpoint import LAYOUT_KEY

    with safe_open(str(path), framework="pt") as handle:
        layout = json.loads(handle.metadata()[LAYOUT_KEY])
    edit(layout)
    save_file(load_file(str(path)), str(path), metadata={LAYOUT_KEY: json.dumps(layout)})


def test_stitching_refuses_shards_that_do_not_tile_a_tensor(tmp_path: Path) -> None:
    from mmembed.train.sharded_checkpoint import consolidated_state

    run_distributed(_shard_round_trip, 2, tmp_path)
    rank1 = tmp_path / "shards" / "model-rank1-of-2.safetensors"
    _rewrite_layout(rank1, lambda layout: layout["a.weight"].update(offset=3))
    with pytest.raises(CorruptFileError, match=r"a\.weight: its rows start at 3, expected 4"):
        consolidated_state(tmp_path, 2)
    rank1.unlink()
    with pytest.raises(MissingFileError, match="model-rank1-of-2"):
        consolidated_state(tmp_path, 2)


# -- deciding to shard --------------------------------------------------------------------------------------
def test_sharding_follows_the_launch_config_unless_the_recipe_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    from mmembed.train.sharding import resolve_sharding

    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert resolve_sharding("auto") == "ddp" and resolve_sharding("fsdp") == "fsdp"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    assert resolve_sharding("auto") == "fsdp"
    with pytest.raises(UserError, match=r"train\.sharding: ddp"):
        resolve_sharding("ddp")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(UserError, match=r"fsdp_version: 2"):
        resolve_sharding("auto")


def test_block_units_gather_bf16_and_keep_batchnorm_units_in_fp32() -> None:
    from mmembed.train.sharding import unit_policy

    block, bn_stage = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), nn.Sequential(nn.Conv2d(3, 3, 1),
                                                                                     nn.BatchNorm2d(3))
    assert unit_policy(block, "bf16", block=True).param_dtype == torch.bfloat16
    assert unit_policy(block, "bf16", block=True).reduce_dtype == torch.float32
    assert unit_policy(bn_stage, "bf16", block=True).param_dtype is None
    assert unit_policy(block, "bf16", block=False).param_dtype is None  # the rest of a tower, a head
    assert unit_policy(block, "no", block=True).param_dtype is None


def test_fp16_with_fsdp_is_refused_in_one_line() -> None:
    from mmembed.train.sharding import shard_model

    with pytest.raises(UserError, match=r"fp16.*bf16"):
        shard_model(nn.Module(), torch.device("cpu"), precision="fp16", reshard_after_forward=True,
                    compile_blocks=False)
