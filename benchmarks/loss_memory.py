"""Peak memory and time of one forward+backward of the tiled InfoNCE against open_clip's ClipLoss.

    .venv/bin/python benchmarks/loss_memory.py                      # B = 4096, 16384, 32768; D = 512
    .venv/bin/python benchmarks/loss_memory.py --sizes 4096 --devices cpu

Both losses see the same L2-normalised float32 features [B, D] and a learnable logit scale, in one process
(no gather); "peak" is the memory the loss adds above its inputs, gradients of x and y included.

How memory is measured, and why:
- Every measurement runs in a fresh spawned process, so allocator caches, earlier peaks and the other
  implementation cannot leak into it.
- CPU: torch allocates with malloc, which `tracemalloc` does not see. Instead the child writes "5" to
  /proc/self/clear_refs, which resets the kernel's peak-RSS counter (VmHWM), right after building the
  inputs; peak = VmHWM after the step − VmRSS before it. For RSS to track live tensors, freed memory must go
  back to the kernel: the children run with a fixed MALLOC_MMAP_THRESHOLD_ (128 KiB), so every tensor above
  it is its own mmap, unmapped on free (glibc's default threshold adapts upwards after the first large free
  and then keeps freed tiles in the heap, which inflated the tiled peak 2x in our runs). Where clear_refs is
  not writable the child falls back to the `ru_maxrss` delta, which under-reports only if importing torch
  peaked higher than the loss does.
- CUDA: `torch.cuda.max_memory_allocated()` after `reset_peak_memory_stats()`, minus the allocation before.
- A dense run whose estimated need exceeds 80% of the free memory is skipped and reported as such, rather
  than letting the kernel kill it (or its neighbours). The estimate is five B×B float32 matrices: open_clip
  peaked at 4.1 of them at B = 4096 and 16384 (logits, log-softmax outputs and their gradients).
Time is the best of `--repeats` steps, after one untimed warm-up step on CUDA (none on CPU, where each step
costs minutes at B = 32k). CPU runs use `--threads` intra-op threads (default 1): on a shared 2-core machine
OpenMP's spin-waiting makes multi-threaded small ops up to 100x slower and the timings meaningless.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import os
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DENSE_MATRICES = 5  # B×B float32 matrices budgeted for open_clip's dense loss (see the docstring)


@dataclass
class Result:
    impl: str
    device: str
    batch: int
    peak_bytes: int | None  # None: skipped (would not fit)
    seconds: float | None  # best of the timed steps
    median_seconds: float | None = None


def _open_clip_loss(tile: int) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    from open_clip.loss import ClipLoss

    return ClipLoss()


def _tiled_loss(tile: int) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    from mmembed.losses.functional import infonce

    return lambda x, y, s: infonce(x, y, s, tile_size=tile)


IMPLS: dict[str, Callable[[int], Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]]] = {
    "open_clip": _open_clip_loss,
    "tiled": _tiled_loss,
}


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_cpu_peak() -> tuple[int, bool]:
    """(baseline bytes, whether the kernel's peak counter was reset)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return _proc_status_kib("VmRSS") * 1024, True
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, False


def _cpu_peak(reset: bool) -> int:
    if reset:
        return _proc_status_kib("VmHWM") * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _step(loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor) -> float:
    for t in (x, y, scale):
        t.grad = None
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    loss_fn(x, y, scale).backward()
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(
    impl: str, batch: int, dim: int, device: str, tile: int, repeats: int, threads: int
) -> tuple[int, list[float]]:
    """Run in a fresh process: (peak bytes above the inputs, seconds of each timed step)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    loss_fn = IMPLS[impl](tile)
    x = F.normalize(torch.randn(batch, dim, device=device), dim=1).requires_grad_()
    y = F.normalize(torch.randn(batch, dim, device=device), dim=1).requires_grad_()
    scale = torch.tensor(1 / 0.07, device=device, requires_grad=True)
    if device == "cuda":
        _step(loss_fn, x, y, scale)  # warm-up: kernel selection and allocator growth
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        times = [_step(loss_fn, x, y, scale) for _ in range(repeats)]
        return torch.cuda.max_memory_allocated() - base, times
    base, reset = _reset_cpu_peak()
    times = [_step(loss_fn, x, y, scale) for _ in range(repeats)]
    return _cpu_peak(reset) - base, times


def _free_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    with open("/proc/meminfo") as info:
        fields = {line.split(":")[0]: int(line.split()[1]) for line in info}
    return fields["MemAvailable"] * 1024


def run_one(impl: str, batch: int, args: argparse.Namespace, device: str) -> Result:
    if impl == "open_clip" and DENSE_MATRICES * 4 * batch * batch > 0.8 * _free_bytes(device):
        return Result(impl, device, batch, None, None)
    # Read by glibc when the spawned child starts (see the docstring); the parent is not affected.
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    spawn = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        job = pool.submit(measure, impl, batch, args.dim, device, args.tile, args.repeats, args.threads)
        peak, times = job.result()
    return Result(impl, device, batch, peak, min(times), statistics.median(times))


def _fmt(value: float | None, unit: str) -> str:
    return "skipped" if value is None else f"{value:.3g} {unit}"


def print_table(results: list[Result]) -> None:
    print(f"{'device':6} {'B':>6} | {'open_clip peak':>15} {'tiled peak':>12} {'mem ratio':>9} | "
          f"{'open_clip s':>11} {'tiled s':>9} {'time ratio':>10}")
    keys = sorted({(r.device, r.batch) for r in results})
    for device, batch in keys:
        got = {r.impl: r for r in results if (r.device, r.batch) == (device, batch)}
        dense, tiled = got["open_clip"], got["tiled"]
        mib = lambda r: None if r.peak_bytes is None else r.peak_bytes / 2**20
        mem_ratio = None if dense.peak_bytes is None else dense.peak_bytes / max(tiled.peak_bytes or 1, 1)
        time_ratio = None if dense.seconds is None else (tiled.seconds or 0.0) / dense.seconds
        print(f"{device:6} {batch:>6} | {_fmt(mib(dense), 'MiB'):>15} {_fmt(mib(tiled), 'MiB'):>12} "
              f"{_fmt(mem_ratio, 'x'):>9} | {_fmt(dense.seconds, 's'):>11} {_fmt(tiled.seconds, 's'):>9} "
              f"{_fmt(time_ratio, 'x'):>10}")
    print("mem ratio = open_clip peak / tiled peak (higher is better); time ratio = tiled / open_clip.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 32768])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--tile", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads per measurement")
    default_devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    parser.add_argument("--devices", nargs="+", default=default_devices, choices=["cpu", "cuda"])
    args = parser.parse_args()
    results = []
    for device in args.devices:
        for batch in args.sizes:
            for impl in IMPLS:
                results.append(run_one(impl, batch, args, device))
                r = results[-1]
                peak = _fmt(None if r.peak_bytes is None else r.peak_bytes / 2**20, "MiB")
                print(f"  {device} B={batch} {impl}: peak {peak}, {_fmt(r.seconds, 's')}", flush=True)
    print_table(results)


if __name__ == "__main__":
    main()
