"""Run the zero-shot and retrieval tasks of an EvalConfig and name their metrics.

Metric names: `zeroshot/<task>/{top1,top5,mean_per_class_recall}` and
`retrieval/<task>/<a>_to_<b>_R@<k>` (both directions).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from mmembed.config.eval import EvalConfig, RetrievalTask, ZeroShotTask
from mmembed.eval.embed import EncodesModalities, inference_mode, iterate_embeddings
from mmembed.eval.retrieval import retrieval_metrics
from mmembed.eval.templates import resolve_templates
from mmembed.eval.zeroshot import build_zero_shot_classifier, run_zero_shot
from mmembed.towers.base import Preprocessor


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
    # Samples evaluated (zero-shot) or pairs ranked (retrieval): what chance levels are computed from.
    num_samples: int = 0
    note: str = ""


def read_classnames(path: str | Path) -> list[str]:
    """Class names, one per line (blank lines skipped); line order is the label order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class-name file not found: {path}")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"class-name file {path} has no class names")
    return names


def default_loader_factory() -> LoaderFactory:
    from mmembed.data import build_eval_loader

    return build_eval_loader


def _modality_preprocessors(model: EncodesModalities, modalities: Sequence[str]) -> dict[str, Preprocessor]:
    available = model.preprocessors(is_train=False)
    missing = [m for m in modalities if m not in available]
    if missing:
        raise KeyError(f"model has no modality {missing}; its modalities: {', '.join(sorted(available))}")
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
                      time.perf_counter() - start, result.num_samples, task.note)


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
        raise ValueError(f"retrieval task '{task.name}' pairs modality '{task.a}' with itself")
    loader = loader_factory(list(task.urls), _modality_preprocessors(model, [task.a, task.b]),
                            batch_size=cfg.batch_size, num_workers=cfg.num_workers, extra_keys=())
    chunks: dict[str, list[torch.Tensor]] = {task.a: [], task.b: []}
    with inference_mode(model):
        for embeddings, _ in iterate_embeddings(model, loader, [task.a, task.b], device=device,
                                                progress=progress, desc=f"retrieval/{task.name}"):
            for modality, emb in embeddings.items():
                chunks[modality].append(emb)
    if not chunks[task.a]:
        raise ValueError(f"retrieval task '{task.name}' found no samples in {list(task.urls)}")
    values = retrieval_metrics(torch.cat(chunks[task.a]), torch.cat(chunks[task.b]), a_name=task.a,
                               b_name=task.b, ks=cfg.retrieval_ks, chunk_size=cfg.retrieval_chunk_size)
    metrics = {f"retrieval/{task.name}/{k}": v for k, v in values.items()}
    return TaskResult("retrieval", task.name, metrics, seconds=time.perf_counter() - start,
                      num_samples=sum(len(c) for c in chunks[task.a]), note=task.note)


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
            raise ValueError(f"eval.{kind} task names must be unique, repeated: {duplicates}")
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
    """Every configured task's result, in eval mode under no_grad; the model's modes are restored."""
    with inference_mode(model):
        return run_tasks(model, eval_cfg, device=device, progress=progress, loader_factory=loader_factory)


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
