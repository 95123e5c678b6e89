"""Tiny models and files shared by the export / embed / search tests (no tests here)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from PIL import Image

from mmembed.checkpoint import save_model_dir
from mmembed.config import ExperimentConfig, structured_from_dict
from mmembed.model import MultiModalModel, build_model

IMAGE = {"type": "open_clip_vision",
         "args": {"vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 16},
                  "embed_dim": 48}}
TEXT = {"type": "open_clip_text",
        "args": {"text_cfg": {"context_length": 16, "width": 64, "heads": 4, "layers": 2}, "embed_dim": 40}}
AUDIO = {"type": "audio_mel",
         "args": {"sample_rate": 16000, "n_fft": 512, "hop_length": 160, "n_mels": 32, "f_min": 50.0,
                  "f_max": 8000.0, "clip_seconds": 0.5, "backbone": "test_efficientnet"}}


def model_tree(towers: dict[str, dict[str, Any]], heads: dict[str, dict[str, Any]], embed_dim: int = 32,
               pairs: list[tuple[str, str, str]] | None = None) -> dict[str, Any]:
    modalities = {m: {"tower": copy.deepcopy(t), "head": heads.get(m, {"type": "linear"})}
                  for m, t in towers.items()}
    pairs = pairs if pairs is not None else [("image", "text", "siglip")]
    return {"name": "tiny", "model": {"embed_dim": embed_dim, "modalities": modalities,
                                      "pairs": [{"a": a, "b": b, "loss": loss} for a, b, loss in pairs]}}


def make_model(tree: dict[str, Any], seed: int = 0) -> tuple[MultiModalModel, ExperimentConfig]:
    torch.manual_seed(seed)
    config = structured_from_dict(ExperimentConfig, tree)
    model = build_model(config.model).eval()
    # Non-trivial BatchNorm statistics and scales, as a trained model has.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
        for theta in model.logit_scales.values():
            theta.fill_(2.9)
    return model, config


def save_checkpoint(root: Path, tree: dict[str, Any]) -> tuple[MultiModalModel, Path]:
    model, config = make_model(tree)
    save_model_dir(root, model, config)
    return model, root


def tri_modal_tree() -> dict[str, Any]:
    return model_tree({"image": IMAGE, "text": TEXT, "audio": AUDIO}, {},
                      pairs=[("image", "text", "infonce"), ("audio", "text", "infonce")])


def write_image(path: Path, seed: int, size: int = 40) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size + 7, 3), dtype=np.uint8)).save(path)


def write_audio(path: Path, seed: int, seconds: float, sample_rate: int = 16000) -> None:
    rng = np.random.default_rng(seed)
    sf.write(path, (0.1 * rng.standard_normal(int(seconds * sample_rate))).astype(np.float32), sample_rate)


def strings_in(tree: Any) -> list[str]:
    if isinstance(tree, dict):
        return [s for v in tree.values() for s in strings_in(v)]
    if isinstance(tree, list):
        return [s for v in tree for s in strings_in(v)]
    return [tree] if isinstance(tree, str) else []
