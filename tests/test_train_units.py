"""Trainer building blocks: contrastive accumulation, optimizer groups, schedule, checkpoint round trip."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from train_support import DEMO_RECIPE

from mmembed.config import load_recipe
from mmembed.model import build_model
from mmembed.train.objective import Objective
from mmembed.train.optim import param_groups, warmup_cosine
from mmembed.train.step import accumulated_step, plain_step


def tiny_config(tmp_path: Path, pairs: str = "infonce"):
    overrides = [f"output_dir={tmp_path}", f"model.pairs.0.loss={pairs}", f"model.pairs.1.loss={pairs}"]
    return load_recipe(DEMO_RECIPE, overrides)


def random_batch(model, batch_size: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    texts = [f"a {c} {s}" for c in ("red", "blue", "green", "yellow") for s in ("circle", "square")]
    tokenize = model.preprocessors(False)["text"]
    return {
        "image": torch.rand(batch_size, 3, 32, 32, generator=generator),
        "audio": torch.randn(batch_size, 16000, generator=generator) * 0.1,
        "text": torch.stack([tokenize(texts[i % len(texts)] + f" {i}") for i in range(batch_size)]),
        "index": torch.arange(batch_size) + seed * 1000,
    }


def grads_after(step_fn, model, objective, batches) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    step_fn(Accelerator(cpu=True), model, objective, batches, 0)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("loss", ["infonce", "siglip"])
def test_contrastive_accumulation_equals_one_big_batch(tmp_path: Path, loss: str) -> None:
    """Two micro-batches with accum_freq=2 give the gradient of the merged batch: all negatives are kept."""
    torch.manual_seed(0)
    cfg = tiny_config(tmp_path, loss)
    model = build_model(cfg.model).eval()  # eval: no dropout, so both paths see the same function
    objective = Objective(cfg.model.pairs)
    first, second = random_batch(model, 6, 1), random_batch(model, 6, 2)
    merged = {k: torch.cat([first[k], second[k]]) for k in first}
    big = grads_after(lambda acc, m, o, b, s: plain_step(acc, m, o, b[0], s), model, objective, [merged])
    accumulated = grads_after(accumulated_step, model, objective, [first, second])
    assert big.keys() == accumulated.keys() and len(big) > 10
    for name in big:
        torch.testing.assert_close(accumulated[name], big[name], rtol=1e-4, atol=1e-6, msg=name)
    # A plain step on one micro-batch alone differs: accumulation really used the other's negatives.
    alone = grads_after(lambda acc, m, o, b, s: plain_step(acc, m, o, b[0], s), model, objective, [first])
    assert any(not torch.allclose(alone[n], big[n], atol=1e-5) for n in big)


def test_no_weight_decay_on_gains_biases_and_logit_scales(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    model = build_model(cfg.model)
    groups = param_groups(model.named_parameters(), model.no_weight_decay(), cfg.optim)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(model.get_parameter(n).ndim >= 2 for n in (names[i] for i in decayed))
    for name, param in model.named_parameters():
        if param.ndim < 2 or name.startswith("logit_"):
            assert id(param) not in decayed, name
    assert any(id(p) in decayed for n, p in model.named_parameters() if n.endswith("weight") and p.ndim == 2)


def test_lr_multiplier_rules(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    cfg.optim.lr_multipliers = {r"^towers\.text\.": 0.1}
    model = build_model(cfg.model)
    groups = param_groups(model.named_parameters(), model.no_weight_decay(), cfg.optim)
    text_ids = {id(p) for n, p in model.named_parameters() if n.startswith("towers.text.")}
    for group in groups:
        expected = 0.1 if id(group["params"][0]) in text_ids else 1.0
        assert group["lr_multiplier"] == expected
        assert all((id(p) in text_ids) == (expected == 0.1) for p in group["params"])


def test_warmup_cosine_shape() -> None:
    factors = [warmup_cosine(s, 100, 10, 0.1) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))
    assert warmup_cosine(100, 100, 10, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(55, 100, 10, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
