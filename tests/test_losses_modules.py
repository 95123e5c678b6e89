"""The registered pair-loss modules, `build_loss` and `loss_defaults`."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmembed.config.model import PairConfig
from mmembed.config.validate import ConfigError
from mmembed.losses import LOSSES, LossContext, PairLoss, build_loss, functional, list_losses, loss_defaults

B, D = 6, 8


def unit(*shape: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=gen), dim=-1)


def pair(loss: str, **args) -> PairConfig:
    return PairConfig(a="image", b="text", loss=loss, args=args)


def test_builtin_losses_are_registered():
    names = ("infonce", "siglip", "cwcl", "distill", "isogclr", "tempnet")
    assert set(names) <= set(list_losses())
    for name in names:
        assert issubclass(LOSSES.get(name).builder, PairLoss)


def test_loss_defaults():
    assert loss_defaults("infonce") == pytest.approx((math.log(1 / 0.07), None))
    assert loss_defaults("siglip") == pytest.approx((math.log(10.0), -10.0))
    assert loss_defaults("cwcl")[1] is None and loss_defaults("distill")[1] is None
    with pytest.raises(KeyError, match="unknown loss 'nope'"):
        loss_defaults("nope")


@pytest.mark.parametrize(
    ("cfg", "error", "match"),
    [
        (pair("infonce", tile=4), ConfigError, "Did you mean 'tile_size'"),
        (pair("infonce", tile_size=-1), ValueError, "tile_size"),
        (pair("siglip", tile_size=4), ConfigError, "loss.siglip.tile_size"),
        (pair("cwcl"), ConfigError, "anchor"),
        (pair("cwcl", anchor="text", direction="up"), ValueError, "direction 'up'"),
        (pair("distill"), ConfigError, "teacher_dims"),
        (pair("distill", teacher_dims=[4, 4]), ValueError, "one teacher_scales entry per teacher_dims"),
        (pair("distill", teacher_dims=[4], lam=1.5), ValueError, "lam"),
        (pair("unknown"), KeyError, "registered: "),
    ],
)
def test_bad_args_fail_at_build_with_the_offending_name(cfg, error, match):
    with pytest.raises(error, match=match):
        build_loss(cfg)


def test_infonce_and_siglip_modules_wrap_the_functions():
    x, y, s, b = unit(B, D, seed=0), unit(B, D, seed=1), torch.tensor(12.0), torch.tensor(-3.0)
    ctx = LossContext(a="image", b="text")
    terms = build_loss(pair("infonce", tile_size=4))(x, y, s, b, ctx)
    assert list(terms) == ["contrastive"]
    torch.testing.assert_close(terms["contrastive"], functional.infonce(x, y, s, b))
    terms = build_loss(pair("siglip"))(x, y, s, b, ctx)
    torch.testing.assert_close(terms["sigmoid"], functional.siglip(x, y, s, b))


@pytest.mark.parametrize("anchor", ["image", "text"])
def test_cwcl_module_anchors_on_the_configured_modality(anchor):
    x = unit(B, D, seed=2).requires_grad_()
    y = unit(B, D, seed=3).requires_grad_()
    feats = {"image": torch.randn(B, 5, requires_grad=True), "text": torch.randn(B, 7, requires_grad=True)}
    ctx = LossContext(a="image", b="text", features=feats)
    loss = build_loss(pair("cwcl", anchor=anchor, direction="both", tile_size=4))
    got = loss(x, y, torch.tensor(9.0), None, ctx)["cwcl"]
    p, q = (x, y) if anchor == "image" else (y, x)
    want = functional.cwcl(p, q, F.normalize(feats[anchor].detach(), dim=1), 9.0, "both")
    torch.testing.assert_close(got, want)
    got.backward()
    # The weights are a fixed target: no gradient may reach the frozen tower's features.
    assert feats["image"].grad is None and feats["text"].grad is None
    assert x.grad is not None and y.grad is not None


def test_cwcl_module_errors_name_the_problem():
    x, y = unit(B, D, seed=4), unit(B, D, seed=5)
    loss = build_loss(pair("cwcl", anchor="audio"))
    with pytest.raises(ValueError, match="anchor 'audio' is not a modality of the pair image-text"):
        loss(x, y, torch.tensor(1.0), None, LossContext(a="image", b="text", features={"audio": x}))
    loss = build_loss(pair("cwcl", anchor="text"))
    with pytest.raises(KeyError, match="anchor 'text'"):
        loss(x, y, torch.tensor(1.0), None, LossContext(a="image", b="text", features={"image": x}))
    with pytest.raises(ValueError, match="no logit bias"):
        ctx = LossContext(a="image", b="text", features={"text": y})
        loss(x, y, torch.tensor(1.0), torch.tensor(0.0), ctx)


def _teacher_batch() -> dict[str, torch.Tensor]:
    # Stored fp16 and unnormalised, as a reinforced shard may hold them: the module re-normalises per teacher.
    gen = torch.Generator().manual_seed(6)
    return {m: (3.0 * torch.randn(B, 4 + 3, generator=gen)).half() for m in ("image", "text")}


@pytest.mark.parametrize("tile", [None, 4])
def test_distill_module_splits_teachers_and_weights_terms(tile):
    x, y, s = unit(B, D, seed=7), unit(B, D, seed=8), torch.tensor(15.0)
    teacher = _teacher_batch()
    ctx = LossContext(a="image", b="text", batch={"teacher": teacher})
    cfg = pair("distill", lam=0.75, teacher_dims=[4, 3], teacher_scales=[70.0, 60.0], tile_size=tile)
    loss = build_loss(cfg)
    terms = loss(x, y, s, None, ctx)
    split = {m: [F.normalize(p.float(), dim=1) for p in t.split([4, 3], dim=1)] for m, t in teacher.items()}
    clip, kd = functional.clip_and_distill(x, y, s, split["image"], split["text"], [70.0, 60.0])
    torch.testing.assert_close(terms["clip"], 0.25 * clip)
    torch.testing.assert_close(terms["kd"], 0.75 * kd)
    torch.testing.assert_close(clip, functional.infonce(x, y, s))


def test_distill_module_errors_name_the_problem():
    x, y, s = unit(B, D, seed=9), unit(B, D, seed=10), torch.tensor(1.0)
    loss = build_loss(pair("distill", teacher_dims=[4, 4], teacher_scales=[100.0, 100.0]))
    with pytest.raises(ValueError, match=r"batch\['teacher'\]\['image'\] must be \[B=6, ΣD=8\]"):
        loss(x, y, s, None, LossContext(a="image", b="text", batch={"teacher": _teacher_batch()}))
    with pytest.raises(KeyError, match=r"needs batch\['teacher'\]\['text'\]"):
        loss(x, y, s, None, LossContext(a="image", b="text", batch={"teacher": {"image": torch.ones(B, 8)}}))
    with pytest.raises(ValueError, match="no logit bias"):
        loss(x, y, s, torch.tensor(0.0), LossContext(a="image", b="text"))
