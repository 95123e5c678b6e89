"""Reinforced-dataset build recipe: inputs, teachers, augmentations, captioner, storage (docs/design.md,
"Reinforced datasets").

    mmembed reinforce recipes/reinforce_demo.yaml            # build (resumable; accelerate launch splits shards)
    mmembed reinforce --verify data/demo_reinforced          # check counts, checksums, shapes and a replay
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from mmembed.config.paths import PathsConfig

# The RandAugment ops a record may name (mmembed.reinforced_format.augment implements each).
DEFAULT_RANDAUG_OPS = [
    "Identity", "AutoContrast", "Equalize", "Rotate", "Solarize", "Color", "Posterize", "Contrast",
    "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY",
]


@dataclass
class TeacherSpec:
    """One teacher of the ensemble. `kind` is a registered teacher builder (mmembed.reinforce.teachers):

    - `open_clip`: args {model_name: "ViT-L-14" | "local-dir:/path", pretrained: "/local/weights.safetensors"}
    - `mmembed`: args {checkpoint: "runs/x"} (a run, checkpoint or model dir)
    Weights are local files only. `scale` is the teacher's fixed logit scale c_k in the KD targets.
    """

    name: str = MISSING
    kind: str = "open_clip"
    args: dict[str, Any] = field(default_factory=dict)
    scale: float = 100.0


@dataclass
class AugmentConfig:
    """K augmentation records per sample: RandomResizedCrop (source pixels), flip, RandAugment."""

    num_augs: int = 10
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    flip_prob: float = 0.5
    # RandAugment (timm's "rand-m9-mstd0.5"): ops per record, magnitude level out of 10 and its noise.
    randaug_num_ops: int = 2
    randaug_magnitude: float = 9.0
    randaug_magnitude_std: float = 0.5
    randaug_ops: list[str] = field(default_factory=lambda: list(DEFAULT_RANDAUG_OPS))

    def __post_init__(self) -> None:
        if self.num_augs < 1:
            raise ValueError(f"augment.num_augs must be >= 1, got {self.num_augs}")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"augment.scale must be [lo, hi] with 0 < lo <= hi <= 1, got {list(self.scale)}")
        if len(self.ratio) != 2 or not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"augment.ratio must be [lo, hi] with 0 < lo <= hi, got {list(self.ratio)}")
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f"augment.flip_prob must lie in [0, 1], got {self.flip_prob}")
        if self.randaug_num_ops < 0 or not 0 <= self.randaug_magnitude <= 10:
            raise ValueError("augment.randaug_num_ops must be >= 0 and randaug_magnitude in [0, 10], got "
                             f"{self.randaug_num_ops} and {self.randaug_magnitude}")


@dataclass
class CaptionerSpec:
    """Synthetic captions. `kind` is a registered captioner (`open_clip_coca`: args {model_name, pretrained})."""

    kind: str = "open_clip_coca"
    args: dict[str, Any] = field(default_factory=dict)
    num_captions: int = 5
    # Nucleus sampling (MobileCLIP's DataCompDR uses top-p sampling of CoCa).
    top_p: float = 0.9
    temperature: float = 1.0
    max_length: int = 30
    min_length: int = 5
    # A caption whose most frequent word makes up more than this share of its words is degenerate.
    max_repeat_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.num_captions < 1:
            raise ValueError(f"captioner.num_captions must be >= 1, got {self.num_captions}")
        if not 0 < self.top_p <= 1 or self.max_length <= self.min_length:
            raise ValueError(f"captioner: need 0 < top_p <= 1 and max_length > min_length, got top_p={self.top_p}"
                             f", min_length={self.min_length}, max_length={self.max_length}")


@dataclass
class AudioCropConfig:
    """Audio-text builds: K crops of `crop_seconds` per recording, offsets recorded in `acrop.json`."""

    num_crops: int = 5
    crop_seconds: float = 1.0


@dataclass
class ReinforceConfig:
    name: str = "reinforce"
    # Plain input shards (brace patterns allowed); one output shard is written per input shard.
    input: list[str] = MISSING
    output_dir: str = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)  # roots for interpolation (mmembed.config.paths)
    # "image" (image-text teachers) or "audio" (audio-text teachers).
    modality: str = "image"
    teachers: list[TeacherSpec] = field(default_factory=list)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    audio: AudioCropConfig = field(default_factory=AudioCropConfig)
    captioner: CaptionerSpec | None = None
    # Embedding storage codec: fp16 (default), int8 (per-vector scale) or fp32.
    storage: str = "fp16"
    seed: int = 0
    # Samples per teacher forward (each contributes K augmented images).
    batch_size: int = 16
    # "auto": cuda:<LOCAL_RANK> when CUDA is available, else cpu.
    device: str = "auto"
    image_keys: str = "jpg;jpeg;png;webp"
    text_keys: str = "txt;text;caption;json"
    audio_keys: str = "flac;wav;ogg;mp3"

    def __post_init__(self) -> None:
        if self.modality not in ("image", "audio"):
            raise ValueError(f"reinforce.modality must be 'image' or 'audio', got {self.modality!r}")
        names = [t.name for t in self.teachers]
        if len(set(names)) != len(names):
            raise ValueError(f"reinforce.teachers: names must be unique, got {names}")
        if self.batch_size < 1:
            raise ValueError(f"reinforce.batch_size must be >= 1, got {self.batch_size}")
