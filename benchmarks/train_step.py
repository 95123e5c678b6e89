"""Train-step throughput: mmembed vs open_clip_train, same model, batch, synthetic data and machine, one run.

    .venv/bin/python benchmarks/train_step.py                          # ViT-S-32, batch 32, CPU fp32
    .venv/bin/python benchmarks/train_step.py --batch-size 256 --precision bf16 --steps 60   # on a GPU

Both trainers run as subprocesses on open_clip's synthetic data (one blank image and one caption,
preprocessed per sample: `--dataset-type synthetic` for open_clip_train, `data.synthetic_image_size` for
mmembed), with AdamW, no gradient clipping, the same number of loader workers, and the same model built
from open_clip's config. Step time is the mean over logged intervals after the first (warm-up) interval;
both include the time spent waiting for data. Prints samples/s for both and the ratio mmembed/open_clip.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
OPEN_CLIP_PRECISION = {"no": "fp32", "bf16": "amp_bf16", "fp16": "amp"}


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-4000:]}")
    return proc.stdout + proc.stderr


def open_clip_step_seconds(args: argparse.Namespace, work: Path) -> float:
    """Mean of open_clip_train's per-interval `Batch (t)` averages, first interval dropped."""
    cmd = [sys.executable, "-m", "open_clip_train.main", "--dataset-type", "synthetic",
           "--train-num-samples", str(args.batch_size * args.steps), "--model", args.model,
           "--batch-size", str(args.batch_size), "--epochs", "1", "--workers", str(args.workers),
           "--lr", "5e-4", "--wd", "0.2", "--warmup", "10", "--precision", OPEN_CLIP_PRECISION[args.precision],
           "--log-every-n-steps", str(args.log_every), "--save-frequency", "0", "--zeroshot-frequency", "0",
           "--val-frequency", "0", "--report-to", "", "--logs", str(work / "open_clip"), "--name", "bench"]
    if args.compile:
        cmd.append("--torchcompile")
    out = run(cmd, work)
    times = [float(t) for t in re.findall(r"Batch \(t\): ([0-9.]+)", out)]
    if len(times) < 2:
        raise SystemExit(f"open_clip_train logged too few intervals:\n{out[-3000:]}")
    return sum(times[1:]) / len(times[1:])


def mmembed_recipe(args: argparse.Namespace, work: Path) -> Path:
    recipe = work / "bench.yaml"
    recipe.write_text(textwrap.dedent(f"""\
        name: bench
        output_dir: {work / "mmembed"}
        model:
          embed_dim: {json.loads((open_clip_config_path(args.model)).read_text())["embed_dim"]}
          modalities:
            image: {{tower: {{type: open_clip_vision, args: {{model_name: {args.model}}}}}, head: {{type: identity}}}}
            text: {{tower: {{type: open_clip_text, args: {{model_name: {args.model}}}}}, head: {{type: identity}}}}
          pairs: [{{a: image, b: text, loss: infonce}}]
        data: {{batch_size: {args.batch_size}, num_workers: {args.workers}, synthetic_image_size: 224}}
        optim: {{lr: 5.0e-4, weight_decay: 0.2, warmup_steps: 10, grad_clip: null}}
        train: {{steps: {args.steps}, log_every: {args.log_every}, save_every: 0, precision: "{args.precision}",
                 compile: {str(args.compile).lower()}}}
        """))
    return recipe


def open_clip_config_path(model: str) -> Path:
    import open_clip

    return Path(open_clip.__file__).parent / "model_configs" / f"{model}.json"


def mmembed_step_seconds(args: argparse.Namespace, work: Path) -> float:
    run([sys.executable, "-m", "mmembed", "train", str(mmembed_recipe(args, work))], REPO)
    lines = [json.loads(line) for line in (work / "mmembed" / "metrics.jsonl").read_text().splitlines()]
    rates = [line["samples_per_s"] for line in lines if "samples_per_s" in line][1:]
    if not rates:
        raise SystemExit("mmembed logged too few intervals; raise --steps")
    return sum(args.batch_size / r for r in rates) / len(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-S-32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--precision", choices=sorted(OPEN_CLIP_PRECISION), default="no")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        theirs = open_clip_step_seconds(args, work)
        ours = mmembed_step_seconds(args, work)
    print(f"device: {device}; model {args.model}; batch {args.batch_size}; precision {args.precision}; "
          f"workers {args.workers}; compile {args.compile}")
    print(f"{'trainer':<14}{'s/step':>10}{'samples/s':>12}")
    for name, seconds in (("open_clip", theirs), ("mmembed", ours)):
        print(f"{name:<14}{seconds:>10.3f}{args.batch_size / seconds:>12.1f}")
    print(f"ratio mmembed/open_clip (throughput): {theirs / ours:.3f}")


if __name__ == "__main__":
    main()
