"""AdamW with CLIP's weight-decay exclusions, regex learning-rate multipliers, and warmup + cosine."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import torch
from torch import nn

from mmembed.config.train import OptimConfig


def _lr_multiplier(name: str, rules: dict[str, float]) -> float:
    for pattern, multiplier in rules.items():
        if re.search(pattern, name):
            return multiplier
    return 1.0


def param_groups(
    named_params: Iterable[tuple[str, nn.Parameter]], no_decay: set[str], cfg: OptimConfig
) -> list[dict]:
    """Group trainable params by (weight decay on/off, lr multiplier).

    Gains, biases and logit scales get no weight decay (CLIP): decaying them only pulls the model away from
    the identity / unit-temperature solution without regularising capacity.
    """
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, param in named_params:
        if not param.requires_grad:
            continue
        decay = param.ndim >= 2 and name not in no_decay
        key = (decay, _lr_multiplier(name, cfg.lr_multipliers))
        groups.setdefault(key, []).append(param)
    return [
        {"params": params, "weight_decay": cfg.weight_decay if decay else 0.0, "lr_multiplier": mult}
        for (decay, mult), params in sorted(groups.items())
    ]


def build_optimizer(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    for group in groups:
        group["lr"] = cfg.lr * group["lr_multiplier"]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=cfg.fused or None)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """LR factor: linear warmup from ~0 to 1, then cosine to `min_ratio` at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total_steps, cfg.warmup_steps, cfg.min_lr_ratio)
    )
