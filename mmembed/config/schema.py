"""The whole recipe: one dataclass composed from each component's own config."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmembed.config.data import DataConfig, ShardSource
from mmembed.config.eval import EvalConfig, RetrievalTask, ZeroShotTask
from mmembed.config.model import HeadSpec, ModalityConfig, ModelConfig, PairConfig, TowerSpec
from mmembed.config.paths import PathsConfig
from mmembed.config.train import OptimConfig, TrainConfig

HeadConfig = HeadSpec

__all__ = [
    "DataConfig",
    "EvalConfig",
    "ExperimentConfig",
    "HeadConfig",
    "HeadSpec",
    "ModalityConfig",
    "ModelConfig",
    "OptimConfig",
    "PairConfig",
    "PathsConfig",
    "RetrievalTask",
    "ShardSource",
    "TowerSpec",
    "TrainConfig",
    "ZeroShotTask",
]


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 0
    output_dir: str = "runs/experiment"
    paths: PathsConfig = field(default_factory=PathsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
