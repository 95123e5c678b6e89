"""Helpers for the reinforce tests: tiny local open_clip teachers / CoCa and small plain shards."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from PIL import Image
from safetensors.torch import save_file

from data_tools.shard_writer import SizedShardWriter
from mmembed.config.reinforce import ReinforceConfig
from mmembed.config.validate import structured_from_dict

VISION = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16}
TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}


def save_open_clip_dir(folder: Path, model_cfg: dict[str, Any], seed: int, size: int = 32) -> str:
    """A `local-dir:` open_clip model with random weights (seeded), as a real user folder would hold."""
    folder.mkdir(parents=True, exist_ok=True)
    preprocess = {"size": size, "interpolation": "bicubic", "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg,
                                                              "preprocess_cfg": preprocess}))
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False)
    if hasattr(model, "text_decoder"):
        # open_clip 3.3's MultimodalTransformer never initialises text_projection (its init_parameters() is
        # never called and would fail), so a fresh CoCa holds uninitialised memory there: NaN logits that
        # depend on what ran before in the process.
        torch.nn.init.normal_(model.text_decoder.text_projection, std=model.text_decoder.width ** -0.5)
    save_file({k: v.contiguous().clone() for k, v in model.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    return f"local-dir:{folder}"


def tiny_clip(folder: Path, seed: int = 0, embed_dim: int = 24, size: int = 32) -> str:
    vision = {**VISION, "image_size": size}
    return save_open_clip_dir(folder, {"embed_dim": embed_dim, "vision_cfg": vision, "text_cfg": TEXT},
                              seed, size)


def tiny_coca(folder: Path, seed: int = 0) -> str:
    cfg = {
        "embed_dim": 32, "custom_text": True,
        "multimodal_cfg": {"width": 32, "context_length": 16, "vocab_size": 49408, "layers": 1, "heads": 2,
                           "dim_head": 16, "n_queries": 4, "attn_pooler_heads": 2, "mlp_ratio": 2},
        "vision_cfg": {**VISION, "output_tokens": True},
        "text_cfg": {**TEXT, "embed_cls": True, "output_tokens": True},
    }
    return save_open_clip_dir(folder, cfg, seed)


def png_bytes(rng: np.random.Generator, width: int, height: int) -> bytes:
    pixels = (rng.random((height, width, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def make_plain_shards(out: Path, samples: int, per_shard: int, seed: int = 0) -> str:
    """Random images of varying sizes with captions; returns the brace pattern."""
    rng = np.random.default_rng(seed)
    words = ["red", "blue", "circle", "square", "small", "large", "left", "right"]
    with SizedShardWriter(out, "plain", samples_per_shard=per_shard) as writer:
        for i in range(samples):
            caption = " ".join(rng.choice(words, size=4))
            writer.write(f"s{i:05d}", {"png": png_bytes(rng, int(rng.integers(36, 60)), int(rng.integers(36, 60))),
                                       "txt": caption})
    return writer.close().pattern


def reinforce_config(inputs: str, out: Path, teachers: list[dict[str, Any]], **extra: Any) -> ReinforceConfig:
    tree = {"input": [inputs], "output_dir": str(out), "teachers": teachers,
            "augment": {"num_augs": 3}, "batch_size": 4, **extra}
    return structured_from_dict(ReinforceConfig, tree)


def teacher(name: str, model_name: str, scale: float = 100.0) -> dict[str, Any]:
    return {"name": name, "kind": "open_clip", "args": {"model_name": model_name}, "scale": scale}
