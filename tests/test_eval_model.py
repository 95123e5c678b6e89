"""Evaluation of a real (tiny, random) MultiModalModel on real WebDataset shards through the real loader,
and the `mmembed eval` entry point on a saved checkpoint. Expected numbers come from encoding every
sample one at a time, outside the eval code path."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import webdataset as wds
from PIL import Image
from safetensors.torch import save_file

import mmembed.losses.isogclr  # noqa: F401  (registers the "isogclr" loss whose state is plotted)
from mmembed.checkpoint import save_model_dir, state_to_safetensors
from mmembed.config import ExperimentConfig, structured_from_dict
from mmembed.config.eval import EvalConfig, RetrievalTask, ZeroShotTask
from mmembed.config.model import PairConfig
from mmembed.eval import evaluate, resolve_templates, run_eval_command
from mmembed.eval.cli import read_temperature_tables
from mmembed.eval.templates import render
from mmembed.eval.zeroshot import zero_shot_metrics
from mmembed.model import build_model
from mmembed.train.objective import Objective

CLASSNAMES = ["red circle", "blue square", "green triangle"]
SAMPLE_RATE = 16000
MODEL = {
    "embed_dim": 16,
    "modalities": {
        "image": {"tower": {"type": "open_clip_vision", "args": {"embed_dim": 24, "vision_cfg": {
            "image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16}}}},
        "text": {"tower": {"type": "open_clip_text", "args": {"embed_dim": 24, "text_cfg": {
            "context_length": 16, "width": 32, "heads": 2, "layers": 1}}}},
        "audio": {"tower": {"type": "audio_mel", "args": {
            "sample_rate": SAMPLE_RATE, "n_fft": 512, "hop_length": 160, "n_mels": 32, "f_max": 8000.0,
            "clip_seconds": 0.25, "backbone": "test_efficientnet"}}},
    },
    "pairs": [{"a": "image", "b": "text"}, {"a": "audio", "b": "text"}],
}


def _bytes(save) -> bytes:
    buffer = io.BytesIO()
    save(buffer)
    return buffer.getvalue()


def write_shards(folder: Path, per_shard: tuple[int, ...] = (7, 6)) -> list[str]:
    """Shards with png/txt/flac/cls/idx members (the demo data's val layout) and classnames.txt."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    urls, index = [], 0
    for shard, count in enumerate(per_shard):
        url = str(folder / f"val-{shard:06d}.tar")
        with wds.TarWriter(url, encoder=False) as sink:
            for _ in range(count):
                label = int(rng.integers(len(CLASSNAMES)))
                pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                wave = (0.1 * rng.standard_normal(SAMPLE_RATE // 2)).astype(np.float32)
                sink.write({
                    "__key__": f"{index:08d}",
                    "png": _bytes(lambda b, p=pixels: Image.fromarray(p).save(b, format="PNG")),
                    "txt": f"a picture of a {CLASSNAMES[label]} number {index}".encode(),
                    "flac": _bytes(lambda b, w=wave: sf.write(b, w, SAMPLE_RATE, format="FLAC")),
                    "cls": str(label).encode(),
                    "idx": str(index).encode(),
                })
                index += 1
        urls.append(url)
    (folder / "classnames.txt").write_text("\n".join(CLASSNAMES) + "\n")
    return urls


def read_samples(urls: list[str]) -> list[dict]:
    """The shards' samples decoded independently of mmembed.data (in shard order)."""
    samples = []
    for url in urls:
        for raw in wds.WebDataset(url, shardshuffle=False):
            image = Image.open(io.BytesIO(raw["png"])).convert("RGB")
            wave, rate = sf.read(io.BytesIO(raw["flac"]), dtype="float32")
            samples.append({"image": image, "text": raw["txt"].decode(), "audio": (wave, rate),
                            "cls": int(raw["cls"])})
    return samples


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_model")
    config = structured_from_dict(ExperimentConfig, {"model": MODEL})
    torch.manual_seed(0)
    model = build_model(config.model)
    urls = write_shards(root / "data")
    return model, config, urls, read_samples(urls), root


def direct_embeddings(model, samples: list[dict], modality: str) -> torch.Tensor:
    preprocess = model.preprocessors(is_train=False)[modality]
    with torch.no_grad():
        return torch.cat([model.encode(modality, preprocess(s[modality])[None]) for s in samples]).float()


def direct_classifier(model, templates: list) -> torch.Tensor:
    rows = []
    for name in CLASSNAMES:
        prompts = [{"text": render(t, name)} for t in templates]
        mean = direct_embeddings(model, prompts, "text").mean(0)
        rows.append(mean / mean.norm())
    return torch.stack(rows)


def brute_recall(q: np.ndarray, c: np.ndarray, k: int) -> float:
    return float(np.mean([i in np.argsort(-(c @ q[i]))[:k] for i in range(len(q))]))


def test_evaluate_real_model_matches_direct_computation(setup) -> None:
    model, _, urls, samples, root = setup
    classnames = str(root / "data" / "classnames.txt")
    cfg = EvalConfig(batch_size=4, retrieval_chunk_size=3, zeroshot=[
        ZeroShotTask(name="img", modality="image", urls=urls, classnames=classnames, templates=["simple"]),
        ZeroShotTask(name="snd", modality="audio", urls=urls, classnames=classnames, templates=["audio"])],
        retrieval=[RetrievalTask(name="pairs", urls=urls, a="image", b="text")])
    model.train()
    metrics = evaluate(model, cfg, device="cpu", progress=False)
    assert model.training

    model.eval()
    labels = torch.tensor([s["cls"] for s in samples])
    images, texts = direct_embeddings(model, samples, "image"), direct_embeddings(model, samples, "text")
    for task, modality, templates in (("img", "image", "simple"), ("snd", "audio", "audio")):
        classifier = direct_classifier(model, resolve_templates(templates))
        expected = zero_shot_metrics(direct_embeddings(model, samples, modality) @ classifier.T, labels)
        assert metrics[f"zeroshot/{task}/top1"] == pytest.approx(expected.top1)
        recall = metrics[f"zeroshot/{task}/mean_per_class_recall"]
        assert recall == pytest.approx(expected.mean_per_class_recall)
        assert metrics[f"zeroshot/{task}/top5"] == pytest.approx(1.0)
    for k in (1, 5, 10):
        assert metrics[f"retrieval/pairs/image_to_text_R@{k}"] == pytest.approx(
            brute_recall(images.numpy(), texts.numpy(), k))
        assert metrics[f"retrieval/pairs/text_to_image_R@{k}"] == pytest.approx(
            brute_recall(texts.numpy(), images.numpy(), k))


def write_isogclr_state(path: Path, num_samples: int) -> None:
    """The loss state a training checkpoint stores, from the real Objective with an iSogCLR pair."""
    pair = PairConfig(a="image", b="text", loss="isogclr", args={"num_samples": num_samples})
    objective = Objective([pair])
    table = objective.losses["image__text"].state
    table.tau_a.uniform_(0.005, 0.05)
    table.visits.random_(0, 4)
    save_file(state_to_safetensors(objective), str(path))


def test_temperature_tables_are_read_from_the_objective_state(tmp_path: Path) -> None:
    write_isogclr_state(tmp_path / "objective.safetensors", 9)
    tables = read_temperature_tables(tmp_path / "objective.safetensors")
    assert list(tables) == ["losses.image__text.state"]
    taus, counts = tables["losses.image__text.state"]
    assert sorted(taus) == ["image", "text"] and np.allclose(taus["text"], 0.01)
    assert counts is not None and counts.shape == (9,)


def test_run_eval_command_on_a_saved_checkpoint(setup, tmp_path: Path, capsys) -> None:
    model, config, urls, samples, _ = setup
    run_dir = tmp_path / "run"
    save_model_dir(run_dir / "checkpoints" / "step_00000010" / "model", model, config)
    (run_dir / "checkpoints" / "LATEST").write_text("step_00000010\n")
    write_isogclr_state(run_dir / "checkpoints" / "step_00000010" / "objective.safetensors", len(samples))
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps({"step": s, "loss": 3.0 / s, "lr": 1e-3})
                                                     for s in (1, 2, 3)) + "\n")
    common = {"checkpoint_dir": run_dir, "data": urls, "classnames": None, "plot_dir": tmp_path / "plots",
              "batch_size": 5, "pair": "image,text", "device": "cpu", "progress": False}
    zeroshot = run_eval_command(task="zeroshot", templates="audio", modality="audio", **common)
    retrieval = run_eval_command(task="retrieval", templates="openai", modality="image", **common)

    model.eval()
    labels = torch.tensor([s["cls"] for s in samples])
    classifier = direct_classifier(model, resolve_templates("audio"))
    logits = direct_embeddings(model, samples, "audio") @ classifier.T
    assert zeroshot["zeroshot/data/top1"] == pytest.approx(zero_shot_metrics(logits, labels).top1)
    images, texts = direct_embeddings(model, samples, "image"), direct_embeddings(model, samples, "text")
    assert retrieval["retrieval/data/image_to_text_R@1"] == pytest.approx(
        brute_recall(images.numpy(), texts.numpy(), 1))
    printed = capsys.readouterr().out
    assert "zeroshot/data" in printed and "text_to_image_R@10" in printed
    pngs = ("confusion_data.png", "training_curves.png", "temperatures_losses_image__text_state.png")
    for png in pngs:
        assert (tmp_path / "plots" / png).stat().st_size > 1000
    with pytest.raises(ValueError, match="--pair"):
        run_eval_command(task="retrieval", templates="openai", modality="image",
                         **{**common, "pair": "image"})
    with pytest.raises(ValueError, match="unknown eval task 'bogus'"):
        run_eval_command(task="bogus", templates="openai", modality="image", **common)


def test_eval_says_which_templates_it_used_and_can_use_the_recipes(setup, tmp_path: Path, capsys) -> None:
    model, _, urls, samples, root = setup
    own = ["a {} drawn", "the {}"]
    recipe = structured_from_dict(ExperimentConfig, {"model": MODEL, "eval": {"zeroshot": [
        {"name": "held", "modality": "image", "urls": urls, "classnames": str(root / "data" / "classnames.txt"),
         "templates": own}]}})
    save_model_dir(tmp_path / "model", model, recipe)
    common = {"checkpoint_dir": tmp_path / "model", "task": "zeroshot", "data": urls, "classnames": None,
              "modality": "image", "pair": "image,text", "plot_dir": None, "batch_size": 5, "device": "cpu",
              "progress": False}
    run_eval_command(templates="openai", **common)
    note = capsys.readouterr().out.splitlines()[0]
    openai = len(resolve_templates("openai"))
    assert note.startswith(f"zero-shot prompts: {openai} templates from set 'openai'")
    assert "the recipe's own eval ('held') uses 2 others ('a {} drawn', 'the {}')" in note
    assert "--templates recipe" in note

    metrics = run_eval_command(templates="recipe", **common)
    assert capsys.readouterr().out.splitlines()[0] == "zero-shot prompts: 2 templates from the recipe's task 'held'"
    labels = torch.tensor([s["cls"] for s in samples])
    logits = direct_embeddings(model, samples, "image") @ direct_classifier(model, own).T
    assert metrics["zeroshot/data/top1"] == pytest.approx(zero_shot_metrics(logits, labels).top1)
    with pytest.raises(ValueError, match="no zero-shot task for modality 'audio'"):
        run_eval_command(templates="recipe", **{**common, "modality": "audio"})


def test_eval_help_names_the_default_templates() -> None:
    from mmembed.cli import build_parser

    sub = next(a for a in build_parser()._subparsers._group_actions if a.choices)  # type: ignore[union-attr]
    text = " ".join(sub.choices["eval"].format_help().split())
    assert f"OpenAI's {len(resolve_templates('openai'))} ImageNet templates" in text
    assert "not the recipe's own" in text and "'recipe'" in text
