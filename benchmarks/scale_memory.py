"""Per-GPU memory of CLIP ViT-B/16, ViT-L/14 and ViT-H/14 image-text training under DDP and FSDP2 (docs/scale.md).

Three measurements, each on this machine's CPU, and the arithmetic that turns them into per-GPU numbers:

    params       parameter counts per tower and per block, from building each model (on the meta device: the
                 same modules and shapes, no memory)
    activations  bytes the forward saves for backward per sample, under bf16 autocast, with and without
                 per-block activation checkpointing (saved-tensor hooks; checkpointed blocks keep only their
                 inputs, which are added from their shapes)
    ranks        a real FSDP2 step of ViT-B/16 on 2 gloo processes: each rank's parameter, gradient and AdamW
                 bytes, summed over its tensors

    python benchmarks/scale_memory.py params activations ranks --out /tmp/scale_memory.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

MODELS = ("ViT-B-16", "ViT-L-14", "ViT-H-14")


def build(name: str, grad_checkpointing: bool = False) -> Any:
    from mmembed.config.model import TowerSpec
    from mmembed.towers import build_tower

    towers = {}
    for kind in ("open_clip_vision", "open_clip_text"):
        towers[kind] = build_tower(TowerSpec(type=kind, args={"model_name": name},
                                             grad_checkpointing=grad_checkpointing))
    return towers


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def measure_params() -> dict[str, Any]:
    out = {}
    for name in MODELS:
        with torch.device("meta"):
            towers = build(name)
        entry = {}
        for kind, tower in towers.items():
            blocks = tower.model.transformer.resblocks
            entry[kind] = {"params": count(tower), "blocks": len(blocks), "block_params": count(blocks[0]),
                           "width": int(blocks[0].ln_1.normalized_shape[0]),
                           "rest_params": count(tower) - sum(count(b) for b in blocks)}
        entry["total"] = sum(e["params"] for e in entry.values())
        out[name] = entry
        image, text = entry["open_clip_vision"]["params"], entry["open_clip_text"]["params"]
        print(f"{name}: {entry['total'] / 1e6:.1f} M parameters (image {image / 1e6:.1f} M, text {text / 1e6:.1f} M)")
    return out


class SavedBytes:
    """Bytes of distinct storages saved for backward while active."""

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def saved_per_forward(tower: Any, inputs: torch.Tensor) -> int:
    saved = SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t), torch.autocast("cpu", torch.bfloat16):
        out = tower.encode(inputs)
    del out
    return saved.total


def tower_inputs(kind: str, tower: Any, batch: int) -> torch.Tensor:
    if kind == "open_clip_vision":
        size = tower.image_size if isinstance(tower.image_size, int) else tower.image_size[0]
        return torch.randn(batch, 3, size, size)
    return torch.randint(1, 1000, (batch, int(tower.context_length)))


def measure_activations(batches: list[int]) -> dict[str, Any]:
    """Saved bytes per sample (slope between the batch sizes) with and without activation checkpointing."""
    torch.manual_seed(0)
    out: dict[str, Any] = {}
    for name in MODELS:
        out[name] = {}
        for ckpt in (False, True):
            towers = build(name, grad_checkpointing=ckpt)
            for kind, tower in towers.items():
                tower.train()
                sizes = []
                for b in batches:
                    start = time.perf_counter()
                    sizes.append(saved_per_forward(tower, tower_inputs(kind, tower, b)))
                    print(f"{name} {kind} ckpt={ckpt} batch {b}: {sizes[-1] / 2**20:.1f} MiB saved "
                          f"({time.perf_counter() - start:.0f} s)", flush=True)
                per_sample = (sizes[-1] - sizes[0]) / (batches[-1] - batches[0])
                blocks = tower.model.transformer.resblocks
                tokens = tower_tokens(kind, tower)
                # Checkpointed blocks keep their input (fp32 residual stream under autocast) outside the hooks.
                kept_inputs = len(blocks) * tokens * int(blocks[0].ln_1.normalized_shape[0]) * 4 if ckpt else 0
                out[name].setdefault(kind, {})["ckpt" if ckpt else "full"] = {
                    "saved_bytes": sizes, "batches": batches, "per_sample": per_sample + kept_inputs,
                    "block_inputs_added": kept_inputs}
            del towers
    return out


def tower_tokens(kind: str, tower: Any) -> int:
    if kind == "open_clip_text":
        return int(tower.context_length)
    grid = tower.model.grid_size
    return int(grid[0] * grid[1]) + 1


# -- a real FSDP2 step on 2 gloo processes ------------------------------------------------------------------
def _rank_bytes(rank: int, world: int, name: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from mmembed.config import load_recipe
    from mmembed.train.sharding import shard_model

    torch.set_num_threads(1)
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "clip_vit_b16_webdataset.yaml"
    config = load_recipe(recipe, ["train.precision=bf16"])
    from mmembed.model import build_model

    torch.manual_seed(0)
    model = build_model(config.model)
    shard_model(model, torch.device("cpu"), precision="bf16", reshard_after_forward=True, compile_blocks=False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    tokenize = model.preprocessors(False)["text"]
    batch = {"image": torch.randn(1, 3, 224, 224), "text": torch.stack([tokenize("a photo of a dog")])}
    from mmembed.losses.functional import infonce

    with torch.autocast("cpu", torch.bfloat16):
        emb = model(batch).embeddings
        loss = infonce(emb["image"], emb["text"], model.logit_scale("image", "text"))
    loss.backward()
    optimizer.step()

    def local(t: torch.Tensor) -> torch.Tensor:
        return t.to_local() if isinstance(t, DTensor) else t

    params = list(model.parameters())
    result = {
        "rank": rank, "world": world,
        "param_bytes": sum(local(p).numel() * local(p).element_size() for p in params),
        "grad_bytes": sum(local(p.grad).numel() * local(p.grad).element_size() for p in params if p.grad is not None),
        "optimizer_bytes": sum(local(v).numel() * local(v).element_size() for s in optimizer.state.values()
                               for v in s.values() if isinstance(v, torch.Tensor)),
        "full_param_bytes": sum(p.numel() * 4 for p in params),
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()


def _worker(rank: int, world: int, port: int, name: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        _rank_bytes(rank, world, name, out)
    finally:
        dist.destroy_process_group()


def measure_ranks(world: int = 2) -> list[dict[str, Any]]:
    import socket
    import tempfile

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(world, port, "ViT-B-16", out), nprocs=world, join=True)
        results = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]
    for r in results:
        mib = {k: r[k] / 2**20 for k in ("param_bytes", "full_param_bytes", "grad_bytes", "optimizer_bytes")}
        print(f"rank {r['rank']}: parameters {mib['param_bytes']:.1f} MiB of {mib['full_param_bytes']:.1f}, "
              f"gradients {mib['grad_bytes']:.1f} MiB, AdamW {mib['optimizer_bytes']:.1f} MiB")
    return results


# -- per-GPU arithmetic --------------------------------------------------------------------------------------
GIB = 2**30
# CUDA context, cuBLAS/NCCL workspaces and allocator slack: a typical figure, not measured here.
RESERVE = 3 * GIB


def states(model: dict[str, Any], gpus: int | None) -> dict[str, float]:
    """Bytes per GPU that do not depend on the batch. gpus=None: DDP."""
    p = model["total"]
    if gpus is None:
        # fp32 weights, fp32 gradients, AdamW's two fp32 moments, DDP's fp32 gradient buckets (accelerate keeps
        # gradient_as_bucket_view off), autocast's bf16 copies of the weights during forward/backward.
        return {"weights+grads+adam": 16 * p, "ddp buckets": 4 * p, "autocast copies": 2 * p}
    blocks = max(t["block_params"] for k, t in model.items() if k != "total")
    rest = max(t["rest_params"] for k, t in model.items() if k != "total")
    # Sharded fp32 weights, gradients, AdamW moments; in flight: two bf16 blocks gathered (current + prefetch)
    # with the current one's bf16 gradient and fp32 reduce-scatter input, and one fp32 rest unit (the text
    # tower's token embedding dominates) with its gradient and reduce-scatter input.
    return {"weights+grads+adam": 16 * p / gpus, "gathered units": (2 * 2 + 2 + 4) * blocks + 12 * rest}


def per_sample(acts: dict[str, Any], ckpt: bool) -> float:
    """Activation bytes per sample over both towers; with checkpointing also one block recomputed at a time."""
    total = 0.0
    for tower in acts.values():
        total += tower["ckpt" if ckpt else "full"]["per_sample"]
        if ckpt:
            total += tower["full"]["per_sample"] / tower.get("blocks", 1)
    return total


def report(results: dict[str, Any], budget: float = 80 * GIB) -> str:
    lines = ["| model | parameters | setup | weights, grads, AdamW (+ buckets, copies / gathered units) | "
             "activations per sample (full / checkpointed) | largest batch per GPU in 80 GB (full / ckpt) |",
             "|---|---|---|---|---|---|"]
    for name in MODELS:
        model, acts = results["params"][name], results["activations"][name]
        for kind in acts:
            acts[kind]["blocks"] = model[kind]["blocks"]
        full, ckpt = per_sample(acts, False), per_sample(acts, True)
        for label, gpus in (("DDP", None), ("FSDP2, 8 GPUs", 8), ("FSDP2, 64 GPUs", 64)):
            fixed = sum(states(model, gpus).values())
            fit = [max(0, math.floor((budget - RESERVE - fixed) / a)) for a in (full, ckpt)]
            lines.append(f"| {name} | {model['total'] / 1e6:.0f} M | {label} | {fixed / GIB:.1f} GiB | "
                         f"{full / 2**20:.0f} / {ckpt / 2**20:.1f} MiB | {fit[0]} / {fit[1]} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="+", choices=["params", "activations", "ranks", "report"])
    parser.add_argument("--batches", type=int, nargs=2, default=[1, 2])
    parser.add_argument("--out", default="scale_memory.json")
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": os.uname().nodename, "date": time.strftime("%Y-%m-%d"),
                               "torch": torch.__version__, "threads": torch.get_num_threads()}
    if Path(args.out).is_file():
        results.update(json.loads(Path(args.out).read_text()))
    for what in args.what:
        if what == "report":
            print(report(results))
            continue
        results[what] = {"params": measure_params, "ranks": measure_ranks,
                         "activations": lambda: measure_activations(args.batches)}[what]()
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
