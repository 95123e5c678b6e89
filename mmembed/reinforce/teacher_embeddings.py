"""Teacher embeddings of a batch of source samples: replayed augmented images (or audio crops) and captions,
each teacher's rows concatenated in teacher order ([N, ΣD])."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from mmembed.reinforce.teachers import Teacher
from mmembed.reinforced_format.augment import AugRecord
from mmembed.reinforced_format.crops import AudioCrops

# Teacher forward passes take at most this many inputs at once (bounds activation memory).
CHUNK = 256


def teacher_image_inputs(teacher: Teacher, images: Sequence[Image.Image],
                         records: Sequence[Sequence[AugRecord]]) -> torch.Tensor:
    """The exact pixels `teacher` sees: every record of every image replayed at its size -> [ΣK, 3, H, W]."""
    if teacher.image_replay is None:
        raise ValueError(f"teacher '{teacher.name}' has no image preprocessing to replay records with")
    replay = teacher.image_replay
    return torch.stack([replay(img, rec) for img, recs in zip(images, records) for rec in recs])


def _chunked(encode, inputs: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return torch.cat([encode(inputs[i:i + CHUNK]).cpu() for i in range(0, inputs.shape[0], CHUNK)])


def image_embeddings(teachers: Sequence[Teacher], images: Sequence[Image.Image],
                     records: Sequence[Sequence[AugRecord]]) -> list[np.ndarray]:
    """Per sample [K, ΣD] (teachers concatenated in order)."""
    parts = [_chunked(t.encode_images, teacher_image_inputs(t, images, records)) for t in teachers]
    flat = torch.cat(parts, dim=1).numpy()
    out, start = [], 0
    for recs in records:
        out.append(flat[start:start + len(recs)])
        start += len(recs)
    return out


def audio_embeddings(teachers: Sequence[Teacher], waveforms: Sequence[np.ndarray],
                     crops: Sequence[AudioCrops]) -> list[np.ndarray]:
    """Per sample [K, ΣD] over the recorded crops."""
    clips = [c.clip(w, k) for w, c in zip(waveforms, crops) for k in range(len(c.offsets))]
    rates = {c.sample_rate for c in crops}
    if len(rates) != 1:
        raise ValueError(f"one batch of audio must share a sample rate, got {sorted(rates)}")
    rate = rates.pop()
    parts = []
    for teacher in teachers:
        parts.append(torch.cat([teacher.encode_audio(clips[i:i + CHUNK], rate).cpu()
                                for i in range(0, len(clips), CHUNK)]))
    flat = torch.cat(parts, dim=1).numpy()
    out, start = [], 0
    for c in crops:
        out.append(flat[start:start + len(c.offsets)])
        start += len(c.offsets)
    return out


def text_embeddings(teachers: Sequence[Teacher], texts: Sequence[Sequence[str]]) -> list[np.ndarray]:
    """Per sample [len(texts[i]), ΣD]: one row per caption (real first, then synthetic)."""
    flat_texts = [t for group in texts for t in group]
    parts = []
    for teacher in teachers:
        parts.append(torch.cat([teacher.encode_texts(flat_texts[i:i + CHUNK]).cpu()
                                for i in range(0, len(flat_texts), CHUNK)]))
    flat = torch.cat(parts, dim=1).numpy()
    out, start = [], 0
    for group in texts:
        out.append(flat[start:start + len(group)])
        start += len(group)
    return out
