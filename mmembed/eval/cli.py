"""`mmembed eval`: evaluate a saved model on shards given on the command line, print a table, plot.

The command-line arguments are turned into a one-task EvalConfig, so the CLI runs exactly the code path
that evaluation during training runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file

from mmembed.config.eval import EvalConfig, RetrievalTask, ZeroShotTask
from mmembed.errors import MissingFileError, UsageError
from mmembed.eval.evaluate import LoaderFactory, TaskResult, run_tasks
from mmembed.eval.plots import plot_confusion_matrix, plot_temperature_histogram, plot_training_curves
from mmembed.eval.table import format_table
from mmembed.eval.templates import PLACEHOLDER, render, resolve_templates

CLASSNAMES_FILE = "classnames.txt"
METRICS_FILE = "metrics.jsonl"
# A training checkpoint keeps the loss state next to its model/ folder (mmembed.train.checkpointing).
OBJECTIVE_FILE = "objective.safetensors"
# Per-sample temperature tables (iSogCLR's SampleTable): `<module>.tau_<side>` and `<module>.visits`, where
# side a / b is the first / second modality of the pair whose key (`image__text`) names the loss module.
TAU_PREFIX = "tau_"
VISITS_NAME = "visits"

TemperatureTables = dict[str, tuple[dict[str, np.ndarray], np.ndarray | None]]
# `--templates` default: open_clip's OPENAI_IMAGENET_TEMPLATES (80 prompts), not what a recipe's eval uses.
DEFAULT_TEMPLATES = "openai"
# `--templates recipe`: the prompts of the checkpoint recipe's zero-shot task for the same modality.
RECIPE_TEMPLATES = "recipe"


@dataclass
class EvalRequest:
    """The command-line arguments that describe one task."""

    data: list[str]
    classnames: Path | None
    templates: str
    modality: str
    pair: str
    batch_size: int
    # The checkpoint recipe's zero-shot tasks (for `--templates recipe` and the note above the table).
    recipe_zeroshot: list[ZeroShotTask] = field(default_factory=list)
    # Retrieval: an integer sample key whose equal values also count as matches (label_R@k).
    label_key: str | None = None

    @property
    def task_name(self) -> str:
        # Shards usually live in a folder named after the set (data/demo/val-*.tar -> "demo").
        return Path(self.data[0]).parent.name or "eval"


def parse_templates_arg(arg: str) -> list[str]:
    """A file (one template per line), a literal template with "{}", or comma-separated set names."""
    path = Path(arg)
    if path.is_file():
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if PLACEHOLDER in arg:
        return [arg]
    return [name.strip() for name in arg.split(",") if name.strip()]


def _recipe_task(request: EvalRequest) -> ZeroShotTask | None:
    return next((t for t in request.recipe_zeroshot if t.modality == request.modality), None)


def template_specs(request: EvalRequest) -> list[str]:
    """What `--templates` names, with `recipe` replaced by the recipe's own task's templates."""
    if request.templates != RECIPE_TEMPLATES:
        return parse_templates_arg(request.templates)
    task = _recipe_task(request)
    if task is None:
        names = [f"{t.name} ({t.modality})" for t in request.recipe_zeroshot]
        raise ValueError(f"--templates recipe: the checkpoint's recipe has no zero-shot task for modality "
                         f"'{request.modality}' (its tasks: {names or 'none'}); pass set names, a file or a "
                         f"'...{PLACEHOLDER}...' template")
    return list(task.templates)


def templates_note(request: EvalRequest) -> str:
    """The line printed above a zero-shot table: which prompts were used and, when they differ, the recipe's."""
    used = [render(t, PLACEHOLDER) for t in resolve_templates(template_specs(request))]
    task = _recipe_task(request)
    if request.templates == DEFAULT_TEMPLATES:
        source = f"set '{DEFAULT_TEMPLATES}' (OpenAI's ImageNet prompts, the --templates default)"
    elif request.templates == RECIPE_TEMPLATES and task is not None:
        source = f"the recipe's task '{task.name}'"
    else:
        source = repr(request.templates)
    note = f"zero-shot prompts: {len(used)} templates from {source}"
    own = [render(t, PLACEHOLDER) for t in resolve_templates(task.templates)] if task else used
    if own != used:
        shown = ", ".join(repr(t) for t in own[:3]) + (", ..." if len(own) > 3 else "")
        note += (f"; the recipe's own eval ('{task.name}') uses {len(own)} others ({shown}), so training-time "
                 f"numbers differ: --templates {RECIPE_TEMPLATES} uses them")
    return note


def _classnames_path(request: EvalRequest) -> Path:
    if request.classnames is not None:
        return request.classnames
    # The demo data keeps classnames.txt one level above its split folders (OUT/val/val-*.tar).
    shard_dir = Path(request.data[0]).parent
    candidates = [shard_dir / CLASSNAMES_FILE, shard_dir.parent / CLASSNAMES_FILE]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise MissingFileError(f"zero-shot needs class names: pass --classnames, or put {CLASSNAMES_FILE} next "
                            f"to the shards or one folder up (looked for {', '.join(map(str, candidates))})")


def _zeroshot_config(request: EvalRequest) -> EvalConfig:
    task = ZeroShotTask(name=request.task_name, modality=request.modality, urls=list(request.data),
                        classnames=str(_classnames_path(request)),
                        templates=template_specs(request))
    return EvalConfig(batch_size=request.batch_size, zeroshot=[task])


def _retrieval_config(request: EvalRequest) -> EvalConfig:
    parts = [p.strip() for p in request.pair.split(",")]
    if len(parts) != 2 or not all(parts):
        raise UsageError(f"--pair must name two modalities as 'a,b' (e.g. 'image,text'), "
                         f"got {request.pair!r}")
    task = RetrievalTask(name=request.task_name, urls=list(request.data), a=parts[0], b=parts[1],
                         label_key=request.label_key)
    return EvalConfig(batch_size=request.batch_size, retrieval=[task])


def untrained_pair_note(request: EvalRequest, trained: list[tuple[str, str]]) -> str:
    """A line saying when a retrieval pair was never trained (binding through other pairs), else ''."""
    a, b = (p.strip() for p in request.pair.split(","))
    if any({a, b} == {x, y} for x, y in trained):
        return ""
    pairs = ", ".join(f"{x}-{y}" for x, y in trained) or "none"
    return (f"{a}-{b} was never a trained pair of this model (its pairs: {pairs}): this retrieval measures the "
            "binding of the two modalities through the pairs it did train")


TASK_CONFIGS: dict[str, Callable[[EvalRequest], EvalConfig]] = {
    "zeroshot": _zeroshot_config,
    "retrieval": _retrieval_config,
}


def find_metrics_log(checkpoint_dir: Path) -> Path | None:
    """The run's metrics.jsonl: in the given folder or an ancestor (run/checkpoints/step_N/model)."""
    for folder in [checkpoint_dir, *list(checkpoint_dir.resolve().parents)[:4]]:
        if (folder / METRICS_FILE).is_file():
            return folder / METRICS_FILE
    return None


def read_temperature_tables(objective_file: Path) -> TemperatureTables:
    """{module: ({anchor: tau [N]}, visit counts [N] or None)} from a checkpoint's loss state."""
    state = load_file(str(objective_file))
    tables: TemperatureTables = {}
    for key, value in state.items():
        module, _, name = key.rpartition(".")
        if name.startswith(TAU_PREFIX) and value.ndim == 1:
            taus, _ = tables.setdefault(module, ({}, state.get(f"{module}.{VISITS_NAME}")))
            taus[_anchor_name(module, name[len(TAU_PREFIX):])] = value
    return tables


def _anchor_name(module: str, side: str) -> str:
    """'a'/'b' -> the pair's modality, read from the loss module's key ('losses.image__text.state')."""
    pair = next((part.split("__") for part in module.split(".") if "__" in part), None)
    if pair is None or len(pair) != 2 or side not in ("a", "b"):
        return side
    return pair[0] if side == "a" else pair[1]


def write_plots(results: list[TaskResult], model_dir: Path, plot_dir: Path) -> list[Path]:
    """Confusion matrices of zero-shot tasks, plus the run's training curves and learned temperatures."""
    written = []
    for result in results:
        if result.confusion is not None and result.classnames is not None:
            out = plot_dir / f"confusion_{result.name}.png"
            written.append(plot_confusion_matrix(result.confusion, result.classnames, out))
    metrics_log = find_metrics_log(model_dir)
    if metrics_log is not None:
        written.append(plot_training_curves(metrics_log, plot_dir / "training_curves.png"))
    objective_file = model_dir.parent / OBJECTIVE_FILE
    if objective_file.is_file():
        for module, (taus, counts) in read_temperature_tables(objective_file).items():
            out = plot_dir / f"temperatures_{module.replace('.', '_')}.png"
            written.append(plot_temperature_histogram(taus, counts, out))
    return written


def run_eval_command(
    checkpoint_dir: Path,
    task: str,
    data: list[str],
    classnames: Path | None,
    templates: str,
    modality: str,
    pair: str,
    plot_dir: Path | None,
    batch_size: int,
    *,
    device: torch.device | str | None = None,
    progress: bool = True,
    loader_factory: LoaderFactory | None = None,
    label_key: str | None = None,
) -> dict[str, float]:
    """Load the model in `checkpoint_dir`, run one zero-shot or retrieval task, print and return metrics."""
    from mmembed.checkpoint import load_model, resolve_model_dir

    if task not in TASK_CONFIGS:
        raise UsageError(f"unknown eval task '{task}'; choose from {', '.join(TASK_CONFIGS)}")
    if not data:
        raise UsageError("no eval data given: pass shard urls")
    model, config = load_model(checkpoint_dir)
    request = EvalRequest(list(data), classnames, templates, modality, pair, batch_size,
                          list(config.eval.zeroshot), label_key)
    eval_cfg = TASK_CONFIGS[task](request)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    results = run_tasks(model, eval_cfg, device=device, progress=progress, loader_factory=loader_factory)
    metrics = {name: value for result in results for name, value in result.metrics.items()}
    if task == "zeroshot":
        print(templates_note(request))
    if task == "retrieval" and (note := untrained_pair_note(request, [(p.a, p.b) for p in config.model.pairs])):
        print(note)
    print(format_table(metrics))
    for result in results:
        print(result.counts())
        if result.chance_line():
            print(result.chance_line())
    if plot_dir is not None:
        for path in write_plots(results, resolve_model_dir(checkpoint_dir), Path(plot_dir)):
            print(f"wrote {path}")
    return metrics
