"""Zero-shot classification: prompt-ensembled class embeddings, and top-k / per-class-recall metrics.

The classifier follows open_clip's `build_zero_shot_classifier`: each class embedding is the mean of the
L2-normalised embeddings of its prompts, renormalised. Any modality (image, audio) is classified against the
class embeddings of a text modality by cosine similarity.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmembed.eval.embed import EncodesModalities, encode_texts, inference_mode, iterate_embeddings
from mmembed.eval.templates import Template, render


@dataclass
class ZeroShotResult:
    top1: float
    top5: float
    mean_per_class_recall: float
    # [C, C] counts: row = true class, column = top-1 prediction.
    confusion: np.ndarray
    num_samples: int

    def metrics(self) -> dict[str, float]:
        return {"top1": self.top1, "top5": self.top5, "mean_per_class_recall": self.mean_per_class_recall}


def build_zero_shot_classifier(
    model: EncodesModalities,
    classnames: Sequence[str],
    templates: Sequence[Template],
    *,
    text_modality: str = "text",
    device: torch.device | str = "cpu",
    batch_size: int = 256,
) -> torch.Tensor:
    """Class embeddings [C, D] (float32, unit rows): per class, mean of normalised prompt embeddings."""
    if len(classnames) == 0:
        raise ValueError("zero-shot classifier needs at least one class name")
    if len(templates) == 0:
        raise ValueError("zero-shot classifier needs at least one prompt template")
    # Whole classes per text batch, so that each class's prompts are averaged from one reshape.
    classes_per_batch = max(1, batch_size // len(templates))
    weights = []
    with inference_mode(model):
        for start in range(0, len(classnames), classes_per_batch):
            group = classnames[start : start + classes_per_batch]
            texts = [render(t, name) for name in group for t in templates]
            emb = encode_texts(model, texts, text_modality=text_modality, device=device,
                               batch_size=len(texts))
            weights.append(F.normalize(emb.view(len(group), len(templates), -1).mean(dim=1), dim=-1))
    return torch.cat(weights)


class ZeroShotAccumulator:
    """Streams (logits, labels) batches into a confusion matrix and a top-k hit count.

    Only these are kept, never the [N, C] logits, so memory does not grow with the eval set.
    """

    def __init__(self, num_classes: int, k: int = 5) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        # With fewer classes than k, top-k is capped: every sample is then a top-k hit.
        self.k = min(k, num_classes)
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self.topk_hits = 0
        self.count = 0

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be [B, {self.num_classes}], got {list(logits.shape)}")
        labels = labels.reshape(-1).to(device=logits.device, dtype=torch.long)
        if labels.numel() != logits.shape[0]:
            raise ValueError(f"{labels.numel()} labels for {logits.shape[0]} logit rows")
        bad = (labels < 0) | (labels >= self.num_classes)
        if bad.any():
            raise ValueError(f"class label {int(labels[bad][0])} outside [0, {self.num_classes}); "
                             "do the class names match the labels in the data?")
        topk = logits.topk(self.k, dim=1).indices
        self.topk_hits += int((topk == labels[:, None]).any(dim=1).sum())
        pairs = (labels.cpu(), topk[:, 0].cpu())
        self.confusion.index_put_(pairs, torch.ones_like(pairs[0]), accumulate=True)
        self.count += int(labels.numel())

    def compute(self) -> ZeroShotResult:
        if self.count == 0:
            raise ValueError("no samples were evaluated")
        confusion = self.confusion.numpy().copy()
        support = confusion.sum(axis=1)
        present = support > 0
        # Recall is averaged over classes that occur in the data; absent classes have no defined recall.
        recalls = np.diag(confusion)[present] / support[present]
        return ZeroShotResult(
            top1=float(np.trace(confusion) / self.count),
            top5=self.topk_hits / self.count,
            mean_per_class_recall=float(recalls.mean()),
            confusion=confusion,
            num_samples=self.count,
        )


def zero_shot_metrics(logits: torch.Tensor, labels: torch.Tensor, k: int = 5) -> ZeroShotResult:
    """Metrics of one [N, C] logit matrix against [N] integer labels."""
    accumulator = ZeroShotAccumulator(logits.shape[1], k=k)
    accumulator.update(logits, labels)
    return accumulator.compute()


def run_zero_shot(
    model: EncodesModalities,
    loader: Iterable[dict[str, Any]],
    classifier: torch.Tensor,
    *,
    modality: str,
    label_key: str = "cls",
    device: torch.device | str = "cpu",
    progress: bool = True,
    desc: str = "zeroshot",
) -> ZeroShotResult:
    """Classify every `modality` sample of `loader` against `classifier` [C, D] (cosine similarity)."""
    accumulator = ZeroShotAccumulator(classifier.shape[0])
    classifier = classifier.to(device=device, dtype=torch.float32)
    with inference_mode(model):
        batches = iterate_embeddings(model, loader, [modality], device=device, progress=progress, desc=desc)
        for embeddings, batch in batches:
            if label_key not in batch:
                raise KeyError(f"eval batch has no label key '{label_key}' (batch keys: {sorted(batch)})")
            accumulator.update(embeddings[modality] @ classifier.T, torch.as_tensor(batch[label_key]))
    return accumulator.compute()
