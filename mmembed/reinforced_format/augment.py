"""Augmentation records and their exact replay (docs/design.md, "Reinforced datasets").

A record is {"crop": [i, j, h, w], "flip": bool, "ops": [[op, magnitude], ...]}: the RandomResizedCrop box
in *source* pixels (top, left, height, width), a horizontal-flip flag and the RandAugment ops with the
magnitudes actually applied. Replay order is crop+resize -> flip -> ops -> tensor -> normalise.

Everything that depends on the output resolution is derived from the record at replay time (the crop box is
in source pixels, translations are fractions of the output size), so one record replays at a teacher's
224 px and at a student's 256 px alike: the same view of the image at two resolutions. MobileCLIP's released
generator computes such parameters but never writes them, so its replay path cannot run; ours writes and
replays them, and the builder itself produces every teacher input through `replay`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from mmembed.config.reinforce import AugmentConfig

# Magnitudes are rounded before being applied, so the stored JSON value is exactly what was applied.
_DECIMALS = 4
_MAX_LEVEL = 10.0


@dataclass(frozen=True)
class AugRecord:
    crop: tuple[int, int, int, int]
    flip: bool
    ops: tuple[tuple[str, float], ...]

    def to_json(self) -> dict[str, Any]:
        return {"crop": list(self.crop), "flip": self.flip, "ops": [[name, mag] for name, mag in self.ops]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AugRecord:
        try:
            crop = tuple(int(v) for v in data["crop"])
            ops = tuple((str(name), float(mag)) for name, mag in data["ops"])
            flip = bool(data["flip"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"invalid augmentation record {data!r}: {err}") from err
        if len(crop) != 4 or crop[2] < 1 or crop[3] < 1:
            raise ValueError(f"augmentation record crop must be [i, j, h, w] with h, w >= 1, got {list(crop)}")
        unknown = [name for name, _ in ops if name not in RANDAUG_OPS]
        if unknown:
            raise ValueError(f"augmentation record names unknown ops {unknown}; known: {sorted(RANDAUG_OPS)}")
        return cls(crop, flip, ops)  # type: ignore[arg-type]


# -- RandAugment ops: (apply(img, magnitude), magnitude(level in [0, 1], rng)) -----------------------------
def _signed(limit: float) -> Callable[[float, random.Random], float]:
    return lambda level, rng: level * limit * (1 if rng.random() < 0.5 else -1)


def _affine(img: Image.Image, *, angle: float = 0.0, translate: tuple[int, int] = (0, 0),
            shear: tuple[float, float] = (0.0, 0.0)) -> Image.Image:
    return TF.affine(img, angle=angle, translate=list(translate), scale=1.0, shear=list(shear),
                     interpolation=InterpolationMode.NEAREST, fill=[0, 0, 0])


def _shear(img: Image.Image, factor: float, axis: int) -> Image.Image:
    degrees = math.degrees(math.atan(factor))
    return _affine(img, shear=(degrees, 0.0) if axis == 0 else (0.0, degrees))


def _translate(img: Image.Image, fraction: float, axis: int) -> Image.Image:
    # A fraction of the *output* size, so the shift means the same at every replay resolution.
    pixels = round(fraction * img.size[axis])
    return _affine(img, translate=(pixels, 0) if axis == 0 else (0, pixels))


RANDAUG_OPS: dict[str, tuple[Callable[[Image.Image, float], Image.Image],
                             Callable[[float, random.Random], float]]] = {
    "Identity": (lambda img, m: img, lambda level, rng: 0.0),
    "AutoContrast": (lambda img, m: TF.autocontrast(img), lambda level, rng: 0.0),
    "Equalize": (lambda img, m: TF.equalize(img), lambda level, rng: 0.0),
    "Rotate": (lambda img, m: _affine(img, angle=m), _signed(30.0)),
    "Solarize": (lambda img, m: TF.solarize(img, m), lambda level, rng: 256.0 - level * 256.0),
    "Posterize": (lambda img, m: TF.posterize(img, int(m)), lambda level, rng: float(8 - int(level * 4))),
    "Color": (lambda img, m: TF.adjust_saturation(img, 1.0 + m), _signed(0.9)),
    "Contrast": (lambda img, m: TF.adjust_contrast(img, 1.0 + m), _signed(0.9)),
    "Brightness": (lambda img, m: TF.adjust_brightness(img, 1.0 + m), _signed(0.9)),
    "Sharpness": (lambda img, m: TF.adjust_sharpness(img, 1.0 + m), _signed(0.9)),
    "ShearX": (lambda img, m: _shear(img, m, 0), _signed(0.3)),
    "ShearY": (lambda img, m: _shear(img, m, 1), _signed(0.3)),
    "TranslateX": (lambda img, m: _translate(img, m, 0), _signed(0.45)),
    "TranslateY": (lambda img, m: _translate(img, m, 1), _signed(0.45)),
}


def random_resized_crop_box(width: int, height: int, scale: Sequence[float], ratio: Sequence[float],
                            rng: random.Random) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params, drawing from `rng`: (i, j, h, w) in source pixels."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    # Fallback: the largest centred crop within the ratio bounds (as torchvision does).
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class AugmentSampler:
    """Draws records from an AugmentConfig; all randomness comes from the `rng` passed in."""

    def __init__(self, cfg: AugmentConfig) -> None:
        unknown = [op for op in cfg.randaug_ops if op not in RANDAUG_OPS]
        if unknown:
            raise ValueError(f"augment.randaug_ops names unknown ops {unknown}; known: {sorted(RANDAUG_OPS)}")
        if cfg.randaug_num_ops and not cfg.randaug_ops:
            raise ValueError("augment.randaug_ops is empty but randaug_num_ops > 0")
        self.cfg = cfg

    def sample(self, width: int, height: int, rng: random.Random) -> AugRecord:
        cfg = self.cfg
        crop = random_resized_crop_box(width, height, cfg.scale, cfg.ratio, rng)
        flip = rng.random() < cfg.flip_prob
        ops = []
        for _ in range(cfg.randaug_num_ops):
            name = cfg.randaug_ops[rng.randrange(len(cfg.randaug_ops))]
            level = rng.gauss(cfg.randaug_magnitude, cfg.randaug_magnitude_std) if cfg.randaug_magnitude_std \
                else cfg.randaug_magnitude
            level = min(max(level, 0.0), _MAX_LEVEL) / _MAX_LEVEL
            ops.append((name, round(RANDAUG_OPS[name][1](level, rng), _DECIMALS)))
        return AugRecord(crop, flip, tuple(ops))

    def sample_many(self, width: int, height: int, count: int, rng: random.Random) -> list[AugRecord]:
        return [self.sample(width, height, rng) for _ in range(count)]


@dataclass(frozen=True)
class ReplayTransform:
    """Record + source image -> the normalised tensor a model at `size` ((h, w)) sees."""

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: InterpolationMode = InterpolationMode.BICUBIC

    def pil(self, image: Image.Image, record: AugRecord) -> Image.Image:
        i, j, h, w = record.crop
        if i < 0 or j < 0 or i + h > image.height or j + w > image.width:
            raise ValueError(f"augmentation crop {list(record.crop)} lies outside the {image.width}x{image.height} "
                             "source image: the record belongs to another image")
        out = TF.resized_crop(image, i, j, h, w, list(self.size), interpolation=self.interpolation)
        if record.flip:
            out = TF.hflip(out)
        for name, magnitude in record.ops:
            out = RANDAUG_OPS[name][0](out, magnitude)
        return out

    def __call__(self, image: Image.Image, record: AugRecord) -> torch.Tensor:
        if image.mode != "RGB":
            image = image.convert("RGB")
        tensor = TF.to_tensor(self.pil(image, record))
        return TF.normalize(tensor, list(self.mean), list(self.std))
