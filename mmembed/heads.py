"""Projection heads: tower features [B, in_dim] -> unit vectors [B, embed_dim].

Every head L2-normalises its output, so `head(tower.encode(x))` is always an embedding the losses and the
exporter can use as is. Normalisation runs in float32: under bf16 autocast the squared norm of a
512-dim vector loses enough precision to make cosine similarities visibly noisy.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmembed.config.model import HeadSpec
from mmembed.registry import Registry
from mmembed.types import LinearMap

HEADS: Registry[nn.Module] = Registry("head")

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


class Head(nn.Module):
    """Base class: subclasses implement `project`; `forward` returns L2-normalised float32 vectors."""

    in_dim: int
    embed_dim: int

    def project(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def linear_map(self) -> LinearMap | None:
        """The head as x -> Wx + b (float64), for exporters that fold it into a tower; None if not affine."""
        return None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.project(features).float(), dim=-1)


@dataclass
class LinearHeadConfig:
    # Bias-free by default, as in CLIP: a bias only shifts every embedding by one vector before normalising.
    bias: bool = False


class LinearHead(Head):
    def __init__(self, in_dim: int, embed_dim: int, bias: bool = False) -> None:
        super().__init__()
        self.in_dim, self.embed_dim = in_dim, embed_dim
        self.proj = nn.Linear(in_dim, embed_dim, bias=bias)
        # CLIP's projection init (std = width^-0.5) keeps initial logits O(1) whatever the tower width.
        nn.init.normal_(self.proj.weight, std=in_dim**-0.5)
        if bias:
            nn.init.zeros_(self.proj.bias)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)

    def linear_map(self) -> LinearMap:
        bias = self.proj.bias
        return LinearMap(self.proj.weight.detach().double(), None if bias is None else bias.detach().double())


@dataclass
class MLPHeadConfig:
    # Width of the hidden layers; None means the tower's output_dim.
    hidden_dim: int | None = None
    # Number of linear layers (>= 2; one layer is the `linear` head).
    layers: int = 2
    activation: str = "gelu"
    dropout: float = 0.0
    bias: bool = True


class MLPHead(Head):
    def __init__(self, in_dim: int, embed_dim: int, cfg: MLPHeadConfig) -> None:
        super().__init__()
        if cfg.layers < 2:
            raise ValueError(f"mlp head needs layers >= 2 (got {cfg.layers}); use the 'linear' head instead")
        if cfg.activation not in ACTIVATIONS:
            raise ValueError(f"mlp head: unknown activation '{cfg.activation}'; known: {sorted(ACTIVATIONS)}")
        if not 0.0 <= cfg.dropout < 1.0:
            raise ValueError(f"mlp head: dropout must be in [0, 1), got {cfg.dropout}")
        self.in_dim, self.embed_dim = in_dim, embed_dim
        hidden = cfg.hidden_dim or in_dim
        dims = [in_dim] + [hidden] * (cfg.layers - 1) + [embed_dim]
        blocks: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
            blocks.append(nn.Linear(d_in, d_out, bias=cfg.bias))
            if i < len(dims) - 2:
                blocks += [ACTIVATIONS[cfg.activation](), nn.Dropout(cfg.dropout)]
        self.mlp = nn.Sequential(*blocks)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features)


class IdentityHead(Head):
    """For towers that already project to embed_dim (open_clip towers keep their own projection)."""

    def __init__(self, in_dim: int, embed_dim: int) -> None:
        super().__init__()
        if in_dim != embed_dim:
            raise ValueError(f"identity head needs the tower's output_dim ({in_dim}) to equal embed_dim "
                             f"({embed_dim}); use a 'linear' head to project")
        self.in_dim, self.embed_dim = in_dim, embed_dim

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return features

    def linear_map(self) -> LinearMap:
        return LinearMap()


@HEADS.register("linear", LinearHeadConfig)
def _build_linear(cfg: LinearHeadConfig, in_dim: int, embed_dim: int) -> Head:
    return LinearHead(in_dim, embed_dim, bias=cfg.bias)


@HEADS.register("mlp", MLPHeadConfig)
def _build_mlp(cfg: MLPHeadConfig, in_dim: int, embed_dim: int) -> Head:
    return MLPHead(in_dim, embed_dim, cfg)


@HEADS.register("identity")
def _build_identity(in_dim: int, embed_dim: int) -> Head:
    return IdentityHead(in_dim, embed_dim)


def list_heads() -> list[str]:
    return HEADS.names()


def build_head(spec: HeadSpec, in_dim: int, embed_dim: int) -> Head:
    """Build the head named by `spec` mapping `in_dim` tower features to unit vectors of `embed_dim`."""
    return HEADS.build(spec.type, spec.args, in_dim=in_dim, embed_dim=embed_dim)
