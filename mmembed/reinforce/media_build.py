"""What the builder and the verifier need per stored medium, on top of its format handler
(mmembed.reinforced_format.media): drawing the K view records of a source sample, the recipe/manifest
section that configures them, and the teachers' embeddings of those views.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, Protocol

import numpy as np

from mmembed.config.reinforce import ReinforceConfig
from mmembed.reinforce.teacher_embeddings import audio_embeddings, image_embeddings
from mmembed.reinforce.teachers import Teacher
from mmembed.reinforced_format.augment import AugmentSampler
from mmembed.reinforced_format.crops import AudioCrops
from mmembed.reinforced_format.media import MEDIA, MediaFormat


class MediaBuild(Protocol):
    format: MediaFormat
    # Whether the captioner (which reads images) can describe this medium.
    captionable: bool
    # Purpose name in the per-sample seed of `draw` (part of every stored record's provenance).
    rng_purpose: str

    def settings(self, cfg: ReinforceConfig) -> dict[str, Any]: ...

    def expected_views(self, manifest: dict[str, Any]) -> int: ...

    def draw(self, cfg: ReinforceConfig, value: Any, rng: random.Random) -> Any: ...

    def teacher_embeddings(self, teachers: Sequence[Teacher], values: Sequence[Any],
                           records: Sequence[Any]) -> list[np.ndarray]: ...


class ImageBuild:
    """K augmentation records per image (RandomResizedCrop box in source pixels, flip, RandAugment)."""

    format = MEDIA["image"]
    captionable = True
    rng_purpose = "paug"

    def settings(self, cfg: ReinforceConfig) -> dict[str, Any]:
        return {"augment": asdict(cfg.augment)}

    def expected_views(self, manifest: dict[str, Any]) -> int:
        return int(manifest["augment"]["num_augs"])

    def draw(self, cfg: ReinforceConfig, value: Any, rng: random.Random) -> Any:
        return AugmentSampler(cfg.augment).sample_many(value.width, value.height, cfg.augment.num_augs, rng)

    def teacher_embeddings(self, teachers: Sequence[Teacher], values: Sequence[Any],
                           records: Sequence[Any]) -> list[np.ndarray]:
        return image_embeddings(teachers, values, records)


class AudioBuild:
    """K crops of `audio.crop_seconds` per recording at uniformly drawn offsets."""

    format = MEDIA["audio"]
    captionable = False
    rng_purpose = "acrop"

    def settings(self, cfg: ReinforceConfig) -> dict[str, Any]:
        return {"audio": asdict(cfg.audio)}

    def expected_views(self, manifest: dict[str, Any]) -> int:
        return int(manifest["audio"]["num_crops"])

    def draw(self, cfg: ReinforceConfig, value: Any, rng: random.Random) -> AudioCrops:
        waveform, rate = value
        length = max(1, round(cfg.audio.crop_seconds * rate))
        last = max(waveform.shape[0] - length, 0)
        return AudioCrops(rate, length, tuple(rng.randint(0, last) for _ in range(cfg.audio.num_crops)))

    def teacher_embeddings(self, teachers: Sequence[Teacher], values: Sequence[Any],
                           records: Sequence[Any]) -> list[np.ndarray]:
        return audio_embeddings(teachers, [v[0] for v in values], records)


MEDIA_BUILDS: dict[str, MediaBuild] = {"image": ImageBuild(), "audio": AudioBuild()}
