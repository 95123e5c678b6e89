"""Teacher models of the ensemble: each maps replayed images / audio crops / captions to unit embeddings.

Teachers are registered by kind (`open_clip`, `mmembed`); each has its own tokenizer, input size,
normalisation and fixed logit scale, and a checksum of its weights file(s) that `teachers.json` records so
that a stored embedding can always be traced to the exact weights that produced it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmembed.config.reinforce import TeacherSpec
from mmembed.registry import Registry
from mmembed.reinforced_format.augment import ReplayTransform
from mmembed.reinforced_format.replay_params import replay_from_preprocess_cfg, replay_from_transform


def file_sha256(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class Teacher:
    """A frozen model in eval mode. Subclasses set the attributes and implement the encoders they support."""

    name: str
    scale: float
    dim: int
    checksum: str
    kind: str
    args: dict[str, Any]
    image_replay: ReplayTransform | None = None

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        raise ValueError(f"teacher '{self.name}' ({self.kind}) has no image encoder")

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        raise ValueError(f"teacher '{self.name}' ({self.kind}) has no text encoder")

    @torch.no_grad()
    def encode_audio(self, clips: Sequence[np.ndarray], sample_rate: int) -> torch.Tensor:
        raise ValueError(f"teacher '{self.name}' ({self.kind}) has no audio encoder")

    def describe(self) -> dict[str, Any]:
        """The `teachers.json` entry: enough to rebuild the teacher and check it is the same one."""
        return {"name": self.name, "kind": self.kind, "args": dict(self.args), "dim": self.dim,
                "scale": self.scale, "sha256": self.checksum}


TEACHERS: Registry[Teacher] = Registry("teacher")


@dataclass
class OpenClipTeacherConfig:
    # An open_clip config name ("ViT-L-14") with `pretrained` a local weights file, or "local-dir:/path".
    model_name: str
    pretrained: str | None = None
    precision: str = "fp32"


def _open_clip_weights(cfg: OpenClipTeacherConfig, name: str) -> list[Path]:
    if cfg.model_name.startswith("local-dir:"):
        folder = Path(cfg.model_name[len("local-dir:"):])
        files = sorted(p for ext in ("*.safetensors", "*.bin", "*.pth") for p in folder.glob(ext))
        if not files:
            raise FileNotFoundError(f"teacher '{name}': no weights (*.safetensors/*.bin/*.pth) in {folder}")
        return files
    if not cfg.pretrained or not Path(cfg.pretrained).is_file():
        raise FileNotFoundError(f"teacher '{name}': args.pretrained must be a local weights file for "
                                f"{cfg.model_name} (no downloads), got {cfg.pretrained!r}")
    return [Path(cfg.pretrained)]


class OpenClipTeacher(Teacher):
    kind = "open_clip"

    def __init__(self, cfg: OpenClipTeacherConfig, spec: TeacherSpec, device: torch.device) -> None:
        import open_clip

        self.name, self.scale, self.args, self.device = spec.name, float(spec.scale), dict(spec.args), device
        self.checksum = file_sha256(_open_clip_weights(cfg, spec.name))
        pretrained = None if cfg.model_name.startswith("local-dir:") else cfg.pretrained
        self.model: nn.Module = open_clip.create_model(cfg.model_name, pretrained=pretrained, device=device,
                                                       precision=cfg.precision).eval()
        self.tokenizer = open_clip.get_tokenizer(cfg.model_name)
        self.image_replay = replay_from_preprocess_cfg(open_clip.get_model_preprocess_cfg(self.model))
        self.dim = int(self.encode_texts(["a"]).shape[1])

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        return F.normalize(self.model.encode_image(pixels.to(self.device, dtype)).float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)


@TEACHERS.register("open_clip", OpenClipTeacherConfig)
def _build_open_clip(cfg: OpenClipTeacherConfig, spec: TeacherSpec, device: torch.device) -> Teacher:
    return OpenClipTeacher(cfg, spec, device)


@dataclass
class MmembedTeacherConfig:
    # A run dir, training checkpoint dir or model dir written by mmembed.
    checkpoint: str
    text_modality: str = "text"


class MmembedTeacher(Teacher):
    """A model trained with mmembed (e.g. a larger model trained on the same data) used as a teacher."""

    kind = "mmembed"

    def __init__(self, cfg: MmembedTeacherConfig, spec: TeacherSpec, device: torch.device) -> None:
        from mmembed.checkpoint import WEIGHTS_NAME, load_model, resolve_model_dir

        self.name, self.scale, self.args, self.device = spec.name, float(spec.scale), dict(spec.args), device
        model_dir = resolve_model_dir(cfg.checkpoint)
        self.checksum = file_sha256([model_dir / WEIGHTS_NAME])
        model, _ = load_model(model_dir)
        self.model = model.to(device).eval()
        self.text_modality = cfg.text_modality
        self._pre = self.model.preprocessors(False)
        if "image" in self._pre:
            self.image_replay = replay_from_transform(self._pre["image"], f"teacher '{self.name}' image")
        self.dim = int(self.encode_texts(["a"]).shape[1])

    def _encode(self, modality: str, values: Sequence[Any]) -> torch.Tensor:
        from mmembed.data.collate import stack_values
        from mmembed.device import to_device

        if modality not in self._pre:
            raise ValueError(f"teacher '{self.name}' has no '{modality}' tower; it has {sorted(self._pre)}")
        batch = stack_values(modality, [self._pre[modality](v) for v in values])
        return self.model.encode(modality, to_device(batch, self.device)).float()

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode("image", pixels.to(self.device)).float()

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self._encode(self.text_modality, list(texts))

    @torch.no_grad()
    def encode_audio(self, clips: Sequence[np.ndarray], sample_rate: int) -> torch.Tensor:
        return self._encode("audio", [(clip, sample_rate) for clip in clips])


@TEACHERS.register("mmembed", MmembedTeacherConfig)
def _build_mmembed(cfg: MmembedTeacherConfig, spec: TeacherSpec, device: torch.device) -> Teacher:
    return MmembedTeacher(cfg, spec, device)


def build_teacher(spec: TeacherSpec, device: torch.device) -> Teacher:
    entry = TEACHERS.get(spec.kind)
    config = TEACHERS.make_config(spec.kind, spec.args, where=f"reinforce.teachers[{spec.name}].args")
    return entry.builder(config, spec, device)


def build_teachers(specs: Sequence[TeacherSpec], device: torch.device) -> list[Teacher]:
    if not specs:
        raise ValueError("reinforce.teachers is empty: a reinforced set needs at least one teacher")
    return [build_teacher(spec, device) for spec in specs]
