"""Inference preprocessing rebuilt from an export's JSON `preprocess` entry, without building the tower.

The entry is plain JSON so non-Python consumers can reproduce it; this module is the reference reading.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mmembed.types import Preprocessor


def _image(spec: Mapping[str, Any], root: Path) -> Preprocessor:
    from open_clip.transform import image_transform

    size = spec["size"]
    return image_transform(tuple(size) if isinstance(size, list) else int(size), is_train=False,
                           mean=tuple(spec["mean"]), std=tuple(spec["std"]),
                           resize_mode=spec["resize_mode"], interpolation=spec["interpolation"])


def _open_clip_tokenizer(spec: Mapping[str, Any], root: Path) -> Preprocessor:
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer

    from mmembed.towers.open_clip_text import TokenizeOne

    length = int(spec["context_length"])
    name = spec.get("model_name")
    tokenizer = open_clip.get_tokenizer(name, context_length=length) if name else SimpleTokenizer(context_length=length)
    return TokenizeOne(tokenizer)


def _hf_tokenizer(spec: Mapping[str, Any], root: Path) -> Preprocessor:
    from transformers import AutoTokenizer

    from mmembed.towers.hf_text import TokenizeFixed

    tokenizer = AutoTokenizer.from_pretrained(root / spec["path"], local_files_only=True)
    return TokenizeFixed(tokenizer, int(spec["max_length"]))


def _byte_tokenizer(spec: Mapping[str, Any], root: Path) -> Preprocessor:
    from mmembed.towers.byte_text import ByteTokenize

    return ByteTokenize(int(spec["context_length"]), bool(spec["lowercase"]))


def _waveform(spec: Mapping[str, Any], root: Path) -> Preprocessor:
    from mmembed.towers.audio_mel import ClipWaveform

    return ClipWaveform(int(spec["sample_rate"]), int(spec["clip_samples"]), is_train=False)


PREPROCESSORS: dict[str, Callable[[Mapping[str, Any], Path], Preprocessor]] = {
    "image": _image,
    "open_clip_tokenizer": _open_clip_tokenizer,
    "hf_tokenizer": _hf_tokenizer,
    "byte_tokenizer": _byte_tokenizer,
    "waveform": _waveform,
}


def build_preprocessor(spec: Mapping[str, Any], root: str | Path) -> Preprocessor:
    """Per-sample preprocessor (PIL image | str | (waveform, sr) -> tensor(s)) for an export's `preprocess`
    entry; relative paths in it are resolved against the export folder `root`."""
    kind = spec.get("kind")
    if kind not in PREPROCESSORS:
        raise ValueError(f"unknown preprocess kind {kind!r} in export {root}; known: {sorted(PREPROCESSORS)}")
    return PREPROCESSORS[kind](spec, Path(root))
