"""Train-step throughput: mmembed vs open_clip_train, same model, batch, synthetic data and machine, one run.

    .venv/bin/python benchmarks/train_step.py                          # ViT-S-32, batch 32, CPU fp32
    .venv/bin/python benchmarks/train_step.py --batch-size 256 --precision bf16 --steps 60   # on a GPU

Both trainers run as subprocesses on open_clip's synthetic data (one blank image and one caption,
preprocessed per sample: `--dataset-type synthetic` for open_clip_train, `data.synthetic_image_size` for
mmembed), with AdamW, no gradient clipping, the same number of loader workers, and the same model built
from open_clip's config (`--model NAME`, or `--model-config FILE` for a config file in open_clip's format,
which open_clip_train is given through `open_clip.add_model_config`). Step time is the mean over logged
intervals after the first (warm-up) interval; both include the time spent waiting for data. Prints
samples/s for both and the ratio mmembed/open_clip. `benchmarks/gpu_suite.py` reuses these functions.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
OPEN_CLIP_PRECISION = {"no": "fp32", "bf16": "amp_bf16", "fp16": "amp"}
# Runs open_clip_train's own main() after registering a folder of extra model configs.
OPEN_CLIP_SHIM = ("import sys, open_clip; open_clip.add_model_config(sys.argv.pop(1)); "
                  "from open_clip_train.main import main; main(sys.argv[1:])")


@dataclass
class Intervals:
    """Per logged interval (the first, warm-up one dropped): seconds per step and the data-wait share."""

    step_seconds: list[float]
    data_fraction: list[float]

    @property
    def mean_step(self) -> float:
        return sum(self.step_seconds) / len(self.step_seconds)

    @property
    def median_step(self) -> float:
        return statistics.median(self.step_seconds)

    @property
    def median_data_fraction(self) -> float:
        return statistics.median(self.data_fraction)


class BenchFailed(RuntimeError):
    """A trainer subprocess failed or logged too little; the message ends with its output's tail."""


def run(cmd: list[str], cwd: Path, timeout: float | None = None, extra_env: dict[str, str] | None = None) -> str:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p), **(extra_env or {})}
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise BenchFailed(f"timed out after {timeout:.0f} s: {' '.join(cmd[:4])} ...") from err
    if proc.returncode != 0:
        raise BenchFailed(f"command failed ({proc.returncode}): {' '.join(cmd[:4])} ...\n{proc.stderr[-4000:]}")
    return proc.stdout + proc.stderr


def model_name(args: argparse.Namespace) -> str:
    return Path(args.model_config).stem if args.model_config else args.model


def open_clip_config(args: argparse.Namespace) -> dict:
    import open_clip

    path = Path(args.model_config or Path(open_clip.__file__).parent / "model_configs" / f"{args.model}.json")
    return json.loads(path.read_text())


def open_clip_intervals(args: argparse.Namespace, work: Path, timeout: float | None = None) -> Intervals:
    """open_clip_train's per-interval `Data (t)` / `Batch (t)` averages, first interval dropped."""
    launcher = ["-m", "open_clip_train.main"]
    if args.model_config:
        launcher = ["-c", OPEN_CLIP_SHIM, str(Path(args.model_config).resolve().parent)]
    cmd = [sys.executable, *launcher, "--dataset-type", "synthetic",
           "--train-num-samples", str(args.batch_size * args.steps), "--model", model_name(args),
           "--batch-size", str(args.batch_size), "--epochs", "1", "--workers", str(args.workers),
           "--lr", "5e-4", "--wd", "0.2", "--warmup", "10", "--precision", OPEN_CLIP_PRECISION[args.precision],
           "--log-every-n-steps", str(args.log_every), "--save-frequency", "0", "--zeroshot-frequency", "0",
           "--val-frequency", "0", "--report-to", "", "--logs", str(work / "open_clip"), "--name", "bench"]
    if args.compile:
        cmd.append("--torchcompile")
    out = run(cmd, work, timeout, getattr(args, "env", None))
    pairs = [(float(d), float(b)) for d, b in re.findall(r"Data \(t\): ([0-9.]+) Batch \(t\): ([0-9.]+)", out)]
    if len(pairs) < 2:
        raise BenchFailed(f"open_clip_train logged too few intervals:\n{out[-3000:]}")
    kept = pairs[1:]
    return Intervals([b for _, b in kept], [d / b if b > 0 else 0.0 for d, b in kept])


def _tower_args(args: argparse.Namespace, part: str) -> dict:
    if not args.model_config:
        return {"model_name": args.model}
    config = open_clip_config(args)
    return {f"{part}_cfg": config[f"{part}_cfg"], "embed_dim": config["embed_dim"]}


def mmembed_recipe(args: argparse.Namespace, work: Path) -> Path:
    config = open_clip_config(args)
    vision, text = json.dumps(_tower_args(args, "vision")), json.dumps(_tower_args(args, "text"))
    recipe = work / "bench.yaml"
    recipe.write_text(textwrap.dedent(f"""\
        name: bench
        output_dir: {work / "mmembed"}
        model:
          embed_dim: {config["embed_dim"]}
          modalities:
            image: {{tower: {{type: open_clip_vision, args: {vision}}}, head: {{type: identity}}}}
            text: {{tower: {{type: open_clip_text, args: {text}}}, head: {{type: identity}}}}
          pairs: [{{a: image, b: text, loss: infonce}}]
        data: {{batch_size: {args.batch_size}, num_workers: {args.workers},
                synthetic_image_size: {config["vision_cfg"]["image_size"]}}}
        optim: {{lr: 5.0e-4, weight_decay: 0.2, warmup_steps: 10, grad_clip: null}}
        train: {{steps: {args.steps}, log_every: {args.log_every}, save_every: 0, precision: "{args.precision}",
                 compile: {str(args.compile).lower()}}}
        """))
    return recipe


def mmembed_intervals(args: argparse.Namespace, work: Path, timeout: float | None = None) -> Intervals:
    """mmembed's logged `samples_per_s` and `data_wait_fraction` per interval, first interval dropped."""
    run([sys.executable, "-m", "mmembed", "train", str(mmembed_recipe(args, work)), "--overwrite"], REPO, timeout,
        getattr(args, "env", None))
    lines = [json.loads(line) for line in (work / "mmembed" / "metrics.jsonl").read_text().splitlines()]
    logged = [line for line in lines if "samples_per_s" in line][1:]
    if not logged:
        raise BenchFailed("mmembed logged too few intervals; raise --steps")
    return Intervals([args.batch_size / line["samples_per_s"] for line in logged],
                     [line["data_wait_fraction"] for line in logged])


def add_trainer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="ViT-S-32")
    parser.add_argument("--model-config", default=None, help="an open_clip model config JSON (overrides --model)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--precision", choices=sorted(OPEN_CLIP_PRECISION), default="no")
    parser.add_argument("--compile", action="store_true")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_trainer_arguments(parser)
    args = parser.parse_args()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        theirs = open_clip_intervals(args, work).mean_step
        ours = mmembed_intervals(args, work).mean_step
    print(f"device: {device}; model {model_name(args)}; batch {args.batch_size}; precision {args.precision}; "
          f"workers {args.workers}; compile {args.compile}")
    print(f"{'trainer':<14}{'s/step':>10}{'samples/s':>12}")
    for name, seconds in (("open_clip", theirs), ("mmembed", ours)):
        print(f"{name:<14}{seconds:>10.3f}{args.batch_size / seconds:>12.1f}")
    print(f"ratio mmembed/open_clip (throughput): {theirs / ours:.3f}")


if __name__ == "__main__":
    main()
