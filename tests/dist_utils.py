"""Run a function in several gloo CPU processes and collect each rank's return value.

Distributed code is tested on CPU: `run_distributed(fn, 2, *args)` starts two processes that form a gloo
process group on 127.0.0.1, calls `fn(rank, world_size, *args)` in each and returns the ranks' results in
rank order. `fn` must be a module-level (picklable) function; its return value must be picklable and should
hold CPU tensors. Results travel through `torch.save` files rather than a queue because tensors sent through
a torch multiprocessing queue live in shared memory owned by the child, which is gone once the child exits.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(
    rank: int, world_size: int, port: int, out_dir: str, fn: Callable[..., Any], args: tuple[Any, ...]
) -> None:
    # The test machines have few cores; one intra-op thread per rank keeps the ranks from starving each other.
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_distributed(fn: Callable[..., Any], world_size: int = 2, *args: Any) -> list[Any]:
    """Call `fn(rank, world_size, *args)` in `world_size` gloo processes; return their results by rank.

    A failure in any rank re-raises in the caller with that rank's traceback (torch.multiprocessing.spawn).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    with tempfile.TemporaryDirectory(prefix="mmembed_dist_") as out_dir:
        mp.spawn(_worker, args=(world_size, _free_port(), out_dir, fn, args), nprocs=world_size, join=True)
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
