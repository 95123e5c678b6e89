"""The rows of benchmarks/gpu_suite.py: each row function measures in its own subprocesses and returns Rows.

A row function raises on failure; `Suite.guarded` turns that into one "error" row so the other rows still
run. Sizes come from `full_sizes` (one GPU: ViT-B/32, B up to what fits, loss at 32k/64k) or `tiny_sizes`
(seconds per row: the CPU smoke test runs the same functions).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from argparse import Namespace
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import loss_memory
import train_step
from train_step import BenchFailed, Intervals

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# The --tiny model: an open_clip config small enough for a CPU step in milliseconds.
TINY_MODEL = {"embed_dim": 64,
              "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2}}
TINY_MODEL_NAME = "mmembed-tiny-vit"


@dataclass
class Row:
    name: str  # stable id (JSON consumers and the CI test look rows up by it)
    label: str  # what the table prints
    value: float | None = None
    unit: str = ""
    target: str = ""
    met: bool | None = None  # None: no target, or tiny sizes (the targets are for the GPU sizes)
    status: str = "ok"  # ok | error | skipped
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sizes:
    tiny: bool
    model: str  # an open_clip config name, or TINY_MODEL_NAME
    precision: str
    probe_start: int
    max_batch: int
    steps: int
    log_every: int
    workers: int
    compile_env: dict[str, str]  # extra environment of the torch.compile run
    loss_sizes: tuple[int, ...]
    loss_dim: int
    loss_tile: int
    loss_repeats: int
    demo_data_args: tuple[str, ...]
    demo_overrides: tuple[str, ...]


def full_sizes(max_batch: int, workers: int) -> Sizes:
    return Sizes(tiny=False, model="ViT-B-32", precision="bf16", probe_start=256, max_batch=max_batch, steps=30,
                 log_every=5, workers=workers, compile_env={}, loss_sizes=(32768, 65536), loss_dim=512,
                 loss_tile=4096, loss_repeats=3, demo_data_args=(), demo_overrides=("eval.every=0",))


def tiny_sizes(device: str, workers: int) -> Sizes:
    # Inductor's C++ build takes minutes on a 2-core CPU; the smoke test traces with dynamo and runs the graphs
    # through aot_eager instead (torch's debug override). On a GPU, --tiny keeps the real inductor backend.
    compile_env = {"TORCH_COMPILE_OVERRIDE_BACKENDS": ">=0:aot_eager"} if device == "cpu" else {}
    return Sizes(tiny=True, model=TINY_MODEL_NAME, precision="no" if device == "cpu" else "bf16", probe_start=4,
                 max_batch=8, steps=6, log_every=2, workers=workers, compile_env=compile_env,
                 loss_sizes=(512, 1024), loss_dim=64, loss_tile=128, loss_repeats=2,
                 demo_data_args=("--train-samples", "256", "--val-samples", "64", "--samples-per-shard", "32"),
                 demo_overrides=("eval.every=0", "eval.zeroshot=[]", "eval.retrieval=[]", "train.steps=6",
                                 "train.log_every=2", "train.save_every=0"))


@dataclass
class Suite:
    device: str
    sizes: Sizes
    work: Path
    deadline: float

    def timeout(self) -> float:
        remaining = self.deadline - time.perf_counter()
        if remaining <= 5:
            raise BenchFailed("the suite's time budget (--budget-s) is spent")
        return remaining

    def guarded(self, name: str, fn: Callable[[Suite], list[Row]]) -> list[Row]:
        if self.deadline - time.perf_counter() <= 5:
            return [Row(name, name, status="skipped", note="the suite's time budget (--budget-s) was spent")]
        try:
            return fn(self)
        except Exception as err:  # one failing row must not hide the others' results
            lines = [line for line in str(err).splitlines() if line.strip()]
            summary = lines[0] if lines else type(err).__name__
            tail = lines[-1] if len(lines) > 1 else ""
            return [Row(name, name, status="error", note=f"{type(err).__name__}: {summary} {tail}".strip(),
                        details={"error": str(err)[-4000:]})]


def precision_name(suite: Suite) -> str:
    return "fp32" if suite.sizes.precision == "no" else suite.sizes.precision


def tiny(suite: Suite, met: bool) -> bool | None:
    return None if suite.sizes.tiny else met


# -- train step, MFU -------------------------------------------------------------------------------------------
def trainer_args(suite: Suite, batch: int, compile: bool) -> Namespace:
    sizes, config = suite.sizes, None
    if sizes.model == TINY_MODEL_NAME:
        config = suite.work / f"{TINY_MODEL_NAME}.json"
        config.write_text(json.dumps(TINY_MODEL))
    return Namespace(model=sizes.model, model_config=config, batch_size=batch, steps=sizes.steps,
                     log_every=sizes.log_every, workers=sizes.workers, precision=sizes.precision, compile=compile,
                     env=sizes.compile_env if compile else {})


def loader_batch_cap(suite: Suite, image_size: int, context: int) -> int:
    """The largest batch whose in-flight loader copies (prefetch 2 per worker, plus pinning and the step) stay
    under half of the free shared memory and RAM: float32 images and int64 tokens, as both trainers load."""
    per_sample = 3 * image_size * image_size * 4 + context * 8
    shm = shutil.disk_usage("/dev/shm").free if Path("/dev/shm").is_dir() else float("inf")
    free = min(shm, loss_memory._free_bytes("cpu"))
    return max(1, int(0.5 * free // ((2 * suite.sizes.workers + 2) * per_sample)))


def run_probe(suite: Suite, cap: int) -> dict[str, Any]:
    recipe = train_step.mmembed_recipe(trainer_args(suite, suite.sizes.probe_start, False), suite.work)
    out = train_step.run([sys.executable, str(HERE / "suite_probe.py"), str(recipe), "--device", suite.device,
                          "--start", str(suite.sizes.probe_start), "--cap", str(cap)], REPO, suite.timeout())
    return json.loads(out.strip().splitlines()[-1])


TRAINERS = (("open_clip", False), ("mmembed", False), ("mmembed_compile", True))


def run_trainers(suite: Suite, batch: int) -> dict[str, Intervals | str]:
    """Each trainer at `batch`, in its own folder; a failure is kept as its message."""
    results: dict[str, Intervals | str] = {}
    for key, compile in TRAINERS:
        work = suite.work / f"train-{key}-{batch}"
        work.mkdir(parents=True, exist_ok=True)
        measure = train_step.open_clip_intervals if key == "open_clip" else train_step.mmembed_intervals
        try:
            results[key] = measure(trainer_args(suite, batch, compile), work, suite.timeout())
        except BenchFailed as err:
            results[key] = str(err)
    return results


def train_rows(suite: Suite) -> list[Row]:
    config = train_step.open_clip_config(trainer_args(suite, 1, False))
    data_cap = loader_batch_cap(suite, config["vision_cfg"]["image_size"], config["text_cfg"]["context_length"])
    probe = run_probe(suite, min(suite.sizes.max_batch, data_cap))
    batch = probe["batch"]
    if batch is None:
        raise BenchFailed(f"no batch from {suite.sizes.probe_start} fitted (probe: {probe['tried']}; loader "
                          f"memory cap {data_cap}, /dev/shm or RAM too small?)")
    results = run_trainers(suite, batch)
    if any(isinstance(r, str) and "out of memory" in r.lower() for r in results.values()) and batch > 1:
        batch //= 2  # a trainer needed more than the probe's model alone: all three again, at half the batch
        results = run_trainers(suite, batch)
    facts = {"batch": batch, "probe": probe, "loader_batch_cap": data_cap, "workers": suite.sizes.workers,
             "model": suite.sizes.model, "precision": suite.sizes.precision}
    return [*ratio_rows(suite, results, facts), mfu_row(suite, results, probe, batch)]


def _rate(result: Intervals | str, batch: int) -> str:
    if isinstance(result, str):
        return "failed"
    return f"{batch / result.median_step:.0f}/s (data {result.median_data_fraction:.0%})"


def ratio_rows(suite: Suite, results: dict[str, Intervals | str], facts: dict[str, Any]) -> list[Row]:
    batch, model = facts["batch"], facts["model"]
    details = {**facts, "trainers": {k: (v if isinstance(v, str) else v.__dict__) for k, v in results.items()}}
    rows = []
    for name, ours, target, bar in (("train_eager", "mmembed", "", None),
                                    ("train_compile", "mmembed_compile", ">= 1.3x", 1.3)):
        label = f"train {model} {precision_name(suite)} B={batch}: {ours.replace('_', ' ')} / open_clip eager"
        theirs_r, ours_r = results["open_clip"], results[ours]
        note = f"open_clip {_rate(theirs_r, batch)}, {ours} {_rate(ours_r, batch)}"
        if isinstance(theirs_r, str) or isinstance(ours_r, str):
            error = theirs_r if isinstance(theirs_r, str) else ours_r
            rows.append(Row(name, label, status="error", note=str(error).splitlines()[0], details=details))
            continue
        ratio = theirs_r.median_step / ours_r.median_step
        met = None if bar is None else tiny(suite, ratio >= bar)
        rows.append(Row(name, label, ratio, "x", target, met, note=note, details=details))
    return rows


def mfu_row(suite: Suite, results: dict[str, Intervals | str], probe: dict[str, Any], batch: int) -> Row:
    """Achieved model FLOP/s over the device's dense bf16 peak, for the compiled mmembed step (eager rows and
    the no-data-loading step in the note). FLOPs: the probe's count at its batch, per sample (the loss's B²
    term is < 0.1% of a ViT-B/32 step at B = 4096, so the count scales with the batch)."""
    peak, per_sample = probe.get("bf16_peak_flops"), probe["flops_per_step"] / probe["batch"]
    achieved = {k: per_sample * batch / v.median_step for k, v in results.items() if not isinstance(v, str)}
    if probe.get("pure_step_seconds"):
        achieved["no_data_step"] = probe["flops_per_step"] / probe["pure_step_seconds"]
    details = {"flops_per_step": per_sample * batch, "flops_per_sample": per_sample, "batch": batch,
               "device_name": probe.get("device_name"), "bf16_peak_flops": peak, "achieved_flops_per_s": achieved}
    label = f"MFU: mmembed compiled step, {precision_name(suite)}"
    shown = ", ".join(f"{k} {v / 1e12:.3g} TFLOP/s" for k, v in achieved.items())
    if peak is None:
        return Row("mfu", label, None, "%", "", None, note=f"unknown peak for {probe.get('device_name')}; {shown}",
                   details=details)
    details["mfu"] = {k: v / peak for k, v in achieved.items()}
    if "mmembed_compile" not in achieved:
        return Row("mfu", label, status="error", note="the compiled mmembed run failed", details=details)
    others = ", ".join(f"{k} {v:.1%}" for k, v in details["mfu"].items() if k != "mmembed_compile")
    return Row("mfu", label, details["mfu"]["mmembed_compile"], "%", "", None,
               note=f"peak {peak / 1e12:.0f} TFLOP/s; {others}", details=details)


# -- loss memory and time --------------------------------------------------------------------------------------
def loss_rows(suite: Suite) -> list[Row]:
    sizes = suite.sizes
    args = Namespace(dim=sizes.loss_dim, tile=sizes.loss_tile, repeats=sizes.loss_repeats, threads=1)
    saved = os.environ.get("MALLOC_MMAP_THRESHOLD_")  # loss_memory sets it for its children; keep ours clean
    rows = []
    try:
        for batch in sizes.loss_sizes:
            suite.timeout()
            dense, tiled = (loss_memory.run_one(impl, batch, args, suite.device) for impl in ("open_clip", "tiled"))
            rows.extend(loss_pair_rows(suite, batch, dense, tiled))
    finally:
        if saved is None:
            os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = saved
    return rows


def loss_pair_rows(suite: Suite, batch: int, dense: loss_memory.Result, tiled: loss_memory.Result) -> list[Row]:
    details = {"open_clip": dense.__dict__, "tiled": tiled.__dict__, "dim": suite.sizes.loss_dim,
               "tile": suite.sizes.loss_tile}
    mib = f"tiled {(tiled.peak_bytes or 0) / 2**20:.0f} MiB, {tiled.median_seconds:.3g} s"
    memory, time_ = f"loss_memory_B{batch}", f"loss_time_B{batch}"
    if dense.peak_bytes is None:
        note = (f"open_clip not run: its ~{loss_memory.DENSE_MATRICES} BxB fp32 matrices exceed 80% of free "
                f"memory; {mib}")
        return [Row(memory, f"loss B={batch}: memory open_clip / tiled", status="skipped", note=note, details=details),
                Row(time_, f"loss B={batch}: time tiled / open_clip", status="skipped", note=note, details=details)]
    ratio = dense.peak_bytes / max(tiled.peak_bytes or 1, 1)
    slower = tiled.median_seconds / dense.median_seconds
    note = f"open_clip {dense.peak_bytes / 2**20:.0f} MiB, {dense.median_seconds:.3g} s; {mib}"
    return [Row(memory, f"loss B={batch}: memory open_clip / tiled", ratio, "x", ">= 20x", tiny(suite, ratio >= 20),
                note=note, details=details),
            Row(time_, f"loss B={batch}: time tiled / open_clip (median)", slower, "x", "<= 1.3x",
                tiny(suite, slower <= 1.3), note=note, details=details)]


# -- the demo recipe through launch/train.sh ------------------------------------------------------------------
@dataclass
class DemoRun:
    run_dir: Path
    intervals: list[dict[str, Any]]  # the logged intervals with a data-wait fraction, in order
    log: str  # the run's stdout + stderr


def launch_demo(suite: Suite, label: str, extra_env: dict[str, str]) -> DemoRun:
    """`launch/train.sh recipes/demo.yaml` with NPROC=1 on demo data generated into the suite's scratch folder."""
    cwd = suite.work / label
    data = cwd / "data" / "demo"  # the recipe's relative paths resolve from cwd
    train_step.run([sys.executable, "-m", "data_tools.make_demo_data", "--out", str(data),
                    *suite.sizes.demo_data_args], REPO, suite.timeout())
    run_dir = cwd / "runs" / "demo"
    env = {**os.environ, "NPROC": "1", "PYTHONUNBUFFERED": "1", **extra_env,
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
           "PATH": os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", "")))}
    if suite.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # --cpu on a GPU machine: train.sh then picks its CPU config
    cmd = ["bash", str(REPO / "launch" / "train.sh"), str(REPO / "recipes" / "demo.yaml"),
           f"output_dir={run_dir}", *suite.sizes.demo_overrides]
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=suite.timeout())
    except subprocess.TimeoutExpired as err:
        raise BenchFailed("launch/train.sh timed out") from err
    if proc.returncode != 0:
        raise BenchFailed(f"launch/train.sh failed ({proc.returncode})\n{proc.stderr[-3000:]}")
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    intervals = [line for line in logged if "data_wait_fraction" in line]
    if len(intervals) < 2:
        raise BenchFailed(f"the demo run logged {len(intervals)} intervals; need 2")
    return DemoRun(run_dir, intervals, proc.stdout + proc.stderr)


def demo_rows(suite: Suite) -> list[Row]:
    run = launch_demo(suite, "demo", {})
    steady = [line["data_wait_fraction"] for line in run.intervals[1:]]  # the first holds worker start-up
    fraction = statistics.median(steady)
    rate = statistics.median(line["samples_per_s"] for line in run.intervals[1:])
    note = (f"median of {len(steady)} intervals after the first ({run.intervals[0]['data_wait_fraction']:.0%}: "
            f"worker start-up); {rate:.0f} samples/s; max {max(steady):.0%}")
    return [Row("demo_data_wait", "demo recipe via launch/train.sh (1 proc): data-wait fraction", fraction, "%",
                "< 5%", tiny(suite, fraction < 0.05), note=note,
                details={"intervals": run.intervals, "overrides": list(suite.sizes.demo_overrides)})]


# -- FSDP2 -----------------------------------------------------------------------------------------------------
def fsdp2_smoke_rows(suite: Suite) -> list[Row]:
    """`SHARDING=fsdp launch/train.sh recipes/demo.yaml`, one process (launch/fsdp_node.yaml; gloo on a CPU).

    It passes when the trainer says it shards with FSDP2 (its start-up line), every logged loss is finite, and
    the run's last checkpoint holds the rank's shard files and the consolidated model folder; the value is the
    median samples/s after the first interval (a smoke test: no target, the speed is for the record)."""
    run = launch_demo(suite, "fsdp2", {"SHARDING": "fsdp"})
    banner = [line for line in run.log.splitlines() if "sharding: FSDP2 over 1 rank(s)" in line]
    if not banner:
        raise BenchFailed("the run did not report FSDP2 sharding (no 'sharding: FSDP2 over 1 rank(s)' line)")
    losses = [line["loss"] for line in run.intervals]
    if not all(math.isfinite(v) for v in losses):
        raise BenchFailed(f"non-finite losses {losses}")
    checkpoint = run.run_dir / "checkpoints" / (run.run_dir / "checkpoints" / "LATEST").read_text().strip()
    needed = [checkpoint / "shards" / f"{kind}-rank0-of-1.safetensors" for kind in ("model", "optim")]
    needed += [checkpoint / "model" / "model.safetensors", checkpoint / "model" / "config.yaml"]
    missing = [str(p.relative_to(run.run_dir)) for p in needed if not p.is_file()]
    if missing:
        raise BenchFailed(f"the FSDP2 checkpoint lacks {', '.join(missing)}")
    rate = statistics.median(line["samples_per_s"] for line in run.intervals[1:])
    sharding = banner[0].split("sharding: ", 1)[1]
    return [Row("fsdp2_smoke", "FSDP2 1-process smoke (demo recipe via launch/train.sh)", rate, "samples/s",
                note=f"losses {losses[0]:.3f} -> {losses[-1]:.3f}; sharded checkpoint + consolidated model written; "
                     f"{sharding[:160]}",
                details={"sharding": sharding, "losses": losses, "intervals": run.intervals,
                         "checkpoint": str(checkpoint.relative_to(run.run_dir))})]


ROWS: dict[str, Callable[[Suite], list[Row]]] = {
    "train": train_rows,
    "loss": loss_rows,
    "demo": demo_rows,
    "fsdp2": fsdp2_smoke_rows,
}
