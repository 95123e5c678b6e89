"""The Tower interface every modality encoder implements, and the shared tower registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from mmembed.registry import Registry

# A tower's input for one batch: a tensor ([B,3,H,W] images, [B,T] waveforms, [B,L] token ids) or a dict of
# tensors (Hugging Face tokenizer output such as input_ids + attention_mask).
TowerInput = torch.Tensor | dict[str, torch.Tensor]

# A per-sample preprocessor maps one decoded value (PIL image, str, or (waveform float32 [T], sample_rate))
# to a fixed-shape tensor (or dict of tensors) that the default collate can stack.
Preprocessor = Callable[[Any], Any]


@dataclass(frozen=True)
class ReadsModality:
    """The preprocessor of a model modality named other than its tower's kind, e.g. a second text tower
    `chars` beside `text`: `reads` names the data modality whose sample member (and decoder) feeds it, so
    both towers see the same caption. The data pipeline reads the `reads` attribute."""

    reads: str
    preprocessor: Preprocessor

    def __call__(self, value: Any) -> Any:
        return self.preprocessor(value)


@runtime_checkable
class Tower(Protocol):
    """What the model, trainer, optimizer factory and exporter rely on.

    Towers are `nn.Module`s; `encode` returns un-normalised features [B, output_dim]; the head projects
    and normalises them.
    """

    modality: str
    output_dim: int

    def encode(self, inputs: TowerInput) -> torch.Tensor: ...

    def no_weight_decay(self) -> set[str]: ...

    def set_grad_checkpointing(self, enable: bool = True) -> None: ...

    def preprocessor(self, is_train: bool) -> Preprocessor: ...


TOWERS: Registry[nn.Module] = Registry("tower")


def list_towers() -> list[str]:
    import mmembed.towers  # noqa: F401  (registers the built-in towers)

    return TOWERS.names()
