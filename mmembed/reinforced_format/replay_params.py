"""Where a model's replay resolution and normalisation come from.

A replayed record needs the model's input size, interpolation, mean and std. They are read from the
model's own torchvision preprocessing pipeline (open_clip's and timm's train and eval transforms are
`Compose`s holding a crop or resize with `size`/`interpolation` and a `Normalize`), or from an open_clip
`preprocess_cfg`, so the student and every teacher are fed exactly the pixels their own pipeline would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from mmembed.reinforced_format.augment import ReplayTransform

_SIZED = (T.RandomResizedCrop, T.CenterCrop, T.Resize)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    values = tuple(int(v) for v in size)
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def _interpolation(value: Any) -> InterpolationMode:
    if isinstance(value, InterpolationMode):
        return value
    try:
        return InterpolationMode(str(value).lower())
    except ValueError as err:
        raise ValueError(f"unsupported interpolation {value!r} for augmentation replay") from err


def replay_from_transform(transform: Any, what: str) -> ReplayTransform:
    """Size, interpolation and normalisation from a torchvision Compose (the last sized step sets the size)."""
    steps = list(getattr(transform, "transforms", [transform]))
    sized = [s for s in steps if isinstance(s, _SIZED) or type(s).__name__ == "RandomResizedCropAndInterpolation"]
    norms = [s for s in steps if isinstance(s, T.Normalize)]
    if not sized or not norms:
        names = [type(s).__name__ for s in steps]
        raise ValueError(f"{what}: cannot replay augmentations for a preprocessor without a crop/resize step "
                         f"and a Normalize step (it has {names}); reinforced images need a torchvision pipeline")
    last = sized[-1]
    # CenterCrop has no interpolation: the resize before it decides how pixels are resampled.
    resampling = [s for s in sized if hasattr(s, "interpolation")]
    interpolation = resampling[-1].interpolation if resampling else InterpolationMode.BICUBIC
    if isinstance(interpolation, (tuple, list)):  # timm's "random" interpolation: use its first choice
        interpolation = interpolation[0]
    norm = norms[-1]
    return ReplayTransform(_pair(last.size), tuple(float(v) for v in norm.mean),  # type: ignore[arg-type]
                           tuple(float(v) for v in norm.std), _interpolation(interpolation))


def replay_from_preprocess_cfg(cfg: Mapping[str, Any]) -> ReplayTransform:
    """From an open_clip `preprocess_cfg` ({size, mean, std, interpolation, ...}); open_clip's defaults fill gaps."""
    if "size" not in cfg:
        raise ValueError(f"open_clip preprocess_cfg {dict(cfg)} has no 'size'")
    mean = tuple(cfg.get("mean") or OPENAI_MEAN)
    std = tuple(cfg.get("std") or OPENAI_STD)
    return ReplayTransform(_pair(cfg["size"]), mean, std,  # type: ignore[arg-type]
                           _interpolation(cfg.get("interpolation") or "bicubic"))
