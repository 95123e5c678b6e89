"""Model checkpoints on disk: weights as safetensors plus the recipe as YAML. Nothing is unpickled.

Layout of a model directory (also the `model/` part of a training checkpoint):
    config.yaml         the full recipe (ExperimentConfig) the model was built from
    model.safetensors   MultiModalModel.state_dict()
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn

from mmembed.config import ExperimentConfig, recipe_to_yaml, structured_from_dict

CONFIG_NAME = "config.yaml"
WEIGHTS_NAME = "model.safetensors"


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def state_to_safetensors(module: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; clone keeps tied weights loadable.
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def save_model_dir(path: Path, model: nn.Module, config: ExperimentConfig) -> None:
    """Write config + weights into `path` (created; written in place, callers rename for atomicity)."""
    path.mkdir(parents=True, exist_ok=True)
    save_file(state_to_safetensors(model), str(path / WEIGHTS_NAME))
    atomic_write_text(path / CONFIG_NAME, recipe_to_yaml(config))


def load_config(path: Path) -> ExperimentConfig:
    tree = OmegaConf.to_container(OmegaConf.load(path / CONFIG_NAME), resolve=True)
    return structured_from_dict(ExperimentConfig, tree)  # type: ignore[arg-type]


def resolve_model_dir(path: str | Path) -> Path:
    """Accept a model dir, a training checkpoint dir (with model/), or a run dir (uses checkpoints/latest)."""
    path = Path(path)
    candidates = [path, path / "model", path / "checkpoints" / "latest" / "model"]
    latest = path / "checkpoints" / "LATEST"
    if latest.is_file():
        candidates.insert(0, path / "checkpoints" / latest.read_text().strip() / "model")
    for candidate in candidates:
        if (candidate / WEIGHTS_NAME).is_file() and (candidate / CONFIG_NAME).is_file():
            return candidate
    raise FileNotFoundError(f"no model checkpoint ({WEIGHTS_NAME} + {CONFIG_NAME}) found under {path}")


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, ExperimentConfig]:
    """Rebuild the model from its recipe and load the weights (strict)."""
    from mmembed.model import build_model

    model_dir = resolve_model_dir(path)
    config = load_config(model_dir)
    model = build_model(config.model)
    state = load_file(str(model_dir / WEIGHTS_NAME), device=str(map_location))
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, config

