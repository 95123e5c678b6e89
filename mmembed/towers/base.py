"""The Tower interface every modality encoder implements, and the shared tower registry."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

from mmembed.registry import Registry
from mmembed.towers.export_spec import ExportSpec
from mmembed.towers.shard_spec import ShardSpec
from mmembed.types import Preprocessor, TowerInput

__all__ = ["TOWERS", "Preprocessor", "Tower", "TowerInput", "export_spec_of", "list_towers"]


@runtime_checkable
class Tower(Protocol):
    """What the model, trainer, optimizer factory and exporter rely on.

    Towers are `nn.Module`s; `encode` returns un-normalised features [B, output_dim]; the head projects
    and normalises them.
    """

    modality: str
    output_dim: int
    # What exporting needs to know about this tower type (mmembed.towers.export_spec); a class attribute.
    export_spec: ExportSpec
    # How FSDP splits this tower type into units (mmembed.towers.shard_spec); a class attribute.
    shard_spec: ShardSpec

    def encode(self, inputs: TowerInput) -> torch.Tensor: ...

    def no_weight_decay(self) -> set[str]: ...

    def set_grad_checkpointing(self, enable: bool = True) -> None: ...

    def preprocessor(self, is_train: bool) -> Preprocessor: ...


TOWERS: Registry[nn.Module] = Registry("tower")


def export_spec_of(tower_type: str) -> ExportSpec:
    """The export facts of a registered tower type, without building one."""
    import mmembed.towers  # noqa: F401  (declares the built-in towers)

    return TOWERS.get(tower_type).builder.export_spec


def list_towers() -> list[str]:
    import mmembed.towers  # noqa: F401  (registers the built-in towers)

    return TOWERS.names()
