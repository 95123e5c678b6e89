"""Log-mel spectrogram front end computed on the model's device, plus waveform crop/pad to a fixed clip.

Conventions follow LAION-CLAP's torchlibrosa front end: periodic Hann window, centred frames with
reflect padding, power spectrogram, librosa's Slaney mel filterbank, then 10*log10(max(mel, amin)) with
ref=1 (librosa.power_to_db). The filterbank is computed once with librosa and kept as a non-persistent
buffer, so it follows the module across devices but never lands in checkpoints.
"""

from __future__ import annotations

import librosa
import torch
from torch import nn


class LogMel(nn.Module):
    """waveform [B, T] float -> log-mel [B, n_mels, frames] in dB (frames = 1 + T // hop_length)."""

    def __init__(
        self,
        sample_rate: int,
        n_fft: int,
        hop_length: int,
        win_length: int,
        n_mels: int,
        f_min: float,
        f_max: float,
        pad_mode: str = "reflect",
        amin: float = 1e-10,
        top_db: float | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= f_min < f_max <= sample_rate / 2:
            raise ValueError(f"log-mel: need 0 <= f_min < f_max <= sample_rate/2, got f_min={f_min}, "
                             f"f_max={f_max}, sample_rate={sample_rate}")
        if win_length > n_fft:
            raise ValueError(f"log-mel: win_length ({win_length}) must not exceed n_fft ({n_fft})")
        self.n_fft, self.hop_length, self.win_length = n_fft, hop_length, win_length
        self.pad_mode, self.amin, self.top_db = pad_mode, amin, top_db
        fb = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max)
        self.register_buffer("mel_fb", torch.from_numpy(fb).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        # Under autocast the filterbank matmul would run in bf16/fp16, which costs ~2 dB of precision at
        # low energies; the front end is cheap, so it always runs in float32.
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            spec = torch.stft(waveform.float(), self.n_fft, hop_length=self.hop_length,
                              win_length=self.win_length, window=self.window, center=True,
                              pad_mode=self.pad_mode, return_complex=True)
            power = spec.real.square() + spec.imag.square()
            return mel_decibels(self.mel_fb, power, self.amin, self.top_db)


def mel_decibels(mel_fb: torch.Tensor, power: torch.Tensor, amin: float, top_db: float | None) -> torch.Tensor:
    """Power spectrogram [..., freq, time] -> log-mel in dB, floored `top_db` below each clip's peak (the one
    implementation for the tower and its ONNX-friendly twin in conv_stft)."""
    mel = torch.matmul(mel_fb, power)
    log_mel = 10.0 * torch.log10(mel.clamp(min=amin))
    if top_db is not None:
        peak = log_mel.amax(dim=(-2, -1), keepdim=True)
        log_mel = torch.maximum(log_mel, peak - top_db)
    return log_mel


def crop_or_pad(waveform: torch.Tensor, length: int, random_crop: bool) -> torch.Tensor:
    """[B, T] -> [B, length]: random per-row crop (training) or centre crop (eval); zero-pad at the end."""
    total = waveform.shape[-1]
    if total < length:
        return nn.functional.pad(waveform, (0, length - total))
    if total == length:
        return waveform
    if not random_crop:
        start = (total - length) // 2
        return waveform[:, start:start + length]
    starts = torch.randint(0, total - length + 1, (waveform.shape[0], 1), device=waveform.device)
    index = starts + torch.arange(length, device=waveform.device)
    return waveform.gather(1, index)
