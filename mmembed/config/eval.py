"""Evaluation part of a recipe: zero-shot classification and retrieval sets, run during and after training."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from mmembed.config.checks import at_least


@dataclass
class ZeroShotTask:
    """Classify `modality` samples from `urls` into the class names in `classnames` (one per line)."""

    name: str = MISSING
    modality: str = "image"
    urls: list[str] = MISSING
    classnames: str = MISSING
    # Sample key holding the integer class label.
    label_key: str = "cls"
    # "openai" | "simple" | "audio", or an explicit list of templates with "{}" for the class name.
    templates: list[str] = field(default_factory=lambda: ["openai"])
    text_modality: str = "text"
    # One line for the end-of-run summary, e.g. what the classes are and that training never saw them.
    note: str = ""


@dataclass
class RetrievalTask:
    """Item i of modality a matches item i of modality b (Recall@k both ways)."""

    name: str = MISSING
    urls: list[str] = MISSING
    a: str = "image"
    b: str = "text"
    note: str = ""
    # Optional integer sample key (e.g. a scene or class id): also report label_R@k, the fraction of queries
    # with a candidate of their own label among the top k, for sets where many items show the same thing.
    label_key: str | None = None


@dataclass
class EvalConfig:
    every: int = 0
    batch_size: int = 128
    num_workers: int = 0
    # Recall@k cut-offs reported for every retrieval task, in both directions.
    retrieval_ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    # Queries scored per block against all candidates: memory is chunk x N, never N x N.
    retrieval_chunk_size: int = 1024
    zeroshot: list[ZeroShotTask] = field(default_factory=list)
    retrieval: list[RetrievalTask] = field(default_factory=list)
    # At the end of training: write <output_dir>/plots (training curves, a confusion matrix per zero-shot
    # task) next to summary.txt. The summary itself is always printed and written.
    plots: bool = True

    def __post_init__(self) -> None:
        at_least("eval", 0, every=self.every, num_workers=self.num_workers)
        at_least("eval", 1, batch_size=self.batch_size, retrieval_chunk_size=self.retrieval_chunk_size)
        for k in self.retrieval_ks:
            at_least("eval", 1, retrieval_ks=k)
