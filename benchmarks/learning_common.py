"""Shared parts of `benchmarks/learning.py`: demo data variants, recipes derived from recipes/demo.yaml,
one seeded training run, mean ± sd cells, and the machine line every results table carries."""

from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
DEMO_RECIPE = REPO / "recipes" / "demo.yaml"
# The demo's data paths in recipes/demo.yaml (under its `paths.data` root), rewritten to each variant's folder.
DEMO_DATA = ("${paths.data}/demo", "data/demo")

Tree = dict[str, Any]


@dataclass(frozen=True)
class DataVariant:
    """One demo data set: split, caption noise and size (all else as `make_demo_data`'s defaults)."""

    name: str
    split: str = "scatter"
    caption_noise: float = 0.0
    train_samples: int = 2400
    val_samples: int = 480

    def settings(self) -> dict[str, Any]:
        return {"split": self.split, "caption_noise": self.caption_noise, "train_samples": self.train_samples,
                "val_samples": self.val_samples}


def ensure_data(variant: DataVariant, root: Path) -> Path:
    """The variant's folder under `root`, generated (seed 0) unless an identical one is already there."""
    from data_tools.make_demo_data import make_demo_data

    out = root / variant.name
    info_file = out / "info.json"
    if info_file.is_file():
        info = json.loads(info_file.read_text())
        counts = {k: info["splits"][k]["num_samples"] for k in ("train", "val")}
        if (info.get("split"), info.get("caption_noise"), counts["train"], counts["val"]) == (
                variant.split, variant.caption_noise, variant.train_samples, variant.val_samples):
            return out
    make_demo_data(out, samples_per_shard=max(1, variant.train_samples // 8), seed=0, **variant.settings())
    return out


def demo_tree() -> Tree:
    return OmegaConf.to_container(OmegaConf.load(DEMO_RECIPE))  # type: ignore[return-value]


def _rewrite_paths(node: Any, data_dir: Path) -> Any:
    if isinstance(node, dict):
        return {k: _rewrite_paths(v, data_dir) for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite_paths(v, data_dir) for v in node]
    if isinstance(node, str):
        for prefix in DEMO_DATA:
            if node.startswith(prefix + "/"):
                return str(data_dir / node[len(prefix) + 1 :])
    return node


def on_data(tree: Tree, data_dir: Path) -> Tree:
    """The recipe reading `data_dir` instead of data/demo (train shards, val shards, class names)."""
    tree = _rewrite_paths(copy.deepcopy(tree), data_dir)
    shards = sorted((data_dir / "train").glob("train-*.tar"))
    tree["data"]["train"] = [{"urls": [str(s) for s in shards]}]
    val = [str(s) for s in sorted((data_dir / "val").glob("val-*.tar"))]
    for task in [*tree["eval"]["zeroshot"], *tree["eval"]["retrieval"]]:
        task["urls"] = val
    return tree


def image_text_only(tree: Tree) -> Tree:
    """Drop the audio tower, its pair and its eval tasks (the loss comparisons are image-text)."""
    tree = copy.deepcopy(tree)
    tree["model"]["modalities"].pop("audio", None)
    tree["model"]["pairs"] = [p for p in tree["model"]["pairs"] if "audio" not in (p["a"], p["b"])]
    tree["eval"]["zeroshot"] = [t for t in tree["eval"]["zeroshot"] if t["modality"] != "audio"]
    tree["eval"]["retrieval"] = [t for t in tree["eval"]["retrieval"] if "audio" not in (t["a"], t["b"])]
    return tree


@dataclass
class RunResult:
    name: str
    seed: int
    metrics: dict[str, float]
    seconds: float
    step_seconds: float  # median over logged intervals after the first (warm-up, first cache misses)
    extra: dict[str, Any] = field(default_factory=dict)


def median_step_seconds(run_dir: Path, batch_size: int) -> float:
    rates = [json.loads(line).get("samples_per_s") for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steady = [batch_size / r for r in rates if r][1:] or [batch_size / r for r in rates if r]
    return statistics.median(steady) if steady else float("nan")


class SharedCaches:
    """One feature cache per frozen-tower type across runs: the frozen MiniLM is the same in every run, so
    each caption is encoded once per benchmark instead of once per run."""

    def __init__(self) -> None:
        self.caches: dict[str, Any] = {}

    def attach(self, model: Any, tree: Tree) -> None:
        for modality, spec in tree["model"]["modalities"].items():
            tower = spec["tower"]
            if not tower.get("cache_features"):
                continue
            key = json.dumps([tower["type"], tower.get("args", {})], sort_keys=True)
            if key in self.caches:
                model.share_feature_cache(modality, self.caches[key])
            else:
                self.caches[key] = model.feature_cache(modality)


def finished_run(run_dir: Path, tree: Tree, seed: int) -> RunResult | None:
    """A finished earlier run of the same steps, seed and pair losses (with their arguments) in `run_dir` (for
    --reuse), else None. Its wall time is read from the run folder's file times (config written at start,
    final metrics at the end)."""
    from omegaconf import OmegaConf

    final, config = run_dir / "final_metrics.json", run_dir / "config.yaml"
    if not (final.is_file() and config.is_file()):
        return None
    saved = OmegaConf.to_container(OmegaConf.load(config))
    if saved.get("seed") != seed or saved["train"]["steps"] != tree["train"]["steps"] or \
            _pairs(saved) != _pairs(tree):
        return None
    seconds = final.stat().st_mtime - config.stat().st_mtime
    return RunResult(run_dir.name, seed, json.loads(final.read_text()), seconds,
                     median_step_seconds(run_dir, tree["data"]["batch_size"]), {"reused": True})


def _pairs(tree: Tree) -> list[tuple[str, str, str, str]]:
    """Each pair's sides, loss and loss arguments (e.g. distill's λ), comparable across runs."""
    return [(p["a"], p["b"], p["loss"], json.dumps(p.get("args") or {}, sort_keys=True))
            for p in tree["model"]["pairs"]]


def train_run(tree: Tree, run_dir: Path, seed: int, caches: SharedCaches | None = None,
              prepare: Callable[[Any], None] | None = None, reuse: bool = False) -> RunResult:
    """Train `tree` with `seed` into `run_dir` (replaced), evaluate at the end; no plots, no checkpoints kept.
    With `reuse`, a finished run of the same recipe, steps and seed already in `run_dir` is read instead."""
    import shutil

    from mmembed.config import ExperimentConfig, structured_from_dict
    from mmembed.train import Trainer

    tree = copy.deepcopy(tree)
    if reuse and (done := finished_run(run_dir, tree, seed)) is not None:
        return done
    if run_dir.exists():
        shutil.rmtree(run_dir)
    tree.update(seed=seed, output_dir=str(run_dir))
    tree["eval"].update(every=0, plots=False)
    tree["train"].update(save_every=0, keep_last=1)
    start = time.perf_counter()
    trainer = Trainer(structured_from_dict(ExperimentConfig, tree))
    if caches is not None:
        caches.attach(trainer.unwrapped, tree)
    if prepare is not None:
        prepare(trainer)
    metrics = trainer.fit().final_metrics
    seconds = time.perf_counter() - start
    return RunResult(run_dir.name, seed, metrics, seconds,
                     median_step_seconds(run_dir, tree["data"]["batch_size"]))


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan for a single value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def cell(values: Sequence[float], digits: int = 3) -> str:
    mean, sd = mean_sd(values)
    return f"{mean:.{digits}f}" if sd != sd else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line() -> str:
    """CPU model, core count, memory and load average: the conditions a table was measured under."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    memory = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        kib = int(meminfo.read_text().split("\n", 1)[0].split()[1])
        memory = f", {kib / 2**20:.0f} GiB"
    load = ", load average {:.1f} / {:.1f} / {:.1f}".format(*os.getloadavg()) if hasattr(os, "getloadavg") else ""
    return f"{cpu}, {os.cpu_count()} cores{memory}{load}"


def save_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
