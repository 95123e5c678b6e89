"""`audio_mel`: waveform -> log-mel on the device -> a timm backbone with one input channel.

Defaults follow LAION-CLAP (48 kHz, n_fft 1024, hop 480, 64 mels, 50-14000 Hz, 10 s clips). The spectrogram
enters the backbone as a one-channel image [B, 1, n_mels, frames]. Any input length is accepted: the tower
crops (random in training; in eval a centred crop, or the average over evenly spaced windows, see
audio_crops.py) or zero-pads to `clip_seconds` itself, so batches whose length changes from step to step
need no special handling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mmembed.towers.audio_crops import ClipWaveform, CropPolicy, clip_batch, encode_windows
from mmembed.towers.base import TOWERS, Preprocessor
from mmembed.towers.conv_stft import ConvLogMel, centre_crop_or_pad
from mmembed.towers.export_spec import (
    NO_AUDIO_SLOT,
    ExportSpec,
    waveform_check_sizes,
    waveform_inputs,
    waveform_preprocess,
    without,
)
from mmembed.towers.log_mel import LogMel, crop_or_pad
from mmembed.towers.shard_spec import ShardSpec, timm_units
from mmembed.towers.timm_common import (
    create_timm_backbone,
    pooled_dim,
    timm_no_weight_decay,
    timm_set_grad_checkpointing,
)


@dataclass
class AudioMelConfig:
    sample_rate: int = 48000
    n_fft: int = 1024
    hop_length: int = 480
    # None: n_fft.
    win_length: int | None = None
    n_mels: int = 64
    f_min: float = 50.0
    f_max: float = 14000.0
    clip_seconds: float = 10.0
    # Evaluation crop of recordings longer than the clip: "center" or "average" over eval_windows windows.
    eval_crops: str = "center"
    eval_windows: int = 3
    # torch.stft padding of the centred frames (torchlibrosa/CLAP: reflect; librosa >= 0.10: constant).
    stft_pad_mode: str = "reflect"
    # None keeps the full dB range (CLAP); e.g. 80 clips each clip's floor at peak - 80 dB.
    top_db: float | None = None
    # BatchNorm over mel bins before the backbone (CLAP/PANNs "bn0"): the dB scale is far from unit range.
    input_norm: bool = True
    backbone: str = ""
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    checkpoint_path: str | None = None


class AudioMelTwin(nn.Module):
    """The tower's eval forward with the conv1d STFT and branch-free centre crop / pad (see conv_stft.py),
    which ONNX can express; same parameters, same numbers."""

    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        self.tower = tower
        self.frontend = ConvLogMel(tower.frontend)

    def encode(self, waveform: torch.Tensor) -> torch.Tensor:
        clip = centre_crop_or_pad(waveform, self.tower.clip_samples)
        mel = self.frontend(clip).unsqueeze(1)
        mel = self.tower.input_norm(mel.transpose(1, 2)).transpose(1, 2)
        return self.tower.backbone(mel)


@TOWERS.register("audio_mel", AudioMelConfig)
class AudioMelTower(nn.Module):
    modality = "audio"
    export_spec = ExportSpec(inputs=waveform_inputs, preprocess=waveform_preprocess,
                             portable_args=without("checkpoint_path", pretrained=False), onnx_twin=AudioMelTwin,
                             check_sizes=waveform_check_sizes, unsupported={"open_clip": NO_AUDIO_SLOT})
    shard_spec = ShardSpec(units=lambda tower: timm_units(tower.backbone, "backbone."))

    def __init__(self, cfg: AudioMelConfig) -> None:
        super().__init__()
        if not cfg.backbone:
            raise ValueError("audio_mel: 'backbone' is required (a timm model name, e.g. resnet18)")
        if cfg.clip_seconds <= 0:
            raise ValueError(f"audio_mel: clip_seconds must be > 0, got {cfg.clip_seconds}")
        self.cfg = cfg
        self.sample_rate = cfg.sample_rate
        self.clip_samples = round(cfg.clip_seconds * cfg.sample_rate)
        self.policy = CropPolicy(self.clip_samples, cfg.eval_crops, cfg.eval_windows)
        self.frontend = LogMel(cfg.sample_rate, cfg.n_fft, cfg.hop_length, cfg.win_length or cfg.n_fft,
                               cfg.n_mels, cfg.f_min, cfg.f_max, pad_mode=cfg.stft_pad_mode,
                               top_db=cfg.top_db)
        self.input_norm = nn.BatchNorm2d(cfg.n_mels) if cfg.input_norm else nn.Identity()
        kwargs = {"in_chans": 1, **cfg.backbone_kwargs}
        self.backbone = create_timm_backbone("audio_mel", cfg.backbone, cfg.pretrained, cfg.checkpoint_path,
                                             **kwargs)
        self.output_dim = pooled_dim(self.backbone)

    @property
    def spectrogram_shape(self) -> tuple[int, int]:
        """(n_mels, frames) of the backbone input, e.g. for a ViT's img_size."""
        return self.cfg.n_mels, 1 + self.clip_samples // self.cfg.hop_length

    def log_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """[B, T] (any T) -> [B, 1, n_mels, frames] after crop/pad and input normalisation."""
        if not isinstance(waveform, torch.Tensor) or waveform.ndim != 2:
            got = tuple(waveform.shape) if isinstance(waveform, torch.Tensor) else type(waveform).__name__
            raise ValueError(f"audio_mel expects waveforms [B, T], got {got}")
        clip = crop_or_pad(waveform, self.clip_samples, random_crop=self.training)
        mel = self.frontend(clip).unsqueeze(1)
        # BatchNorm2d normalises channels; mel bins become the channel axis and back.
        return self.input_norm(mel.transpose(1, 2)).transpose(1, 2)

    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        """[B, T] waveforms (any T) or [B, n, clip_samples] eval windows -> features [B, output_dim]."""
        clips = clip_batch(inputs, self.policy, self.training, "audio_mel")
        return encode_windows(lambda flat: self.backbone(self.log_mel(flat)), clips)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.encode(inputs)

    def no_weight_decay(self) -> set[str]:
        return timm_no_weight_decay(self.backbone, "backbone.")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        timm_set_grad_checkpointing("audio_mel", self.backbone, enable)

    def preprocessor(self, is_train: bool) -> Preprocessor:
        return ClipWaveform(self.sample_rate, self.clip_samples, is_train, self.cfg.eval_crops,
                            self.cfg.eval_windows)

