"""Bytes -> Python values for each modality: PIL RGB images, str captions, mono float32 waveforms.

Every decoder raises `DecodeError` (with the reason) on data it cannot turn into a usable value, so the
pipeline can skip, count and log a corrupt sample instead of crashing on it.
"""

from __future__ import annotations

import io
import json

import numpy as np
import soundfile as sf
from PIL import Image, UnidentifiedImageError

# Fields of a JSON caption record, in the order they are tried.
JSON_TEXT_FIELDS = ("caption", "text")
# Integer formats decode to [-1, 1); float WAV/FLAC may exceed it a little after mixing, but a peak 40 dB over
# full scale is corruption (1e30 turned a whole batch's loss non-finite before this check).
MAX_ABS_AMPLITUDE = 100.0


class DecodeError(ValueError):
    """A sample member whose bytes are not a valid value of its modality."""


def decode_image(data: bytes) -> Image.Image:
    """JPEG/PNG/WebP (anything PIL reads) -> fully loaded 8-bit RGB image (see `to_rgb` for the modes)."""
    try:
        image = Image.open(io.BytesIO(data))
        # PIL decodes lazily; load() here makes truncated files fail now, not inside a transform later.
        image.load()
        return to_rgb(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DecodeError(f"unreadable image ({len(data)} bytes): {err}") from err


# 16- and 32-bit integer grey modes; their values are read as 16-bit levels (0..65535).
WIDE_INT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# Modes with an alpha channel; P, L and RGB carry transparency in image.info instead.
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa")
# What transparent pixels are composited onto (img2dataset, which built LAION and DataComp, does the same).
MATTE = (255, 255, 255)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB with the intended brightness.

    `convert("RGB")` alone clips 16-bit grey (I;16, I) to white and drops transparency, showing whatever
    colour hides under transparent pixels. Here 16-bit grey is scaled by 255/65535, float grey (F) is read as
    [0, 1] (or [0, 255] when it exceeds 1), and transparent or translucent pixels are composited onto white.
    CMYK, 1, L, YCbCr, ... use PIL's own conversion.
    """
    if image.mode in WIDE_INT_MODES:
        levels = np.clip(np.asarray(image, dtype=np.float64), 0, 65535) * (255.0 / 65535.0)
        return _grey_to_rgb(levels)
    if image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
        return _grey_to_rgb(values * scale)
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*MATTE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _grey_to_rgb(levels: np.ndarray) -> Image.Image:
    grey = np.clip(np.rint(levels), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(np.stack([grey] * 3, axis=-1)), "RGB")


def decode_text(data: bytes, ext: str = "txt") -> str:
    """UTF-8 text, or a JSON object's "caption"/"text" field when `ext` ends in "json"; never empty."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DecodeError(f"text is not valid UTF-8: {err}") from err
    if ext.lower().endswith("json"):
        text = _text_from_json(text)
    text = text.strip()
    if not text:
        raise DecodeError("empty text")
    return text


def _text_from_json(raw: str) -> str:
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as err:
        raise DecodeError(f"invalid JSON caption: {err}") from err
    if not isinstance(record, dict):
        raise DecodeError(f"JSON caption must be an object, got {type(record).__name__}")
    for name in JSON_TEXT_FIELDS:
        value = record.get(name)
        if isinstance(value, str):
            return value
    raise DecodeError(f"JSON caption has no string field among {JSON_TEXT_FIELDS}; fields: {sorted(record)}")


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """FLAC/WAV/OGG/MP3 (whatever libsndfile reads) -> (float32 mono waveform [T], sample rate).

    Multi-channel audio is downmixed by an explicit mean over channels, so a stereo clip keeps the same
    loudness as a mono one instead of depending on a library's implicit channel handling.
    """
    try:
        frames, sample_rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, ValueError, EOFError) as err:
        raise DecodeError(f"unreadable audio ({len(data)} bytes): {err}") from err
    if frames.shape[0] == 0:
        raise DecodeError("audio has no frames")
    if not np.isfinite(frames).all():
        raise DecodeError("audio contains NaN or infinite samples")
    peak = float(np.abs(frames).max())
    if peak > MAX_ABS_AMPLITUDE:
        raise DecodeError(f"audio peak amplitude {peak:.3g} exceeds {MAX_ABS_AMPLITUDE:g} (decoded audio lies in "
                          "[-1, 1]; a float file this loud is corrupt or not normalised)")
    waveform = frames.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(waveform), int(sample_rate)


def decode_int(data: bytes) -> int:
    """An ASCII decimal integer member such as `idx` or `cls`."""
    try:
        return int(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError) as err:
        raise DecodeError(f"not an ASCII integer: {data[:32]!r}") from err
