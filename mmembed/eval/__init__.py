"""Evaluation: zero-shot classification, paired retrieval, metric tables and plots."""

from mmembed.eval.cli import run_eval_command
from mmembed.eval.embed import encode_texts, inference_mode, iterate_embeddings
from mmembed.eval.evaluate import TaskResult, evaluate, read_classnames, run_tasks
from mmembed.eval.plots import (
    plot_confusion_matrix,
    plot_temperature_histogram,
    plot_training_curves,
    read_metrics_jsonl,
)
from mmembed.eval.retrieval import positive_ranks, recall_at_k, retrieval_metrics
from mmembed.eval.table import format_table
from mmembed.eval.templates import TEMPLATE_SETS, list_template_sets, resolve_templates
from mmembed.eval.zeroshot import (
    ZeroShotAccumulator,
    ZeroShotResult,
    build_zero_shot_classifier,
    run_zero_shot,
    zero_shot_metrics,
)

__all__ = [
    "TEMPLATE_SETS",
    "TaskResult",
    "ZeroShotAccumulator",
    "ZeroShotResult",
    "build_zero_shot_classifier",
    "encode_texts",
    "evaluate",
    "format_table",
    "inference_mode",
    "iterate_embeddings",
    "list_template_sets",
    "plot_confusion_matrix",
    "plot_temperature_histogram",
    "plot_training_curves",
    "positive_ranks",
    "read_classnames",
    "read_metrics_jsonl",
    "recall_at_k",
    "resolve_templates",
    "retrieval_metrics",
    "run_eval_command",
    "run_tasks",
    "run_zero_shot",
    "zero_shot_metrics",
]
