"""Recipes (YAML) -> typed dataclasses. See `schema.py` for the layout and `load_recipe` for overrides."""

from mmembed.config.load import load_recipe, recipe_to_yaml
from mmembed.config.schema import (
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    HeadConfig,
    ModalityConfig,
    ModelConfig,
    PairConfig,
    ShardSource,
    TowerSpec,
    TrainConfig,
)
from mmembed.config.validate import ConfigError, structured_from_dict

__all__ = [
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ExperimentConfig",
    "HeadConfig",
    "ModalityConfig",
    "ModelConfig",
    "PairConfig",
    "ShardSource",
    "TowerSpec",
    "TrainConfig",
    "load_recipe",
    "recipe_to_yaml",
    "structured_from_dict",
]
