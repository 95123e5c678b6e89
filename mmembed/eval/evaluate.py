"""Run the zero-shot and retrieval tasks of an EvalConfig and name their metrics.

Metric names: `zeroshot/<task>/{top1,top5,mean_per_class_recall}` and
`retrieval/<task>/<a>_to_<b>_R@<k>` (both directions; with a task's `label_key` also `..._label_R@<k>`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from mmembed.config.eval import EvalConfig, RetrievalTask, ZeroShotTask
from mmembed.errors import DataError, MissingFileError, UnknownNameError, UsageError
from mmembed.eval.embed import EncodesModalities, inference_mode, iterate_embeddings
from mmembed.eval.retrieval import label_chance, label_retrieval_metrics, retrieval_metrics
from mmembed.eval.templates import resolve_templates
from mmembed.eval.zeroshot import build_zero_shot_classifier, run_zero_shot
from mmembed.types import Preprocessor

log = logging.getLogger("mmembed.eval")


class LoaderFactory(Protocol):
    """The signature of `mmembed.data.build_eval_loader`: every sample exactly once, in order."""

    def __call__(
        self,
        urls: list[str],
        preprocessors: dict[str, Preprocessor],
        *,
        batch_size: int,
        num_workers: int = 0,
        extra_keys: Sequence[str] = ("cls",),
    ) -> Iterable[dict[str, Any]]: ...


@dataclass
class TaskResult:
    """One task's named metrics, plus what plots need (the confusion matrix of a zero-shot task)."""

    kind: str
    name: str
    metrics: dict[str, float]
    confusion: np.ndarray | None = None
    classnames: list[str] | None = None
    seconds: float = 0.0
    # Samples evaluated, and samples the loader skipped as corrupt or incomplete (None: the loader does not say).
    samples: int = 0
    skipped: int | None = None
    unreadable_shards: int = 0
    # Shown in the end-of-run summary under the task's numbers (the recipe's `note`).
    note: str = ""
    # Retrieval: each recall's value under a random ranking ("R@5", "label_R@5"), printed beside the results.
    chance: dict[str, float] = field(default_factory=dict)

    def chance_line(self) -> str:
        """'<kind>/<name> chance: R@1 0.0031, ...' (empty when the task has no chance levels)."""
        if not self.chance:
            return ""
        return f"{self.kind}/{self.name} chance: " + ", ".join(f"{k} {v:.4f}" for k, v in self.chance.items())

    def counts(self) -> str:
        """'<kind>/<name>: N samples used, M skipped' (plus unreadable shard parts, whose samples are lost)."""
        skipped = "an unknown number" if self.skipped is None else str(self.skipped)
        lost = f", {self.unreadable_shards} unreadable shard parts" if self.unreadable_shards else ""
        return f"{self.kind}/{self.name}: {self.samples} samples used, {skipped} skipped{lost}"


def _skip_counts(loader: Any) -> tuple[int | None, int]:
    """(samples skipped, unreadable shard parts) of a finished mmembed loader; (None, 0) for other iterables."""
    counts = getattr(loader, "skip_counts", None)
    if counts is None:
        return None, 0
    return int(counts.get("samples", 0)), int(counts.get("shards", 0))


def read_classnames(path: str | Path) -> list[str]:
    """Class names, one per line (blank lines skipped); line order is the label order."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"class-name file not found: {path}")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise UsageError(f"class-name file {path} has no class names (one per line expected)")
    return names


def default_loader_factory() -> LoaderFactory:
    from mmembed.data import build_eval_loader

    return build_eval_loader


def _modality_preprocessors(model: EncodesModalities, modalities: Sequence[str]) -> dict[str, Preprocessor]:
    available = model.preprocessors(is_train=False)
    missing = [m for m in modalities if m not in available]
    if missing:
        raise UnknownNameError(f"model has no modality {missing}; its modalities: {', '.join(sorted(available))}")
    return {m: available[m] for m in modalities}


def run_zero_shot_task(
    model: EncodesModalities,
    task: ZeroShotTask,
    cfg: EvalConfig,
    *,
    device: torch.device | str,
    progress: bool,
    loader_factory: LoaderFactory,
) -> TaskResult:
    start = time.perf_counter()
    classnames = read_classnames(task.classnames)
    classifier = build_zero_shot_classifier(
        model, classnames, resolve_templates(task.templates), text_modality=task.text_modality,
        device=device, batch_size=cfg.batch_size)
    preprocessors = _modality_preprocessors(model, [task.modality])
    loader = loader_factory(list(task.urls), preprocessors, batch_size=cfg.batch_size,
                            num_workers=cfg.num_workers, extra_keys=(task.label_key,))
    result = run_zero_shot(model, loader, classifier, modality=task.modality, label_key=task.label_key,
                           device=device, progress=progress, desc=f"zeroshot/{task.name}")
    metrics = {f"zeroshot/{task.name}/{k}": v for k, v in result.metrics().items()}
    return TaskResult("zeroshot", task.name, metrics, result.confusion, classnames,
                      time.perf_counter() - start, result.num_samples, *_skip_counts(loader), note=task.note)


def run_retrieval_task(
    model: EncodesModalities,
    task: RetrievalTask,
    cfg: EvalConfig,
    *,
    device: torch.device | str,
    progress: bool,
    loader_factory: LoaderFactory,
) -> TaskResult:
    start = time.perf_counter()
    if task.a == task.b:
        raise UsageError(f"retrieval task '{task.name}' pairs modality '{task.a}' with itself")
    extra = (task.label_key,) if task.label_key else ()
    loader = loader_factory(list(task.urls), _modality_preprocessors(model, [task.a, task.b]),
                            batch_size=cfg.batch_size, num_workers=cfg.num_workers, extra_keys=extra)
    chunks: dict[str, list[torch.Tensor]] = {task.a: [], task.b: []}
    labels: list[torch.Tensor] = []
    with inference_mode(model):
        for embeddings, batch in iterate_embeddings(model, loader, [task.a, task.b], device=device,
                                                    progress=progress, desc=f"retrieval/{task.name}"):
            for modality, emb in embeddings.items():
                chunks[modality].append(emb)
            if task.label_key:
                labels.append(torch.as_tensor(batch[task.label_key]))
    if not chunks[task.a]:
        raise DataError(f"retrieval task '{task.name}' found no usable samples in {list(task.urls)}")
    a, b = torch.cat(chunks[task.a]), torch.cat(chunks[task.b])
    common = {"a_name": task.a, "b_name": task.b, "ks": cfg.retrieval_ks, "chunk_size": cfg.retrieval_chunk_size}
    values = retrieval_metrics(a, b, **common)
    chance = {f"R@{k}": min(k, len(a)) / len(a) for k in cfg.retrieval_ks}
    if labels:
        label = torch.cat(labels)
        values.update(label_retrieval_metrics(a, b, label, **common))
        chance.update({f"label_R@{k}": label_chance(label, label, k) for k in cfg.retrieval_ks})
    metrics = {f"retrieval/{task.name}/{k}": v for k, v in values.items()}
    skipped, shards = _skip_counts(loader)
    return TaskResult("retrieval", task.name, metrics, seconds=time.perf_counter() - start,
                      samples=sum(len(c) for c in chunks[task.a]), skipped=skipped, unreadable_shards=shards,
                      chance=chance, note=task.note)


def run_tasks(
    model: EncodesModalities,
    cfg: EvalConfig,
    *,
    device: torch.device | str,
    progress: bool = True,
    loader_factory: LoaderFactory | None = None,
) -> list[TaskResult]:
    """Every zero-shot then every retrieval task of `cfg`, in order; the model must already be on `device`."""
    factory = loader_factory or default_loader_factory()
    for kind, tasks in (("zeroshot", cfg.zeroshot), ("retrieval", cfg.retrieval)):
        names = [t.name for t in tasks]
        # Metric names are keyed by task name, so a repeat would silently overwrite the first task's results.
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise UsageError(f"eval.{kind} task names must be unique, repeated: {duplicates}")
    kwargs = {"device": device, "progress": progress, "loader_factory": factory}
    results = [run_zero_shot_task(model, task, cfg, **kwargs) for task in cfg.zeroshot]
    results += [run_retrieval_task(model, task, cfg, **kwargs) for task in cfg.retrieval]
    return results


def evaluate_tasks(
    model: EncodesModalities,
    eval_cfg: EvalConfig,
    *,
    device: torch.device | str,
    progress: bool = True,
    loader_factory: LoaderFactory | None = None,
) -> list[TaskResult]:
    """Every configured task's result, in eval mode under no_grad; the model's modes are restored. Each task's
    sample counts (used, skipped) are logged."""
    with inference_mode(model):
        results = run_tasks(model, eval_cfg, device=device, progress=progress, loader_factory=loader_factory)
    for result in results:
        log.info("%s", result.counts())
    return results


def merged_metrics(results: Iterable[TaskResult]) -> dict[str, float]:
    return {name: value for result in results for name, value in result.metrics.items()}


def evaluate(
    model: EncodesModalities,
    eval_cfg: EvalConfig,
    *,
    device: torch.device | str,
    progress: bool = True,
    loader_factory: LoaderFactory | None = None,
) -> dict[str, float]:
    """All metrics of all configured tasks, in eval mode under no_grad; the model's modes are restored."""
    return merged_metrics(evaluate_tasks(model, eval_cfg, device=device, progress=progress,
                                         loader_factory=loader_factory))
