"""The GPU suite's in-process facts about the train-step model: the largest batch that fits, the FLOPs of one
step (torch.utils.flop_counter), the step time without data loading, and the device's bf16 peak.

    python benchmarks/suite_probe.py RECIPE --device cuda --start 256 --cap 8192

RECIPE is the mmembed recipe the suite's trainer runs use (benchmarks/train_step.py writes it), so the probe
builds exactly that model, loss and (fused) AdamW. `benchmarks/gpu_suite.py` runs this in its own process,
so that its CUDA memory is released before the trainers start; the last line printed is one JSON object.

Batch probe: powers of two from --start, each tried with two full steps (the second holds AdamW's state),
until one runs out of memory, peaks above --memory-fraction of the device's memory (the trainers need
headroom: loader pinned memory, allocator fragmentation), or exceeds --cap. On CPU no run is refused for
memory: the probe simply stops at --cap (the same code runs, which is what the CPU smoke test checks).
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from NVIDIA's datasheets; first match wins.
# Devices not listed get no MFU ("unknown peak"), never a guess.
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"\bH100\b.*\bPCIe\b", 756.0),
    (r"\bH100\b.*\bNVL\b", 835.0),
    (r"\bH100\b", 989.0),  # SXM (HBM3)
    (r"\bGH200\b", 989.0),
    (r"\bH200\b", 989.0),
    (r"\bA100\b", 312.0),
    (r"\bL40S\b", 362.0),
    (r"\bA10\b", 125.0),
    (r"\bL4\b", 121.0),
)

FITS = "fits"


def bf16_peak_flops(device_name: str) -> float | None:
    """FLOP/s of the device's dense bf16 peak, or None when the device is not in the table."""
    for pattern, tflops in BF16_PEAK_TFLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return tflops * 1e12
    return None


def probe_batch(verdict: Callable[[int], str], start: int, cap: int) -> tuple[int | None, dict[int, str]]:
    """Double the batch from `start` while `verdict(batch)` says FITS and batch <= cap.

    Returns (largest batch that fitted or None, {batch: verdict} for every batch tried)."""
    best, tried, size = None, {}, start
    while size <= cap:
        tried[size] = verdict(size)
        if tried[size] != FITS:
            break
        best, size = size, size * 2
    return best, tried


class StepModel:
    """The recipe's model, objective and optimizer on one device, with a synthetic batch of any size."""

    def __init__(self, recipe: Path, device: torch.device) -> None:
        from mmembed.model import build_model
        from mmembed.recipe import load_recipe
        from mmembed.train.objective import Objective
        from mmembed.train.optim import build_optimizer, param_groups

        config = load_recipe(recipe)
        self.device, self.precision = device, config.train.precision
        torch.manual_seed(0)
        self.model = build_model(config.model).to(device)
        self.objective = Objective(config.model.pairs).to(device)
        named = [*self.model.named_parameters(), *(("objective." + n, p) for n, p in self.objective.named_parameters())]
        self.optimizer = build_optimizer(param_groups(named, set(self.model.no_weight_decay()), config.optim),
                                         config.optim)
        self.one = self._one_sample(config.data.synthetic_image_size)

    def _one_sample(self, image_size: int) -> dict[str, torch.Tensor]:
        from mmembed.data.synthetic import build_synthetic_loader

        loader = build_synthetic_loader(self.model.preprocessors(True), image_size=image_size, batch_size=1,
                                        num_workers=0)
        batch = next(iter(loader))
        return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and not k.startswith("__")}

    def batch(self, size: int) -> dict[str, torch.Tensor]:
        return {k: v.expand(size, *v.shape[1:]).contiguous().to(self.device) for k, v in self.one.items()}

    def forward_backward(self, batch: dict[str, torch.Tensor]) -> None:
        enabled = self.precision == "bf16"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled):
            out = self.model(batch)
            loss, _ = self.objective(self.model, out.embeddings, out.features, batch, 0)
        loss.backward()

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        self.forward_backward(batch)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def release(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def two_steps(job: StepModel, size: int) -> None:
    """Two full steps at `size` (the second one holds AdamW's state); the batch dies with this frame."""
    batch = job.batch(size)
    for _ in range(2):
        job.step(batch)
    job.sync()


def cuda_verdict(job: StepModel, memory_fraction: float, peaks: dict[int, int]) -> Callable[[int], str]:
    total = torch.cuda.get_device_properties(job.device).total_memory

    def verdict(size: int) -> str:
        torch.cuda.reset_peak_memory_stats()
        try:
            two_steps(job, size)
            out_of_memory = False
        except torch.OutOfMemoryError:
            out_of_memory = True
        # Outside the except block: the exception (and the frames holding the batch) is gone by now.
        job.release()
        if out_of_memory:
            return "out of memory"
        peaks[size] = torch.cuda.max_memory_allocated()
        if peaks[size] > memory_fraction * total:
            return f"peak {peaks[size] / 2**30:.1f} GiB > {memory_fraction:.0%} of {total / 2**30:.1f} GiB"
        return FITS

    return verdict


def cpu_verdict(job: StepModel) -> Callable[[int], str]:
    def verdict(size: int) -> str:
        two_steps(job, size)
        return FITS

    return verdict


def _cpu_attention_formulas() -> dict[Any, Callable[..., int]]:
    """torch's counter knows the CUDA attention kernels but not the CPU one (fused attention there would count
    0 FLOPs); the same formulas apply to it."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    def forward(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return sdpa_flop_count(query, key, value)

    def backward(grad: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None,
                 **kwargs: Any) -> int:
        return sdpa_backward_flop_count(grad, query, key, value)

    return {aten._scaled_dot_product_flash_attention_for_cpu: forward,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: backward}


def count_step_flops(job: StepModel, batch: dict[str, torch.Tensor]) -> int:
    """FLOPs of forward + loss + backward as torch.utils.flop_counter counts them (matmuls, convolutions,
    attention, causal attention counted in full); elementwise work and the optimizer are not counted, as in
    the usual MFU convention."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_cpu_attention_formulas()) as counter:
        job.forward_backward(batch)
    job.release()
    return int(counter.get_total_flops())


def pure_step_seconds(job: StepModel, batch: dict[str, torch.Tensor], repeats: int) -> list[float]:
    """Seconds per full step with the batch already on the device (no data loading), after one warm-up."""
    job.step(batch)
    times = []
    for _ in range(repeats):
        job.sync()
        start = time.perf_counter()
        job.step(batch)
        job.sync()
        times.append(time.perf_counter() - start)
    return times


def run_probe(recipe: Path, device: torch.device, start: int, cap: int, memory_fraction: float,
              repeats: int) -> dict[str, Any]:
    job = StepModel(recipe, device)
    peaks: dict[int, int] = {}
    verdict = cuda_verdict(job, memory_fraction, peaks) if device.type == "cuda" else cpu_verdict(job)
    best, tried = probe_batch(verdict, start, cap)
    result: dict[str, Any] = {"batch": best, "tried": {str(k): v for k, v in tried.items()},
                              "peak_bytes": {str(k): v for k, v in peaks.items()}}
    if best is None:
        return result
    batch = job.batch(best)
    result["flops_per_step"] = count_step_flops(job, batch)
    times = pure_step_seconds(job, batch, repeats)
    result.update(pure_step_seconds=statistics.median(times), pure_step_all=times)
    return result


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--start", type=int, default=256)
    parser.add_argument("--cap", type=int, default=8192)
    parser.add_argument("--memory-fraction", type=float, default=0.8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    result = run_probe(args.recipe, device, args.start, args.cap, args.memory_fraction, args.repeats)
    name = device_name(device)
    result.update(device_name=name, bf16_peak_flops=bf16_peak_flops(name))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
