"""Shared helpers for the training tests: tiny demo data and recipe overrides that keep runs short."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_RECIPE = REPO / "recipes" / "demo.yaml"


def make_small_demo(out: Path, train_samples: int = 512, val_samples: int = 96) -> Path:
    from data_tools.make_demo_data import make_demo_data

    per_shard = max(16, train_samples // 8)  # 8 training shards, like the full demo set
    make_demo_data(out, train_samples=train_samples, val_samples=val_samples, samples_per_shard=per_shard, seed=0)
    return out


# A small trainable open_clip text tower in place of the demo's frozen MiniLM, for tests about something
# else that need text gradients, tensor token ids or an open_clip export without a Hugging Face model id.
TRAINABLE_TEXT = ("model.modalities.text={tower: {type: open_clip_text, args: {text_cfg: {context_length: 16, "
                  "width: 32, heads: 2, layers: 1}, embed_dim: 128}}, head: {type: identity}}")


def tiny_overrides(data: Path, run_dir: Path, steps: int = 6, **extra: object) -> list[str]:
    """Shrink the demo recipe: fewer steps, smaller batch, the test's own data and output folder."""
    from omegaconf import OmegaConf

    shards = sorted((data / "train").glob("*.tar"))
    val = ",".join(f'"{v}"' for v in sorted((data / "val").glob("*.tar")))
    values: dict[str, object] = {
        "output_dir": str(run_dir),
        "train.steps": steps,
        "train.log_every": 1,
        "train.save_every": 0,
        "data.batch_size": 16,
        "data.num_workers": 2,
        # Epoch mode: each sample once per epoch, split across ranks and workers (what the launch, resume and
        # sample-id tests check); the demo itself samples shards with replacement.
        "data.resampled": "false",
        "data.train.0.urls": "[" + ",".join(f'"{s}"' for s in shards) + "]",
        "optim.warmup_steps": 2,
        "eval.every": 0,
        "eval.plots": "false",
    }
    # Every eval task of the recipe reads the test's val shards and class names.
    recipe_eval = OmegaConf.load(DEMO_RECIPE).eval
    for i, task in enumerate(recipe_eval.zeroshot):
        values[f"eval.zeroshot.{i}.urls"] = f"[{val}]"
        values[f"eval.zeroshot.{i}.classnames"] = str(data / Path(task.classnames).name)
    for i, _ in enumerate(recipe_eval.retrieval):
        values[f"eval.retrieval.{i}.urls"] = f"[{val}]"
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def run_cli(args: list[str], timeout: float = 600, **kwargs: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mmembed", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False, **kwargs)


BIND_RECIPE = REPO / "recipes" / "trimodal_bind.yaml"


def corpora_overrides(corpora: Path, run_dir: Path, steps: int = 6, **extra: object) -> list[str]:
    """Shrink the two-corpora recipe (trimodal_bind): the test's corpora, small batches, no evaluation."""
    def shards(name: str) -> str:
        return "[" + ",".join(f'"{s}"' for s in sorted((corpora / name).glob("*.tar"))) + "]"

    values: dict[str, object] = {
        "output_dir": str(run_dir), "train.steps": steps, "train.log_every": 1, "train.save_every": 0,
        "data.batch_size": 8, "data.num_workers": 2, "data.train.0.urls": shards("image_text"),
        "data.train.1.urls": shards("audio_text"), "optim.warmup_steps": 2, "eval.every": 0,
        "eval.zeroshot": "[]", "eval.retrieval": "[]",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]
