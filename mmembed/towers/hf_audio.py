"""`hf_audio`: a local Hugging Face audio encoder (wav2vec2 / HuBERT / WavLM, AST, Whisper's encoder).

The folder holds what `save_pretrained` writes for the model and its feature extractor (config.json,
weights, preprocessor_config.json); both load with local_files_only, so nothing touches the network.

The tower takes waveforms at the feature extractor's sampling rate, like `audio_mel`: [B, T] of any T
(random crop in training, deterministic windows in eval; see audio_crops.py) or [B, n, L] eval windows.
Clips become model inputs on the fly. Raw-waveform extractors (wav2vec2 family) are reproduced in torch on
the model's device; any other extractor (AST's filterbank, Whisper's log-mel) is called as Hugging Face
ships it, on CPU, so a pretrained model sees exactly the inputs it was trained on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoFeatureExtractor, AutoModel, Wav2Vec2FeatureExtractor

from mmembed.towers.audio_crops import ClipWaveform, CropPolicy, clip_batch, encode_windows
from mmembed.towers.base import TOWERS, Preprocessor
from mmembed.towers.export_spec import NO_AUDIO_SLOT, ExportSpec, waveform_inputs, waveform_preprocess
from mmembed.towers.hf_common import quiet_loading, set_hf_grad_checkpointing
from mmembed.towers.shard_spec import ShardSpec, hf_units

# Extractors whose numpy code has an exact torch twin: extractor class -> (extractor, clips) -> kwargs.
TorchFrontEnd = Callable[[Any, torch.Tensor], dict[str, torch.Tensor]]


def _wav2vec2_inputs(extractor: Wav2Vec2FeatureExtractor, clips: torch.Tensor) -> dict[str, torch.Tensor]:
    """Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm per row (population variance, eps 1e-7)."""
    clips = clips.float()
    if extractor.do_normalize:
        mean = clips.mean(dim=-1, keepdim=True)
        var = clips.var(dim=-1, unbiased=False, keepdim=True)
        clips = (clips - mean) / torch.sqrt(var + 1e-7)
    return {"input_values": clips}


TORCH_FRONT_ENDS: dict[type, TorchFrontEnd] = {Wav2Vec2FeatureExtractor: _wav2vec2_inputs}


def _pool_mean(outputs: Any) -> torch.Tensor:
    return outputs.last_hidden_state.mean(dim=1)


def _pool_cls(outputs: Any) -> torch.Tensor:
    return outputs.last_hidden_state[:, 0]


def _pool_pooler(outputs: Any) -> torch.Tensor:
    pooled = getattr(outputs, "pooler_output", None)
    if pooled is None:
        raise ValueError("hf_audio: pooling 'pooler' needs a model with a pooler (e.g. AST), and this "
                         "model has no pooler output; use 'mean'")
    return pooled


POOLINGS: dict[str, Callable[[Any], torch.Tensor]] = {"mean": _pool_mean, "cls": _pool_cls,
                                                      "pooler": _pool_pooler}


@dataclass
class HFAudioConfig:
    # A local folder written by save_pretrained (model + feature extractor).
    path: str = ""
    # mean (over frames) | cls (first frame/token) | pooler (the model's pooler_output, e.g. AST).
    pooling: str = "mean"
    clip_seconds: float = 10.0
    # Evaluation crop of recordings longer than the clip: "center" or "average" over eval_windows windows.
    eval_crops: str = "center"
    eval_windows: int = 3


def _model_folder(path: str) -> Path:
    folder = Path(path).expanduser()
    missing = [name for name in ("config.json", "preprocessor_config.json") if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"hf_audio: '{folder}' lacks {missing}; save the model and its feature "
                                "extractor there with save_pretrained")
    return folder


# -- export facts -------------------------------------------------------------------------------------------
# The folder, relative to an export directory, holding the config, feature extractor and weights that
# rebuild this tower (the weights are then overwritten by the export's own safetensors).
HF_AUDIO_DIR = "audio_hf"


def _portable_args(tower: nn.Module, args: dict[str, Any]) -> dict[str, Any]:
    return {**args, "path": HF_AUDIO_DIR}


def _write_files(tower: nn.Module, root: Path, rebuildable: bool) -> None:
    folder = root / HF_AUDIO_DIR
    tower.feature_extractor.save_pretrained(folder)
    tower.model.save_pretrained(folder)


def _local_args(args: dict[str, Any], root: Path) -> dict[str, Any]:
    return {**args, "path": str(root / args["path"])}


_NO_ONNX = ("its front end is Hugging Face's feature extractor (numpy on the CPU, outside the graph, for AST "
            "and Whisper) and its crop to the clip length branches on the input length; export safetensors")


@TOWERS.register("hf_audio", HFAudioConfig)
class HFAudioTower(nn.Module):
    modality = "audio"
    export_spec = ExportSpec(inputs=waveform_inputs, preprocess=waveform_preprocess, portable_args=_portable_args,
                             write_files=_write_files, local_args=_local_args,
                             unsupported={"onnx": _NO_ONNX, "open_clip": NO_AUDIO_SLOT})
    shard_spec = ShardSpec(units=hf_units)

    def __init__(self, cfg: HFAudioConfig) -> None:
        super().__init__()
        if not cfg.path:
            raise ValueError("hf_audio: 'path' is required (a local folder with a model and its feature "
                             "extractor)")
        if cfg.pooling not in POOLINGS:
            raise ValueError(f"hf_audio: unknown pooling '{cfg.pooling}'; known: {sorted(POOLINGS)}")
        if cfg.clip_seconds <= 0:
            raise ValueError(f"hf_audio: clip_seconds must be > 0, got {cfg.clip_seconds}")
        folder = _model_folder(cfg.path)
        self.cfg = cfg
        self.feature_extractor = AutoFeatureExtractor.from_pretrained(folder, local_files_only=True)
        with quiet_loading():
            model = AutoModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
        # Whisper-style encoder-decoders: only the encoder embeds audio, and decoder parameters that never
        # get a gradient would break DDP.
        self.model = model.get_encoder() if getattr(model.config, "is_encoder_decoder", False) else model
        self.sample_rate = int(self.feature_extractor.sampling_rate)
        self.clip_samples = round(cfg.clip_seconds * self.sample_rate)
        self.policy = CropPolicy(self.clip_samples, cfg.eval_crops, cfg.eval_windows)
        self.output_dim = int(model.config.hidden_size)
        self._front_end = TORCH_FRONT_ENDS.get(type(self.feature_extractor), _hf_inputs)

    def model_inputs(self, clips: torch.Tensor) -> dict[str, torch.Tensor]:
        """[N, clip_samples] waveforms -> the keyword inputs of the Hugging Face model, on clips.device."""
        return self._front_end(self.feature_extractor, clips)

    def _encode_clips(self, clips: torch.Tensor) -> torch.Tensor:
        return POOLINGS[self.cfg.pooling](self.model(**self.model_inputs(clips)))

    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        """[B, T] waveforms (any T) or [B, n, clip_samples] eval windows -> features [B, output_dim]."""
        return encode_windows(self._encode_clips, clip_batch(inputs, self.policy, self.training, "hf_audio"))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.encode(inputs)

    def no_weight_decay(self) -> set[str]:
        return set()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if not getattr(self.model, "supports_gradient_checkpointing", False):
            raise ValueError(f"hf_audio: {type(self.model).__name__} does not support grad checkpointing")
        set_hf_grad_checkpointing(self.model, enable)

    def preprocessor(self, is_train: bool) -> Preprocessor:
        return ClipWaveform(self.sample_rate, self.clip_samples, is_train, self.cfg.eval_crops,
                            self.cfg.eval_windows)


def _hf_inputs(extractor: Any, clips: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run the Hugging Face extractor itself (numpy, CPU) and bring its tensors back to clips.device."""
    rows = [row.numpy() for row in clips.detach().float().cpu()]
    features = extractor(rows, sampling_rate=extractor.sampling_rate, return_tensors="pt")
    return {k: v.to(clips.device) for k, v in features.items() if isinstance(v, torch.Tensor)}

