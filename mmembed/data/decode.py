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


class DecodeError(ValueError):
    """A sample member whose bytes are not a valid value of its modality."""


def decode_image(data: bytes) -> Image.Image:
    """JPEG/PNG/WebP (anything PIL reads) -> fully loaded RGB image."""
    try:
        image = Image.open(io.BytesIO(data))
        # PIL decodes lazily; load() here makes truncated files fail now, not inside a transform later.
        image.load()
        return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DecodeError(f"unreadable image ({len(data)} bytes): {err}") from err


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
    waveform = frames.mean(axis=1, dtype=np.float32)
    if not np.isfinite(waveform).all():
        raise DecodeError("audio contains NaN or infinite samples")
    return np.ascontiguousarray(waveform), int(sample_rate)


def decode_int(data: bytes) -> int:
    """An ASCII decimal integer member such as `idx` or `cls`."""
    try:
        return int(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError) as err:
        raise DecodeError(f"not an ASCII integer: {data[:32]!r}") from err
