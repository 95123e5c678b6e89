"""Creating timm backbones for the image and audio towers without ever touching the network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
from torch import nn


def create_timm_backbone(
    tower: str,
    model_name: str,
    pretrained: bool,
    checkpoint_path: str | None,
    **kwargs: Any,
) -> nn.Module:
    """`timm.create_model(model_name, num_classes=0, **kwargs)`: pooled features, no classifier.

    A local `checkpoint_path` goes through timm's pretrained loader (not `load_checkpoint`), because that
    loader drops the classifier and adapts the stem to `in_chans` (e.g. 1-channel spectrograms), which a
    strict state-dict load of an ImageNet checkpoint would reject.
    """
    if not timm.is_model(model_name):
        raise ValueError(f"{tower}: unknown timm model '{model_name}' (see timm.list_models())")
    if checkpoint_path is not None:
        if not Path(checkpoint_path).is_file():
            raise FileNotFoundError(f"{tower}: checkpoint_path not found: {checkpoint_path}")
        kwargs["pretrained_cfg_overlay"] = {"file": str(checkpoint_path)}
        pretrained = True
    return timm.create_model(model_name, pretrained=pretrained, num_classes=0, **kwargs)


def pooled_dim(model: nn.Module) -> int:
    """Width of `model(x)` with num_classes=0: some timm nets (MobileNetV3) add a conv head after the
    trunk, so `head_hidden_size` is the pooled width when it exists, not `num_features`."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def timm_no_weight_decay(model: nn.Module, prefix: str) -> set[str]:
    names = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    return {f"{prefix}{n}" for n in names}


def timm_set_grad_checkpointing(tower: str, model: nn.Module, enable: bool) -> None:
    try:
        model.set_grad_checkpointing(enable)
    except (AssertionError, NotImplementedError) as err:
        name = type(model).__name__
        raise ValueError(f"{tower}: timm model {name} does not support grad checkpointing") from err
