"""An export-friendly twin of the audio tower's front end: STFT as a strided conv1d with a windowed DFT
basis, and a centre-crop / end-pad to the clip length written with shape arithmetic only.

Why: ONNX has no complex tensors, and `torch.stft(..., return_complex=True)` does not survive the exporters
robustly; the tower's `crop_or_pad` branches on the input length in Python, which tracing would freeze to
the example's length. The twin computes the same numbers from the tower's own buffers and parameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmembed.towers.log_mel import LogMel, mel_decibels


def dft_basis(n_fft: int, window: torch.Tensor) -> torch.Tensor:
    """[2·(n_fft//2+1), 1, n_fft] kernels: window·cos then window·sin for every one-sided frequency bin.

    torch.stft centres a window shorter than n_fft inside the frame; the basis does the same. Built in
    float64 so the kernels carry no more rounding than torch.stft's own FFT.
    """
    win = window.double()
    left = (n_fft - win.numel()) // 2
    full = F.pad(win, (left, n_fft - win.numel() - left))
    bins = n_fft // 2 + 1
    phase = 2.0 * math.pi * torch.outer(torch.arange(bins, dtype=torch.float64),
                                        torch.arange(n_fft, dtype=torch.float64)) / n_fft
    # The sign of the imaginary part is irrelevant: only |X|² is used.
    kernels = torch.cat([torch.cos(phase) * full, torch.sin(phase) * full])
    return kernels.unsqueeze(1).float()


class ConvLogMel(nn.Module):
    """The same [B, T] -> [B, n_mels, frames] dB spectrogram as `LogMel`, from conv1d instead of stft."""

    def __init__(self, log_mel: LogMel) -> None:
        super().__init__()
        self.n_fft, self.hop_length = log_mel.n_fft, log_mel.hop_length
        self.pad_mode, self.amin, self.top_db = log_mel.pad_mode, log_mel.amin, log_mel.top_db
        self.register_buffer("basis", dft_basis(log_mel.n_fft, log_mel.window.cpu()), persistent=False)
        self.register_buffer("mel_fb", log_mel.mel_fb.detach().clone(), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        half = self.n_fft // 2
        # center=True framing: pad n_fft//2 on both sides, as torch.stft does.
        padded = F.pad(waveform.float().unsqueeze(1), (half, half), mode=self.pad_mode)
        spec = F.conv1d(padded, self.basis, stride=self.hop_length)
        bins = self.basis.shape[0] // 2
        power = spec[:, :bins].square() + spec[:, bins:].square()
        return mel_decibels(self.mel_fb, power, self.amin, self.top_db)


def centre_crop_or_pad(waveform: torch.Tensor, length: int) -> torch.Tensor:
    """[B, T] -> [B, length] like the tower's eval `crop_or_pad`, without branching on T.

    Appending `length` zeros and slicing from max(T - length, 0) // 2 gives the centre crop when T >= length
    (the slice ends inside the waveform) and the end-padded clip when T < length (the slice starts at 0).
    """
    # A tensor, not a Python int: under torch.export T is symbolic and the start must stay a graph value.
    start = torch.clamp(torch.tensor(waveform.shape[-1] - length) // 2, min=0)
    padded = torch.cat([waveform, waveform.new_zeros(waveform.shape[0], length)], dim=1)
    index = torch.arange(length, device=waveform.device) + start
    return padded.index_select(1, index)
