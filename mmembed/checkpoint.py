"""Model checkpoints on disk: weights as safetensors plus the recipe as YAML. Nothing is unpickled.

Layout of a model directory (also the `model/` part of a training checkpoint):
    config.yaml         the full recipe (ExperimentConfig) the model was built from
    model.safetensors   MultiModalModel.state_dict()

Inside a training checkpoint, the checkpoint's `trainer.json` records a checksum of both files; `load_model`
verifies them, and refuses unreadable files and non-finite weights, naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file
from torch import nn

from mmembed.config import ExperimentConfig, recipe_to_yaml, structured_from_dict
from mmembed.errors import CorruptFileError, MissingFileError
from mmembed.integrity import load_safetensors_checked, verify_files

CONFIG_NAME = "config.yaml"
WEIGHTS_NAME = "model.safetensors"
# A training checkpoint's metadata (mmembed.train.checkpointing); its "files" table holds the checksums.
CHECKPOINT_META = "trainer.json"
# The folder of a sharded (FSDP) training checkpoint holding each rank's shards (mmembed.train.sharded_checkpoint).
SHARDS_DIR = "shards"


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def state_to_safetensors(module: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; clone keeps tied weights loadable.
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def save_model_dir(path: Path, model: nn.Module, config: ExperimentConfig) -> None:
    """Write config + weights into `path` (created; written in place, callers rename for atomicity)."""
    save_state_dir(path, state_to_safetensors(model), config)


def save_state_dir(path: Path, state: dict[str, torch.Tensor], config: ExperimentConfig) -> None:
    """`save_model_dir` for a state dict already in hand (e.g. stitched from a sharded checkpoint)."""
    path.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path / WEIGHTS_NAME))
    atomic_write_text(path / CONFIG_NAME, recipe_to_yaml(config))


def load_config(path: Path) -> ExperimentConfig:
    try:
        tree = OmegaConf.to_container(OmegaConf.load(path / CONFIG_NAME), resolve=True)
    except Exception as err:  # yaml/OmegaConf raise many types for a damaged file
        raise CorruptFileError(path / CONFIG_NAME, f"unreadable recipe ({type(err).__name__})") from err
    return structured_from_dict(ExperimentConfig, tree)  # type: ignore[arg-type]


def read_checkpoint_meta(checkpoint_dir: Path) -> dict:
    """A training checkpoint's `trainer.json` (CorruptFileError when it is not valid JSON)."""
    path = checkpoint_dir / CHECKPOINT_META
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFileError(path, f"not valid JSON (truncated?): {err}") from err
    if not isinstance(meta, dict) or not {"step", "world_size"} <= set(meta):
        raise CorruptFileError(path, "not a training checkpoint's metadata (needs 'step' and 'world_size')")
    return meta


def verify_model_dir(model_dir: Path) -> None:
    """Check the model files against the enclosing training checkpoint's checksums, when there are any.

    A model folder copied out of its checkpoint has none; its weights are still checked for readability and
    finite values when loaded.
    """
    checkpoint = model_dir.parent
    if not (checkpoint / CHECKPOINT_META).is_file():
        return
    table = read_checkpoint_meta(checkpoint).get("files")
    if table:
        verify_files(checkpoint, table, only=f"{model_dir.name}/")


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
    if latest.is_file():
        named = path / "checkpoints" / latest.read_text().strip()
        if (named / SHARDS_DIR).is_dir():
            raise MissingFileError(f"{named} is a sharded (FSDP) checkpoint without a consolidated model; run "
                                   f"`mmembed consolidate {path}` first")
        raise MissingFileError(f"{latest} names checkpoint '{latest.read_text().strip()}', which has no complete "
                               f"model/ folder; pass a checkpoint folder under {path / 'checkpoints'} explicitly")
    if (path / SHARDS_DIR).is_dir():
        raise MissingFileError(f"{path} is a sharded (FSDP) checkpoint without a consolidated model; run "
                               f"`mmembed consolidate {path}` first")
    raise MissingFileError(f"no model checkpoint ({WEIGHTS_NAME} + {CONFIG_NAME}) found under {path}; pass a "
                           "run folder, a checkpoint folder (with model/) or a model folder")


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, ExperimentConfig]:
    """Rebuild the model from its recipe and load the weights (strict)."""
    from mmembed.model import build_model

    model_dir = resolve_model_dir(path)
    verify_model_dir(model_dir)
    config = load_config(model_dir)
    model = build_model(config.model)
    state = load_safetensors_checked(model_dir / WEIGHTS_NAME, device=str(map_location))
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, config

