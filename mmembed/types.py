"""Types shared across packages, in a module with no dependency beyond torch (always installed).

Data, towers, evaluation and export all speak of the same two things: what a tower's preprocessor turns one
decoded value into, and what a tower's `encode` takes for a batch. They are defined once here, so a package
that only needs the type never imports a tower (or the optional libraries some towers need).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# A tower's input for one batch: a tensor ([B,3,H,W] images, [B,T] waveforms, [B,L] token ids) or a dict of
# tensors (Hugging Face tokenizer output such as input_ids + attention_mask).
TowerInput = torch.Tensor | dict[str, torch.Tensor]

# A per-sample preprocessor maps one decoded value (PIL image, str, or (waveform float32 [T], sample_rate))
# to a fixed-shape tensor (or dict of tensors) that the default collate can stack. Classes, not lambdas, so
# they pickle into DataLoader workers.
Preprocessor = Callable[[Any], Any]


@dataclass(frozen=True)
class ReadsModality:
    """The preprocessor of a model modality named other than its tower's kind, e.g. a second text tower
    `chars` beside `text`: `reads` names the data modality whose sample member (and decoder) feeds it, so
    both towers see the same caption."""

    reads: str
    preprocessor: Preprocessor

    def __call__(self, value: Any) -> Any:
        return self.preprocessor(value)


# A batch as the data pipeline yields it: modality -> stacked inputs, plus `index`, `__key__`, ...
Batch = dict[str, Any]


class LinearMap:
    """A head seen as the affine map x -> W x + b, which an exporter can fold into a tower's own projection.

    `weight` [E, d] and `bias` [E] are float64 copies; `weight` None means the identity (no projection).
    """

    def __init__(self, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> None:
        self.weight, self.bias = weight, bias

    @property
    def is_identity(self) -> bool:
        return self.weight is None
