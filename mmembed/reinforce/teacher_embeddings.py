"""Teacher embeddings of a batch of source samples: replayed augmented images (or audio crops) and captions,
each teacher's rows concatenated in teacher order ([N, ΣD])."""

from __future__ import annotations

import itertools
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


def _chunked(encode, inputs: torch.Tensor | Sequence) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """`encode` over `inputs` (a tensor or a list) in chunks of CHUNK rows, concatenated on the CPU."""
    return torch.cat([encode(inputs[i:i + CHUNK]).cpu() for i in range(0, len(inputs), CHUNK)])


def _per_sample(parts: list[torch.Tensor], counts: Sequence[int]) -> list[np.ndarray]:
    """The teachers' row blocks side by side ([rows, ΣD]), split into consecutive blocks of `counts` rows."""
    flat = torch.cat(parts, dim=1).numpy()
    edges = np.cumsum([0, *counts])
    return [flat[a:b] for a, b in itertools.pairwise(edges)]


def image_embeddings(teachers: Sequence[Teacher], images: Sequence[Image.Image],
                     records: Sequence[Sequence[AugRecord]]) -> list[np.ndarray]:
    """Per sample [K, ΣD] (teachers concatenated in order)."""
    parts = [_chunked(t.encode_images, teacher_image_inputs(t, images, records)) for t in teachers]
    return _per_sample(parts, [len(recs) for recs in records])


def audio_embeddings(teachers: Sequence[Teacher], waveforms: Sequence[np.ndarray],
                     crops: Sequence[AudioCrops]) -> list[np.ndarray]:
    """Per sample [K, ΣD] over the recorded crops."""
    clips = [c.clip(w, k) for w, c in zip(waveforms, crops) for k in range(len(c.offsets))]
    rates = {c.sample_rate for c in crops}
    if len(rates) != 1:
        raise ValueError(f"one batch of audio must share a sample rate, got {sorted(rates)}")
    rate = rates.pop()
    parts = [_chunked(lambda chunk, t=t: t.encode_audio(chunk, rate), clips) for t in teachers]
    return _per_sample(parts, [len(c.offsets) for c in crops])


def text_embeddings(teachers: Sequence[Teacher], texts: Sequence[Sequence[str]]) -> list[np.ndarray]:
    """Per sample [len(texts[i]), ΣD]: one row per caption (real first, then synthetic)."""
    flat_texts = [t for group in texts for t in group]
    parts = [_chunked(t.encode_texts, flat_texts) for t in teachers]
    return _per_sample(parts, [len(group) for group in texts])
