"""Multi-source steps (mmembed.train.objective, step, sources): a batch trains only its source's pairs,
contrastive accumulation over micro-batches of different sources equals one big step, two gloo processes
equal one, and an in-process run with two corpora resumes exactly in resampled and epoch mode."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from dist_utils import run_distributed
from train_support import BIND_RECIPE, corpora_overrides

from mmembed.config import load_recipe
from mmembed.errors import UserError
from mmembed.losses import LossContext
from mmembed.model import build_model
from mmembed.train.objective import Objective
from mmembed.train.step import accumulated_step, average_gradients, plain_step

IMAGE_TEXT, AUDIO_TEXT = 0, 1  # data.train positions in trimodal_bind.yaml; pairs 0 and 1 likewise


def bind_model(seed: int = 0):
    torch.manual_seed(seed)
    config = load_recipe(BIND_RECIPE)
    # eval(): no dropout, centre crops, so every path sees the same function of its inputs.
    return build_model(config.model).eval(), config


def source_batch(model, source: int, rows: int, seed: int) -> dict:
    """A batch as the mixed loader yields it for `source`: only that source's modalities, `__source__` set."""
    generator = torch.Generator().manual_seed(seed)
    tokenize = model.preprocessors(False)["text"]
    words = ("red", "green", "blue", "yellow", "circle", "square", "triangle", "left", "right")
    texts = [f"a {words[(seed + i) % 9]} {words[(2 * seed + 3 * i) % 9]} {i}" for i in range(rows)]
    batch = {"text": torch.stack([tokenize(t) for t in texts]), "index": torch.arange(rows) + 100 * seed,
             "__source__": source}
    if source == IMAGE_TEXT:
        batch["image"] = torch.rand(rows, 3, 32, 32, generator=generator)
    else:
        batch["audio"] = torch.randn(rows, 16000, generator=generator) * 0.1
    return batch


def rows_of(batch: dict, rows: slice) -> dict:
    return {k: v[rows] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def gradients(model, objective) -> dict[str, torch.Tensor]:
    named = [*model.named_parameters(), *((f"objective.{n}", p) for n, p in objective.named_parameters())]
    return {n: p.grad.clone() for n, p in named if p.grad is not None}


def test_a_source_without_a_pairs_modality_never_reaches_that_pairs_loss() -> None:
    model, config = bind_model()
    objective = Objective(config.model.pairs, [(0,), (1,)])
    calls = {key: 0 for key in objective.losses}
    for key, loss in objective.losses.items():
        loss.register_forward_hook(lambda *_, key=key: calls.__setitem__(key, calls[key] + 1))
    batch = source_batch(model, IMAGE_TEXT, 6, seed=1)
    batch["audio"] = torch.full((6, 16000), float("nan"))  # present in the batch, yet not the source's
    output = plain_step(Accelerator(cpu=True), model, objective, batch, 0, manual_sync=True)
    assert calls == {"image__text": 1, "audio__text": 0}
    assert torch.isfinite(output.loss) and set(output.pair_losses) == {0}
    assert all(not k.startswith("audio__text") for k in output.terms)
    grads = gradients(model, objective)
    assert not any(n.startswith("towers.audio") or n.endswith("audio__text") for n in grads)
    assert any(n.startswith("towers.image") for n in grads) and "logit_scales.image__text" in grads


def one_big_step(model, objective, micro: list[dict]) -> tuple[float, dict[str, torch.Tensor]]:
    """The reference: each pair's loss on one batch made of every micro-batch that trains it, one backward."""
    model.zero_grad(set_to_none=True)
    total = 0.0
    for i, pair in enumerate(objective.pairs):
        members = [mb for mb in micro if i in objective.trained_pairs(mb)]
        if not members:
            continue
        merged = {k: torch.cat([mb[k] for mb in members]) for k in (pair.a, pair.b, "index")}
        out = model(merged)
        key = f"{pair.a}__{pair.b}"
        ctx = LossContext(a=pair.a, b=pair.b, batch=merged, features=out.features)
        terms = objective.losses[key](out.embeddings[pair.a], out.embeddings[pair.b],
                                      model.logit_scale(pair.a, pair.b), model.logit_bias(pair.a, pair.b), ctx)
        total = total + pair.weight * sum(terms.values())
    total.backward()
    return float(total.detach()), gradients(model, objective)


def assert_grads_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    """Tolerance per tensor scaled by its largest entry (see test_train_units' accumulation test)."""
    assert got.keys() == want.keys() and len(want) > 10
    for name in want:
        scale = float(want[name].abs().max())
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-4 * scale, msg=name)


def test_accumulation_over_micro_batches_of_different_sources_equals_one_big_step() -> None:
    model, config = bind_model()
    objective = Objective(config.model.pairs, [(0,), (1,)])
    # image-text, audio-text, image-text: the image-text loss spans micro-batches 0 and 2 (8 rows, 8 negatives).
    micro = [source_batch(model, IMAGE_TEXT, 4, 1), source_batch(model, AUDIO_TEXT, 4, 2),
             source_batch(model, IMAGE_TEXT, 4, 3)]
    loss, want = one_big_step(model, objective, micro)
    model.zero_grad(set_to_none=True)
    output = accumulated_step(Accelerator(cpu=True), model, objective, micro, 0)
    assert float(output.loss) == pytest.approx(loss, rel=1e-5)
    assert set(output.pair_losses) == {0, 1}
    assert_grads_close(gradients(model, objective), want)
    # Without the cross-micro-batch negatives (the mean of each image-text micro-batch's own loss) it differs.
    alone = [one_big_step(model, objective, [mb])[1] for mb in (micro[0], micro[2])]
    image = [n for n in want if n.startswith("towers.image")]
    assert image and any(not torch.allclose((alone[0][n] + alone[1][n]) / 2, want[n], atol=1e-5) for n in image)


# -- two gloo processes against one -----------------------------------------------------------------------
def step_results(rank: int, world: int, accumulate: bool, built: tuple | None = None) -> dict[str, object]:
    """Every rank builds the same model and the same global micro-batches and keeps its own rows of each."""
    torch.set_num_threads(1)
    model, config = copy.deepcopy(built or bind_model())
    objective = Objective(config.model.pairs, [(0,), (1,)])
    micro = [source_batch(model, IMAGE_TEXT, 8, 1), source_batch(model, AUDIO_TEXT, 8, 2)]
    if not accumulate:
        micro = micro[1:]
    rows = slice(rank * 8 // world, (rank + 1) * 8 // world)
    local = [rows_of(mb, rows) for mb in micro]
    accelerator = Accelerator(cpu=True)
    if accumulate:
        output = accumulated_step(accelerator, model, objective, local, 0)
    else:
        output = plain_step(accelerator, model, objective, local[0], 0, manual_sync=True)
    return {"loss": output.loss.detach(), "grads": gradients(model, objective)}


def both_steps(rank: int, world: int) -> dict[object, object]:
    built = bind_model()
    results: dict[object, object] = {accumulate: step_results(rank, world, accumulate, built)
                                     for accumulate in (False, True)}
    # average_gradients as DDP with find_unused_parameters: a gradient only rank 0 has is averaged with zeros;
    # one no rank has stays None.
    used_here, unused = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    if rank == 0:
        used_here.grad = torch.full((3,), 4.0)
    average_gradients([used_here, unused])
    results["partial"] = (used_here.grad, unused.grad)
    return results


@pytest.fixture(scope="module")
def two_ranks() -> list[dict[bool, dict[str, object]]]:
    return run_distributed(both_steps, 2)


@pytest.mark.parametrize("accumulate", [False, True], ids=["one-source-step", "two-source-accumulation"])
def test_two_processes_equal_one_for_a_two_source_step(two_ranks, accumulate: bool) -> None:
    single = step_results(0, 1, accumulate)
    ranks = [results[accumulate] for results in two_ranks]
    torch.testing.assert_close(torch.stack([r["loss"] for r in ranks]).mean(), single["loss"], rtol=1e-5, atol=1e-6)
    for rank in ranks:
        # The untrained tower keeps no gradient on any rank, as in one process.
        assert rank["grads"].keys() == single["grads"].keys()
        assert_grads_close(rank["grads"], single["grads"])
    assert not torch.allclose(ranks[0]["loss"], ranks[1]["loss"])  # the ranks really held different rows


def test_a_gradient_only_some_ranks_have_is_averaged_with_zeros(two_ranks) -> None:
    for rank in two_ranks:
        used, unused = rank["partial"]
        assert torch.equal(used, torch.full((3,), 2.0)) and unused is None


# -- the trainer, in process ------------------------------------------------------------------------------
def bind_config(corpora: Path, run_dir: Path, steps: int, **extra: object):
    from mmembed.recipe import load_recipe as load_complete

    return load_complete(BIND_RECIPE, corpora_overrides(corpora, run_dir, steps=steps, **extra))


@pytest.mark.parametrize("resampled", ["true", "false"], ids=["resampled", "epochs"])
def test_two_source_run_resumes_exactly(small_corpora: Path, tmp_path: Path, resampled: str,
                                        caplog: pytest.LogCaptureFixture) -> None:
    """Resume at step 3 of 5 (two workers, accumulation 2: micro-batches from both sources in one step) replays
    the uninterrupted run's source choices, samples and weights exactly."""
    from safetensors.torch import load_file

    from mmembed.train import Trainer

    # Seed 4 draws the sources (audio, audio), (audio, image), (image, audio), (audio, image), (image, audio).
    extra = {"data.resampled": resampled, "train.save_every": 3, "train.keep_last": 0, "train.log_sample_ids": "true",
             "train.accum_freq": 2, "data.batch_size": 4, "seed": 4}
    straight = tmp_path / "straight"
    caplog.set_level(logging.INFO, logger="mmembed.train")
    Trainer(bind_config(small_corpora, straight, 5, **extra)).fit()
    assert any("source image_text [image,text] weight 1" in r.getMessage() for r in caplog.records)
    resumed = tmp_path / "resumed"
    trainer = Trainer(bind_config(small_corpora, resumed, 5, **extra),
                      resume=str(straight / "checkpoints" / "step_00000003"))
    assert trainer.sources.next_batch == 6
    trainer.fit()
    ids = {run: (run / "sample_ids" / "rank0.txt").read_text().splitlines() for run in (straight, resumed)}
    assert ids[resumed] == ids[straight][6:]
    # Indices of the audio-text corpus lie after the image-text corpus's 256.
    numbers = [int(i) for line in ids[straight] for i in line.split()]
    assert min(numbers) < 256 <= max(numbers) < 512
    want, got = (load_file(str(run / "checkpoints" / "step_00000005" / "model" / "model.safetensors"))
                 for run in (straight, resumed))
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)
    logged = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    last = logged[-1]
    for key in ("source/image_text/samples_per_s", "source/audio_text/loss", "pair/audio__text/samples_per_s",
                "pair/image__text/loss", "source/image_text/batch_share"):
        assert key in last, key


def test_resume_refuses_a_checkpoint_of_other_sources(small_corpora: Path, tmp_path: Path) -> None:
    from mmembed.train import Trainer

    run = tmp_path / "run"
    Trainer(bind_config(small_corpora, run, 2, **{"train.save_every": 1, "train.keep_last": 0})).fit()
    renamed = bind_config(small_corpora, tmp_path / "other", 2, **{"data.train.1.name": "speech"})
    with pytest.raises(UserError, match=r"written for data sources \['audio_text', 'image_text'\]"):
        Trainer(renamed, resume=str(run / "checkpoints" / "step_00000001"))


def test_per_sample_state_keeps_each_sources_samples_apart(small_corpora: Path, tmp_path: Path) -> None:
    """iSogCLR on both pairs: the image-text table is written only at the image-text corpus's rows (0..255),
    the audio-text table only at the audio-text corpus's rows (256..511), which the offsets put after them."""
    from mmembed.train import Trainer

    stateful = {f"model.pairs.{i}.{key}": value for i in (0, 1)
                for key, value in (("loss", "isogclr"), ("learn_logit_scale", "false"))}
    config = bind_config(small_corpora, tmp_path / "run", 4, **stateful, seed=4, **{"data.num_workers": 0})
    assert [pair.args["num_samples"] for pair in config.model.pairs] == [512, 512]
    trainer = Trainer(config)
    trainer.fit()
    image_text, audio_text = (trainer.objective.losses[key].state.visits for key in ("image__text", "audio__text"))
    assert image_text[:256].sum() > 0 and image_text[256:].sum() == 0
    assert audio_text[256:].sum() > 0 and audio_text[:256].sum() == 0
