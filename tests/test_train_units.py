"""Trainer building blocks: contrastive accumulation, optimizer groups, schedule, checkpoint round trip."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from train_support import DEMO_RECIPE, TRAINABLE_TEXT

from mmembed.config import load_recipe
from mmembed.model import build_model
from mmembed.train.objective import Objective
from mmembed.train.optim import param_groups, warmup_cosine
from mmembed.train.step import accumulated_step, plain_step


def tiny_config(tmp_path: Path, pairs: str = "infonce"):
    overrides = [f"output_dir={tmp_path}", f"model.pairs.0.loss={pairs}", f"model.pairs.1.loss={pairs}",
                 TRAINABLE_TEXT]
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


@pytest.fixture
def intra_op_threads(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(previous)


@pytest.mark.parametrize("intra_op_threads", [1, 2], indirect=True)
@pytest.mark.parametrize("loss", ["infonce", "siglip"])
def test_contrastive_accumulation_equals_one_big_batch(tmp_path: Path, loss: str, intra_op_threads: int) -> None:
    """Two micro-batches with accum_freq=2 give the gradient of the merged batch: all negatives are kept.

    The two paths sum the same float32 terms in different orders, and the order depends on the thread count,
    so the tolerance scales with each gradient's magnitude: atol = 1e-4 x max|g| per tensor. Measured on the
    2-core CPU: the worst element is 3e-6 x max|g| with 1 or 2 threads (a 30x margin); the fixed atol=1e-6
    this replaces used 80% of its budget with one thread and failed on other machines. A real accumulation
    bug (lost negatives, rows of the wrong micro-batch, a scale counted twice) is of order max|g|.
    """
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
        scale = float(big[name].abs().max())
        torch.testing.assert_close(accumulated[name], big[name], rtol=1e-4, atol=1e-4 * scale, msg=name)
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


# -- the trainer's own steps (in-process Trainer on the small demo data, image-text, about 1 s a run) ------
def _trainer_config(small_demo: Path, run_dir: Path, **extra: object):
    from fault_support import tiny_config as trainer_config

    return trainer_config(small_demo, run_dir, **extra)


def test_logged_learning_rate_is_the_one_each_update_used(small_demo: Path, tmp_path: Path) -> None:
    from mmembed.train import Trainer

    config = _trainer_config(small_demo, tmp_path / "run", steps=5, **{
        "optim.warmup_steps": 3, "optim.min_lr_ratio": 0.1, "train.save_every": 0})
    Trainer(config).fit()
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lrs = {entry["step"]: entry["lr"] for entry in logged if "lr" in entry}
    # Step k (1-based) is the update made with schedule position k - 1: warmup 1/3, 2/3, 1, then cosine.
    expected = {k: config.optim.lr * warmup_cosine(k - 1, 5, 3, 0.1) for k in range(1, 6)}
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert lrs[1] == pytest.approx(config.optim.lr / 3)


def test_logit_scale_is_clamped_after_the_optimizer_step(small_demo: Path, tmp_path: Path) -> None:
    """An update that pushes θ past ln(max_logit_scale) must end at the cap, not above it."""
    from mmembed.train import Trainer

    cap = math.log(100.0)
    config = _trainer_config(small_demo, tmp_path / "run", steps=1, **{
        "optim.lr": 1.0, "optim.warmup_steps": 0, "train.save_every": 0,
        "model.pairs.0.logit_scale_init": cap - 0.1})
    trainer = Trainer(config)
    theta = trainer.unwrapped.logit_scales["image__text"]
    theta.register_hook(lambda grad: torch.full_like(grad, -1.0))  # the loss "wants" a larger scale
    trainer.fit()
    assert float(theta.detach()) == pytest.approx(cap, abs=1e-6)


def test_resume_restores_scheduler_optimizer_rng_and_worker_rotation(small_demo: Path, tmp_path: Path) -> None:
    """Fast twin of the slow kill-and-resume test: resume at step 3 (two loader workers, so the next batch
    comes from worker 1) must replay the uninterrupted run's batches and weights exactly."""
    from safetensors.torch import load_file

    from mmembed.train import Trainer

    extra = {"data.num_workers": 2, "train.save_every": 3, "train.log_sample_ids": "true"}
    straight = tmp_path / "straight"
    Trainer(_trainer_config(small_demo, straight, steps=5, **extra)).fit()
    resumed = tmp_path / "resumed"
    trainer = Trainer(_trainer_config(small_demo, resumed, steps=5, **extra),
                      resume=str(straight / "checkpoints" / "step_00000003"))
    assert trainer.next_worker == 1 and trainer.scheduler.last_epoch == 3
    trainer.fit()
    ids = {run: (run / "sample_ids" / "rank0.txt").read_text().splitlines() for run in (straight, resumed)}
    assert ids[resumed] == ids[straight][3:]
    want, got = (load_file(str(run / "checkpoints" / "step_00000005" / "model" / "model.safetensors"))
                 for run in (straight, resumed))
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)
