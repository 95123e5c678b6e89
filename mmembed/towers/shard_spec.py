"""How a tower splits into FSDP units, declared by the tower class itself as `shard_spec` (like `export_spec`).

Fully sharded data parallelism all-gathers one unit's parameters just before the unit runs and frees them
after, so the units decide the peak memory of unsharded weights and how communication overlaps compute.
The unit is the repeated block: a transformer block (open_clip `resblocks`, timm `blocks`, a Hugging Face
encoder layer) or a CNN stage (timm `stages`/`layerN`, open_clip's ModifiedResNet `layerN`). Whatever is
not inside a unit (embeddings, stems, final norms, projections) forms one more unit with the tower itself.
`mmembed.train.sharding` applies the units; a registry-wide test checks every tower's units on a tiny config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

# Attribute names under which timm models keep their repeated blocks or stages, in the order tried.
TIMM_BLOCK_CONTAINERS = ("blocks", "stages", "layers")
# ResNet-style stages kept as separate attributes (timm ResNet, open_clip ModifiedResNet).
RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
# Where Hugging Face encoders keep their layers (BERT/AST: encoder.layer; wav2vec2/HuBERT/WavLM: encoder.layers;
# Whisper's encoder: layers).
HF_LAYER_LISTS = ("encoder.layer", "encoder.layers", "layers", "layer")


@dataclass(frozen=True)
class ShardSpec:
    """A tower type's FSDP facts.

    `units(tower)` names the tower's submodules (relative to the tower, e.g. "model.transformer.resblocks.3")
    that are each sharded as one unit; they must not contain one another. `forward_methods` are the methods
    other code calls instead of `forward` (the model calls `tower.encode`), which FSDP must treat as forward
    passes so that the tower's own parameters are gathered around them.
    """

    units: Callable[[nn.Module], list[str]]
    forward_methods: tuple[str, ...] = ("encode",)


def _children(prefix: str, container: nn.Module) -> list[str]:
    return [f"{prefix}.{name}" for name, child in container.named_children() if _has_params(child)]


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def timm_units(model: nn.Module, prefix: str) -> list[str]:
    """A timm model's blocks (ViT, EfficientNet, MobileNet) or stages (ConvNeXt, FastViT, Swin, ResNet)."""
    for attr in TIMM_BLOCK_CONTAINERS:
        container = getattr(model, attr, None)
        if isinstance(container, nn.ModuleList | nn.Sequential) and len(container):
            return _children(f"{prefix}{attr}", container)
    return [f"{prefix}{name}" for name in RESNET_STAGES
            if isinstance(getattr(model, name, None), nn.Module) and _has_params(getattr(model, name))]


def open_clip_units(tower: nn.Module) -> list[str]:
    """open_clip's transformer blocks (ViT and text), ModifiedResNet stages, or its timm trunk's blocks."""
    model = tower.model
    transformer = getattr(model, "transformer", None)
    if transformer is not None and isinstance(getattr(transformer, "resblocks", None), nn.ModuleList):
        return _children("model.transformer.resblocks", transformer.resblocks)
    trunk = getattr(model, "trunk", None)
    if isinstance(trunk, nn.Module):
        return timm_units(trunk, "model.trunk.")
    return timm_units(model, "model.")


def hf_units(tower: nn.Module) -> list[str]:
    """The encoder layers of a Hugging Face model kept as `tower.model`."""
    for path in HF_LAYER_LISTS:
        container: nn.Module | None = tower.model
        for part in path.split("."):
            container = getattr(container, part, None)
        if isinstance(container, nn.ModuleList) and len(container):
            return _children(f"model.{path}", container)
    return []
