"""How an audio tower turns a waveform of any length into fixed-length clips, shared by every audio tower.

Training takes one random crop per row. Evaluation is deterministic, so the same recording always gets the
same embedding (LAION-CLAP and msclap users report embeddings that change from run to run because their
eval path also crops at random):
- `center`: one centred crop;
- `average`: `eval_windows` windows spread evenly from the start to the end of the recording; the tower
  averages its features over them, so a long recording is summarised as a whole rather than by its middle.

A waveform batch is either [B, T] (any T; the tower crops it) or [B, n, L], n windows of exactly the clip
length that the eval preprocessor already cut from each recording's true length (before padding, so a short
clip's windows never include another row's padding).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import soxr
import torch

from mmembed.towers.log_mel import crop_or_pad

EVAL_CROPS = ("center", "average")


@dataclass(frozen=True)
class CropPolicy:
    """Clip length in samples, and how evaluation chooses windows (see the module docstring)."""

    clip_samples: int
    eval_crops: str = "center"
    eval_windows: int = 3

    def __post_init__(self) -> None:
        if self.clip_samples < 1:
            raise ValueError(f"audio clip length must be >= 1 sample, got {self.clip_samples}")
        if self.eval_crops not in EVAL_CROPS:
            raise ValueError(f"eval_crops must be one of {EVAL_CROPS}, got {self.eval_crops!r}")
        if self.eval_windows < 1:
            raise ValueError(f"eval_windows must be >= 1, got {self.eval_windows}")

    @property
    def num_eval_windows(self) -> int:
        return self.eval_windows if self.eval_crops == "average" else 1


def window_starts(total: int, length: int, count: int) -> list[int]:
    """`count` start offsets spread evenly over [0, total - length] (all 0 when the clip is short)."""
    last = max(total - length, 0)
    if count == 1:
        return [last // 2]  # one window: the centre, as the `center` policy
    return [round(i * last / (count - 1)) for i in range(count)]


def eval_windows(waveform: torch.Tensor, policy: CropPolicy) -> torch.Tensor:
    """[B, T] -> [B, n, clip_samples]: the deterministic eval windows (zero-padded when T is short)."""
    length = policy.clip_samples
    padded = crop_or_pad(waveform, max(length, waveform.shape[-1]), random_crop=False)
    starts = window_starts(waveform.shape[-1], length, policy.num_eval_windows)
    return torch.stack([padded[:, s:s + length] for s in starts], dim=1)


def clip_batch(waveform: torch.Tensor, policy: CropPolicy, training: bool, tower: str) -> torch.Tensor:
    """A tower's waveform input -> [B, n, clip_samples]; the tower encodes B·n clips and averages over n."""
    if not isinstance(waveform, torch.Tensor) or waveform.ndim not in (2, 3):
        got = tuple(waveform.shape) if isinstance(waveform, torch.Tensor) else type(waveform).__name__
        raise ValueError(f"{tower} expects waveforms [B, T] or eval windows [B, n, T], got {got}")
    if waveform.ndim == 3:
        if waveform.shape[-1] != policy.clip_samples:
            raise ValueError(f"{tower}: eval windows must be {policy.clip_samples} samples long, got "
                             f"{tuple(waveform.shape)}")
        return waveform
    if training:
        return crop_or_pad(waveform, policy.clip_samples, random_crop=True).unsqueeze(1)
    return eval_windows(waveform, policy)


def average_windows(features: torch.Tensor, batch: int) -> torch.Tensor:
    """[B·n, D] features of B·n windows -> [B, D], the mean over each row's n windows."""
    return features.view(batch, -1, features.shape[-1]).mean(dim=1)


class ClipWaveform:
    """Per-sample preprocessor: (waveform float32 [T], sr) -> float32 tensor at the tower's rate.

    Training: one random crop [clip_samples] (torch RNG, seeded per sample by the data pipeline). Eval:
    [clip_samples] with the `center` policy, [n, clip_samples] with `average`; both deterministic.
    """

    def __init__(self, sample_rate: int, clip_samples: int, is_train: bool, eval_crops: str = "center",
                 eval_windows: int = 3) -> None:
        self.sample_rate, self.is_train = sample_rate, is_train
        self.policy = CropPolicy(clip_samples, eval_crops, eval_windows)
        self.clip_samples = clip_samples

    def __call__(self, item: tuple[np.ndarray, int]) -> torch.Tensor:
        waveform, sr = item
        waveform = np.asarray(waveform, dtype=np.float32)
        if waveform.ndim != 1:
            raise ValueError(f"audio preprocessor expects mono [T], got shape {waveform.shape}")
        if int(sr) != self.sample_rate:
            waveform = soxr.resample(waveform, int(sr), self.sample_rate).astype(np.float32, copy=False)
        wave = torch.from_numpy(np.ascontiguousarray(waveform)).unsqueeze(0)
        if self.is_train:
            return crop_or_pad(wave, self.clip_samples, random_crop=True)[0]
        windows = eval_windows(wave, self.policy)[0]
        return windows[0] if self.policy.eval_crops == "center" else windows


def encode_windows(encode_clips: Callable[[torch.Tensor], torch.Tensor], clips: torch.Tensor) -> torch.Tensor:
    """Run `encode_clips` ([N, L] -> [N, D]) on [B, n, L] windows and average over n."""
    batch = clips.shape[0]
    return average_windows(encode_clips(clips.reshape(-1, clips.shape[-1])), batch)
