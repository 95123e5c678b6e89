"""Shared helpers for the data tests: tiny shards with content derived from the sample number, and
simple per-sample preprocessors (module-level functions, so DataLoader workers can pickle them)."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from PIL import Image

from data_tools.shard_writer import ShardSet, SizedShardWriter

IMAGE_SIZE = 8
TEXT_LEN = 24
AUDIO_LEN = 64
SAMPLE_RATE = 8000


def png_bytes(number: int, size: int = IMAGE_SIZE) -> bytes:
    """A solid image whose red/green channels encode `number` (recoverable after ToTensor)."""
    image = Image.new("RGB", (size, size), (number % 256, number // 256, 77))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def stereo_flac_bytes(number: int) -> bytes:
    """A stereo clip: left = +a, right = a/2, so the mono downmix is 0.75 a (a depends on `number`)."""
    level = ((number % 50) + 1) / 64
    frames = np.stack([np.full(AUDIO_LEN * 2, level), np.full(AUDIO_LEN * 2, level / 2)], axis=1)
    buffer = io.BytesIO()
    sf.write(buffer, frames.astype(np.float32), SAMPLE_RATE, format="FLAC", subtype="PCM_24")
    return buffer.getvalue()


def sample_members(number: int) -> dict[str, bytes | str]:
    return {"png": png_bytes(number), "txt": f"caption {number}", "flac": stereo_flac_bytes(number)}


def write_numbered_shards(out_dir: Path, prefix: str, numbers: list[int], per_shard: int) -> ShardSet:
    """One sample per number, key f"{prefix}{number:05d}", idx dense from 0 in the given order."""
    with SizedShardWriter(out_dir, prefix, samples_per_shard=per_shard) as writer:
        for number in numbers:
            writer.write(f"{prefix}{number:05d}", sample_members(number))
    return writer.close()


def image_number(image: torch.Tensor) -> int:
    """Inverse of png_bytes for a [3,H,W] float image in [0,1]."""
    red, green = (image[:2, 0, 0] * 255).round().long().tolist()
    return red + 256 * green


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def char_tokens(text: str) -> torch.Tensor:
    ids = [ord(c) for c in text[:TEXT_LEN]]
    return torch.tensor(ids + [0] * (TEXT_LEN - len(ids)), dtype=torch.long)


def decode_tokens(tokens: torch.Tensor) -> str:
    return "".join(chr(int(t)) for t in tokens if int(t))


def fixed_audio(item: tuple[np.ndarray, int]) -> torch.Tensor:
    wave, _ = item
    wave = wave[:AUDIO_LEN]
    return torch.from_numpy(np.pad(wave, (0, AUDIO_LEN - len(wave))))


def random_crop_image(image: Image.Image) -> torch.Tensor:
    """An augmenting preprocessor: random crop offset (python random) plus torch.rand jitter."""
    tensor = to_tensor(image)
    top, left = random.randint(0, 2), random.randint(0, 2)
    return tensor[:, top : top + 6, left : left + 6] + 0.01 * torch.rand(3, 6, 6)


def random_crop_audio(item: tuple[np.ndarray, int]) -> torch.Tensor:
    wave, _ = item
    start = int(np.random.randint(0, len(wave) - 32))
    return torch.from_numpy(wave[start : start + 32].copy()) + 0.01 * torch.randn(32)


PLAIN = {"image": to_tensor, "text": char_tokens, "audio": fixed_audio}
AUGMENTING = {"image": random_crop_image, "text": char_tokens, "audio": random_crop_audio}


def batches_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for key, value in a.items():
        other = b[key]
        if isinstance(value, torch.Tensor):
            if not torch.equal(value, other):
                return False
        elif value != other:
            return False
    return True
