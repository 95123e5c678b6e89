"""One modality's tower plus its head as a standalone module: positional input tensors -> unit embeddings."""

from __future__ import annotations

import torch
from torch import nn

from mmembed.towers.export_spec import InputSpec, pack_inputs


class EmbedTower(nn.Module):
    """`forward(*inputs)` = `head(encoder.encode(inputs))`: float32 unit vectors [B, embed_dim].

    `encoder` is the tower itself or its export twin (same parameters, ONNX-friendly graph). Inputs are
    positional tensors in `specs` order, which is what ONNX and plain callers pass.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, specs: list[InputSpec]) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.specs = list(specs)

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.specs]

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if len(inputs) != len(self.specs):
            raise ValueError(f"expected {len(self.specs)} inputs {self.input_names}, got {len(inputs)}")
        return self.head(self.encoder.encode(pack_inputs(self.specs, inputs)))
