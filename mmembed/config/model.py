"""Model part of a recipe: which modalities, their towers and heads, and which pairs are trained."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from mmembed.config.checks import at_least


@dataclass
class TowerSpec:
    """A registered tower and its arguments (validated against that tower's own config dataclass)."""

    type: str = MISSING
    args: dict[str, Any] = field(default_factory=dict)
    # LiT-style: freeze the whole tower, then re-enable parameters whose names match any `unfreeze` regex.
    freeze: bool = False
    unfreeze: list[str] = field(default_factory=list)
    grad_checkpointing: bool = False
    # Frozen towers only: encode each distinct input row once and reuse its features (e.g. a frozen text
    # anchor over repeating captions). Bounded LRU of `cache_size` rows; never saved in checkpoints.
    cache_features: bool = False
    cache_size: int = 65536

    def __post_init__(self) -> None:
        if self.cache_features and (not self.freeze or self.unfreeze):
            raise ValueError(f"tower '{self.type}': cache_features needs a fully frozen tower (freeze: true "
                             f"and no unfreeze rules; got freeze={self.freeze}, "
                             f"unfreeze={list(self.unfreeze)}): a trained tower's features change every step")
        if self.cache_size < 1:
            raise ValueError(f"tower '{self.type}': cache_size must be >= 1, got {self.cache_size}")


@dataclass
class HeadSpec:
    """Projection from tower features to `embed_dim`: `linear`, `mlp` or `identity` (see mmembed.heads).

    open_clip towers keep open_clip's own projection, so `identity` is their natural head when the
    tower's embed_dim equals the model's.
    """

    type: str = "linear"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModalityConfig:
    tower: TowerSpec = field(default_factory=TowerSpec)
    head: HeadSpec = field(default_factory=HeadSpec)


@dataclass
class PairConfig:
    """One trained modality pair, e.g. image-text with infonce. Each pair owns its logit scale (and bias)."""

    a: str = MISSING
    b: str = MISSING
    loss: str = "infonce"
    weight: float = 1.0
    args: dict[str, Any] = field(default_factory=dict)
    # θ in log space (s = exp θ). None: the loss's own default (CLIP: ln(1/0.07), no bias; SigLIP: ln 10
    # and bias -10). Recipe pairs naming the same two modalities share one scale and must agree on it.
    logit_scale_init: float | None = None
    logit_bias_init: float | None = None
    learn_logit_scale: bool = True


@dataclass
class ModelConfig:
    embed_dim: int = 512
    modalities: dict[str, ModalityConfig] = field(default_factory=dict)
    pairs: list[PairConfig] = field(default_factory=list)
    # Upper clamp of every learned logit scale (CLIP: 100), applied after each optimizer step.
    max_logit_scale: float = 100.0
    # Extra batch keys encoded by an existing modality's tower and head, e.g. {"text_syn": "text"} for
    # MobileCLIP's synthetic-caption term. Pairs may name an alias; it shares its base modality's logit scale.
    input_aliases: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        at_least("model", 1, embed_dim=self.embed_dim, max_logit_scale=self.max_logit_scale)
