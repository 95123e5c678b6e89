"""Contrastive pair losses: pure functions in `functional`, registered module wrappers, and the factory.

    loss = build_loss(pair_cfg)                       # a PairLoss from PairConfig.loss / .args
    terms = loss(x, y, logit_scale, logit_bias, ctx)  # dict of named terms; their sum is the pair loss
"""

from __future__ import annotations

from mmembed.config.model import PairConfig
from mmembed.losses import functional
from mmembed.losses.base import LOSSES, LossContext, PairLoss, list_losses
from mmembed.losses.cwcl import CWCLConfig, CWCLLoss
from mmembed.losses.distill import DistillConfig, DistillLoss
from mmembed.losses.infonce import InfoNCEConfig, InfoNCELoss
from mmembed.losses.isogclr import ISogCLRConfig, ISogCLRLoss, isogclr_step
from mmembed.losses.siglip import SigLIPConfig, SigLIPLoss
from mmembed.losses.tempnet import TempNetConfig, TempNetLoss

__all__ = [
    "LOSSES",
    "CWCLConfig",
    "CWCLLoss",
    "DistillConfig",
    "DistillLoss",
    "ISogCLRConfig",
    "ISogCLRLoss",
    "InfoNCEConfig",
    "InfoNCELoss",
    "LossContext",
    "PairLoss",
    "SigLIPConfig",
    "SigLIPLoss",
    "TempNetConfig",
    "TempNetLoss",
    "build_loss",
    "functional",
    "isogclr_step",
    "list_losses",
    "loss_defaults",
]


def build_loss(pair: PairConfig) -> PairLoss:
    """The pair's registered loss, its `args` validated against that loss's config dataclass."""
    return LOSSES.build(pair.loss, pair.args)


def loss_defaults(name: str) -> tuple[float, float | None]:
    """(initial log logit scale θ, initial logit bias or None) that loss `name` starts its pair at."""
    builder = LOSSES.get(name).builder
    if not (isinstance(builder, type) and issubclass(builder, PairLoss)):
        raise TypeError(f"loss '{name}' is registered with {builder!r}, not a PairLoss subclass, so it "
                        "declares no logit-scale defaults")
    return builder.default_logit_scale, builder.default_logit_bias
