"""What exporting needs to know about each registered tower type: its input tensors (names, dtypes, shapes
with dynamic axes), its inference preprocessing as plain JSON, how to strip build-machine paths from its
recipe arguments, and (for audio) an export-friendly twin of its front end.

One `TowerKind` per tower type, looked up by the recipe's `tower.type`; a tower type without an entry
cannot be exported and the error says so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn

from mmembed.towers.conv_stft import ConvLogMel, centre_crop_or_pad
from mmembed.types import TowerInput

# The folder, relative to an export directory, holding a Hugging Face text tower's tokenizer (and config).
HF_TEXT_DIR = "text_hf"


@dataclass(frozen=True)
class InputSpec:
    """One input tensor of an exported tower; string dims are dynamic axes ("batch", "time", "seq")."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    def example(self, sizes: Mapping[str, int]) -> torch.Tensor:
        """A random tensor of this spec with the dynamic axes set from `sizes`."""
        shape = [sizes[d] if isinstance(d, str) else d for d in self.shape]
        if self.dtype == "float32":
            return torch.randn(shape)
        # Token ids: small ids are valid for every vocabulary; an all-ones mask keeps every token.
        if self.name == "attention_mask":
            return torch.ones(shape, dtype=torch.int64)
        return torch.randint(1, 100, shape, dtype=torch.int64)


@dataclass(frozen=True)
class TowerKind:
    inputs: Callable[[nn.Module], list[InputSpec]]
    preprocess: Callable[[nn.Module], dict[str, Any]]
    # Recipe args -> args that rebuild the same architecture on another machine (weights come from the
    # export, so pretrained paths are dropped).
    portable_args: Callable[[nn.Module, dict[str, Any]], dict[str, Any]]
    # Tower -> a module computing the same features whose graph exports to ONNX (None: the tower itself).
    onnx_twin: Callable[[nn.Module], nn.Module] | None = None
    # Writes files the export needs besides the weights (a tokenizer) into the export folder; the flag
    # says whether the tower must be rebuildable from them in PyTorch (True) or only preprocess (False).
    write_files: Callable[[nn.Module, Path, bool], None] | None = None
    # Exported args -> args for this machine (relative paths resolved against the export folder).
    local_args: Callable[[dict[str, Any], Path], dict[str, Any]] = lambda args, root: args
    # Sizes of the non-batch dynamic axes the ONNX check runs at (one export check per entry).
    check_sizes: Callable[[nn.Module], list[dict[str, int]]] = lambda tower: [{}]


def pack_inputs(specs: list[InputSpec], tensors: tuple[torch.Tensor, ...]) -> TowerInput:
    """Positional tensors (ONNX inputs) -> the TowerInput `tower.encode` takes."""
    if len(specs) == 1:
        return tensors[0]
    return {spec.name: t for spec, t in zip(specs, tensors, strict=True)}


def _image_size(tower: nn.Module) -> tuple[int, int]:
    size = tower.image_size
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _image_inputs(tower: nn.Module) -> list[InputSpec]:
    h, w = _image_size(tower)
    channels = int(getattr(getattr(tower, "model", None), "in_chans", 3) or 3)
    return [InputSpec("image", "float32", ("batch", channels, h, w))]


def _open_clip_image_preprocess(tower: nn.Module) -> dict[str, Any]:
    cfg = tower.cfg
    return {"kind": "image", "size": list(_image_size(tower)),
            "mean": list(cfg.mean or OPENAI_DATASET_MEAN), "std": list(cfg.std or OPENAI_DATASET_STD),
            "interpolation": cfg.interpolation or "bicubic", "resize_mode": cfg.resize_mode or "shortest"}


def _timm_image_preprocess(tower: nn.Module) -> dict[str, Any]:
    cfg = tower.cfg
    return {"kind": "image", "size": list(_image_size(tower)), "mean": list(tower.mean),
            "std": list(tower.std), "interpolation": cfg.interpolation or "bicubic",
            "resize_mode": cfg.resize_mode or "shortest"}


def _token_inputs(tower: nn.Module) -> list[InputSpec]:
    return [InputSpec("text", "int64", ("batch", int(tower.context_length)))]


def _open_clip_text_preprocess(tower: nn.Module) -> dict[str, Any]:
    return {"kind": "open_clip_tokenizer", "model_name": tower.cfg.model_name,
            "context_length": int(tower.context_length)}


def _hf_inputs(tower: nn.Module) -> list[InputSpec]:
    return [InputSpec("input_ids", "int64", ("batch", "seq")),
            InputSpec("attention_mask", "int64", ("batch", "seq"))]


def _hf_preprocess(tower: nn.Module) -> dict[str, Any]:
    return {"kind": "hf_tokenizer", "path": HF_TEXT_DIR, "max_length": int(tower.max_length)}


def _hf_args(tower: nn.Module, args: dict[str, Any]) -> dict[str, Any]:
    # Everything the source folder's sentence-transformers files decided is written out explicitly, so the
    # exported folder (config + tokenizer only) rebuilds the same tower.
    return {**args, "path": HF_TEXT_DIR, "pooling": tower.pooling, "max_length": int(tower.max_length),
            "normalize_features": bool(tower.normalize_features)}


def _hf_files(tower: nn.Module, root: Path, rebuildable: bool) -> None:
    folder = root / HF_TEXT_DIR
    tower.tokenizer.save_pretrained(folder)
    # HFTextTower rebuilds with AutoModel.from_pretrained, which needs weights in the folder: the PyTorch
    # export therefore repeats the transformer's weights there; ONNX needs only config + tokenizer.
    if rebuildable:
        tower.model.save_pretrained(folder)
    else:
        tower.model.config.save_pretrained(folder)


def _hf_local_args(args: dict[str, Any], root: Path) -> dict[str, Any]:
    return {**args, "path": str(root / args["path"])}


def _audio_inputs(tower: nn.Module) -> list[InputSpec]:
    return [InputSpec("waveform", "float32", ("batch", "time"))]


def _audio_preprocess(tower: nn.Module) -> dict[str, Any]:
    return {"kind": "waveform", "sample_rate": int(tower.sample_rate),
            "clip_samples": int(tower.clip_samples)}


class AudioMelTwin(nn.Module):
    """audio_mel's eval forward with the conv1d STFT and branch-free centre crop / pad (see stft.py)."""

    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        self.tower = tower
        self.frontend = ConvLogMel(tower.frontend)

    def encode(self, waveform: torch.Tensor) -> torch.Tensor:
        clip = centre_crop_or_pad(waveform, self.tower.clip_samples)
        mel = self.frontend(clip).unsqueeze(1)
        mel = self.tower.input_norm(mel.transpose(1, 2)).transpose(1, 2)
        return self.tower.backbone(mel)


def _audio_check_sizes(tower: nn.Module) -> list[dict[str, int]]:
    # Shorter than, equal to and longer than the clip: the pad, pass-through and centre-crop paths.
    n = int(tower.clip_samples)
    return [{"time": n // 2 + 3}, {"time": n}, {"time": n + n // 2 + 1}]


def _without(*keys: str, **fixed: Any) -> Callable[[nn.Module, dict[str, Any]], dict[str, Any]]:
    def portable(tower: nn.Module, args: dict[str, Any]) -> dict[str, Any]:
        return {**{k: v for k, v in args.items() if k not in keys}, **fixed}

    return portable


TOWER_KINDS: dict[str, TowerKind] = {
    "open_clip_vision": TowerKind(_image_inputs, _open_clip_image_preprocess, _without("pretrained")),
    "timm_image": TowerKind(_image_inputs, _timm_image_preprocess,
                            _without("checkpoint_path", pretrained=False)),
    "open_clip_text": TowerKind(_token_inputs, _open_clip_text_preprocess, _without("pretrained")),
    "hf_text": TowerKind(_hf_inputs, _hf_preprocess, _hf_args, write_files=_hf_files,
                         local_args=_hf_local_args,
                         check_sizes=lambda t: [{"seq": 5}, {"seq": min(int(t.max_length), 24)}]),
    "audio_mel": TowerKind(_audio_inputs, _audio_preprocess, _without("checkpoint_path", pretrained=False),
                           onnx_twin=AudioMelTwin,
                           check_sizes=_audio_check_sizes),
}


def tower_kind(tower_type: str, modality: str) -> TowerKind:
    if tower_type not in TOWER_KINDS:
        raise ValueError(f"modality '{modality}': tower type '{tower_type}' has no export support; "
                         f"exportable tower types: {sorted(TOWER_KINDS)}")
    return TOWER_KINDS[tower_type]
