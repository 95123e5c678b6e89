"""Classifier weights and evaluate() end to end on a tiny stand-in model, against direct computations.

The stand-in has MultiModalModel's two eval-facing methods (`encode`, `preprocessors`); the loader factory
stands in for mmembed.data.build_eval_loader over in-memory samples (test_eval_model.py uses the real ones).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, default_collate

from mmembed.config import structured_from_dict
from mmembed.config.eval import EvalConfig, RetrievalTask, ZeroShotTask
from mmembed.eval import build_zero_shot_classifier, evaluate, format_table, resolve_templates
from mmembed.eval.templates import render
from mmembed.eval.zeroshot import zero_shot_metrics

LENGTH, VOCAB, DIM = 12, 97, 8
CLASSNAMES = ["red circle", "blue square", "green star", "yellow moon"]


def tokenize(text: str) -> torch.Tensor:
    ids = [ord(ch) % VOCAB for ch in text[:LENGTH]]
    return torch.tensor(ids + [0] * (LENGTH - len(ids)))


def tokenize_dict(text: str) -> dict[str, torch.Tensor]:
    ids = tokenize(text)
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


class TextEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.mix = nn.Linear(LENGTH * DIM, DIM)

    def forward(self, tokens: Any) -> torch.Tensor:
        ids = tokens["input_ids"] if isinstance(tokens, dict) else tokens
        return self.mix(self.embed(ids).flatten(1))


class ToyModel(nn.Module):
    """Dropout makes train-mode outputs random: results equal to the eval-mode reference prove eval mode."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        text = TextEncoder()
        self.encoders = nn.ModuleDict({"text": text, "hftext": text, "image": nn.Linear(12, DIM)})
        self.dropout = nn.Dropout(0.5)
        self.grad_enabled_calls: list[bool] = []

    def preprocessors(self, is_train: bool) -> dict[str, Any]:
        return {"text": tokenize, "hftext": tokenize_dict, "image": lambda x: x.float().flatten()}

    def encode(self, modality: str, inputs: Any) -> torch.Tensor:
        self.grad_enabled_calls.append(torch.is_grad_enabled())
        return F.normalize(self.dropout(self.encoders[modality](inputs)), dim=-1)


def direct_classifier(model: ToyModel, templates: list, modality: str = "text") -> torch.Tensor:
    preprocess = model.preprocessors(False)[modality]
    rows = []
    for name in CLASSNAMES:
        embs = [model.encode(modality, default_collate([preprocess(render(t, name))]))[0] for t in templates]
        mean = torch.stack([F.normalize(e, dim=0) for e in embs]).mean(0)
        rows.append(mean / mean.norm())
    return torch.stack(rows)


@pytest.mark.parametrize("modality", ["text", "hftext"])
@pytest.mark.parametrize("batch_size", [1, 5, 1000])
def test_classifier_weights_equal_direct_computation(modality: str, batch_size: int) -> None:
    model = ToyModel().eval()
    templates = resolve_templates(["simple", "a drawing of {}."])
    with torch.no_grad():
        expected = direct_classifier(model, templates, modality)
    got = build_zero_shot_classifier(model, CLASSNAMES, templates, text_modality=modality,
                                     batch_size=batch_size)
    assert got.shape == (len(CLASSNAMES), DIM)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(len(CLASSNAMES)))


def make_samples(n: int, seed: int) -> list[dict[str, Any]]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(CLASSNAMES), (n,), generator=gen)
    return [{"image": torch.randn(3, 2, 2, generator=gen), "text": f"caption {i} {CLASSNAMES[int(c)]}",
             "cls": int(c)} for i, c in enumerate(labels)]


class InMemoryLoaders:
    """build_eval_loader's contract over in-memory samples: every sample once, in order, batched."""

    def __init__(self, shards: dict[str, list[dict[str, Any]]]) -> None:
        self.shards = shards
        self.calls: list[tuple[list[str], list[str], tuple[str, ...]]] = []

    def __call__(self, urls, preprocessors, *, batch_size, num_workers=0, extra_keys=("cls",)):
        self.calls.append((list(urls), sorted(preprocessors), tuple(extra_keys)))
        items = [{**{m: f(s[m]) for m, f in preprocessors.items()}, **{k: s[k] for k in extra_keys}}
                 for url in urls for s in self.shards[url]]
        return DataLoader(items, batch_size=batch_size, collate_fn=default_collate)


def naive_recall_at(a: np.ndarray, b: np.ndarray, k: int) -> float:
    return float(np.mean([i in np.argsort(-(b @ a[i]))[:k] for i in range(len(a))]))


def test_evaluate_equals_direct_computation_and_restores_modes(tmp_path) -> None:
    (tmp_path / "classes.txt").write_text("\n".join(CLASSNAMES) + "\n\n")
    shards = {"val-0.tar": make_samples(23, seed=1), "val-1.tar": make_samples(18, seed=2)}
    cfg = EvalConfig(batch_size=7, retrieval_chunk_size=5, zeroshot=[
        ZeroShotTask(name="shapes", modality="image", urls=list(shards),
                     classnames=str(tmp_path / "classes.txt"), templates=["simple"])],
        retrieval=[RetrievalTask(name="captions", urls=list(shards), a="image", b="text")])
    model = ToyModel().train()
    model.encoders["text"].eval()  # a LiT-style frozen submodule that must stay in eval mode afterwards
    loaders = InMemoryLoaders(shards)
    metrics = evaluate(model, cfg, device="cpu", progress=False, loader_factory=loaders)

    assert model.training and model.dropout.training and not model.encoders["text"].training
    assert model.encoders["image"].training
    assert not any(model.grad_enabled_calls)
    assert loaders.calls[0] == (list(shards), ["image"], ("cls",))
    assert loaders.calls[1] == (list(shards), ["image", "text"], ())

    samples = shards["val-0.tar"] + shards["val-1.tar"]
    model.eval()
    with torch.no_grad():
        classifier = direct_classifier(model, resolve_templates("simple"))
        images = torch.cat([model.encode("image", s["image"].flatten()[None]) for s in samples])
        texts = torch.cat([model.encode("text", tokenize(s["text"])[None]) for s in samples])
    labels = torch.tensor([s["cls"] for s in samples])
    expected = zero_shot_metrics(images @ classifier.T, labels)
    assert metrics["zeroshot/shapes/top1"] == pytest.approx(expected.top1)
    assert metrics["zeroshot/shapes/top5"] == pytest.approx(1.0)  # 4 classes: top-5 capped at 4
    assert metrics["zeroshot/shapes/mean_per_class_recall"] == pytest.approx(expected.mean_per_class_recall)
    a, b = images.numpy(), texts.numpy()
    for k in (1, 5, 10):
        assert metrics[f"retrieval/captions/image_to_text_R@{k}"] == pytest.approx(naive_recall_at(a, b, k))
        assert metrics[f"retrieval/captions/text_to_image_R@{k}"] == pytest.approx(naive_recall_at(b, a, k))
    assert len(metrics) == 3 + 6

    table = format_table(metrics)
    assert "zeroshot/shapes" in table and "image_to_text_R@5" in table
    assert f"{metrics['zeroshot/shapes/top1']:.4f}" in table


def test_evaluate_errors_name_the_problem(tmp_path) -> None:
    shards = {"s.tar": make_samples(4, seed=0)}
    (tmp_path / "c.txt").write_text("\n".join(CLASSNAMES))
    missing = EvalConfig(zeroshot=[ZeroShotTask(name="z", urls=["s.tar"],
                                                classnames=str(tmp_path / "nope.txt"))])
    with pytest.raises(FileNotFoundError, match=r"nope\.txt"):
        evaluate(ToyModel(), missing, device="cpu", progress=False, loader_factory=InMemoryLoaders(shards))
    audio = EvalConfig(zeroshot=[ZeroShotTask(name="z", modality="audio", urls=["s.tar"],
                                              classnames=str(tmp_path / "c.txt"))])
    with pytest.raises(KeyError, match="no modality \\['audio'\\]"):
        evaluate(ToyModel(), audio, device="cpu", progress=False, loader_factory=InMemoryLoaders(shards))
    twice = EvalConfig(retrieval=[RetrievalTask(name="r", urls=["s.tar"]),
                                  RetrievalTask(name="r", urls=["s.tar"])])
    with pytest.raises(ValueError, match="unique"):
        evaluate(ToyModel(), twice, device="cpu", progress=False, loader_factory=InMemoryLoaders(shards))


def test_eval_config_fields_parse_from_a_recipe_dict() -> None:
    cfg = structured_from_dict(EvalConfig, {
        "every": 100, "retrieval_ks": [1, 3],
        "zeroshot": [{"name": "v", "modality": "audio", "urls": ["a.tar"], "classnames": "c.txt",
                      "templates": ["audio", "a clip of {}."]}],
    })
    assert cfg.retrieval_ks == [1, 3] and cfg.zeroshot[0].templates == ["audio", "a clip of {}."]


def test_cli_arguments_become_an_eval_config(tmp_path) -> None:
    from mmembed.eval.cli import TASK_CONFIGS, EvalRequest, parse_templates_arg

    (tmp_path / "val").mkdir()
    (tmp_path / "classnames.txt").write_text("a\nb\n")  # demo layout: one folder above the split
    (tmp_path / "prompts.txt").write_text("a photo of {}.\n\nthe {}, drawn.\n")
    assert parse_templates_arg(str(tmp_path / "prompts.txt")) == ["a photo of {}.", "the {}, drawn."]
    assert parse_templates_arg("a clip of {}, loud.") == ["a clip of {}, loud."]
    assert parse_templates_arg("simple, audio") == ["simple", "audio"]
    shards = [str(tmp_path / "val" / "val-{000..001}.tar")]
    request = EvalRequest(shards, None, templates="audio", modality="audio", pair="image,text", batch_size=8)
    cfg = TASK_CONFIGS["zeroshot"](request)
    task = cfg.zeroshot[0]
    assert (task.name, task.modality, task.templates) == ("val", "audio", ["audio"])
    assert task.classnames == str(tmp_path / "classnames.txt") and cfg.batch_size == 8
    retrieval = TASK_CONFIGS["retrieval"](request).retrieval[0]
    assert (retrieval.a, retrieval.b) == ("image", "text")
    (tmp_path / "classnames.txt").unlink()
    with pytest.raises(FileNotFoundError, match="--classnames"):
        TASK_CONFIGS["zeroshot"](request)


def test_retrieval_of_a_pair_never_trained_says_so(tmp_path) -> None:
    from mmembed.eval.cli import TASK_CONFIGS, EvalRequest, untrained_pair_note

    request = EvalRequest([str(tmp_path / "val.tar")], None, "openai", "image", "audio, image", 8,
                          label_key="cls_scene")
    task = TASK_CONFIGS["retrieval"](request).retrieval[0]
    assert (task.a, task.b, task.label_key) == ("audio", "image", "cls_scene")
    trained = [("image", "text"), ("audio", "text")]
    assert "audio-image was never a trained pair" in untrained_pair_note(request, trained)
    assert "image-text, audio-text" in untrained_pair_note(request, trained)
    request.pair = "text,audio"
    assert untrained_pair_note(request, trained) == ""


def test_retrieval_with_a_label_key_reads_the_labels_and_reports_label_recall_and_chance() -> None:
    from mmembed.eval.evaluate import run_tasks
    from mmembed.eval.retrieval import label_chance

    shards = {"val-0.tar": make_samples(23, seed=1), "val-1.tar": make_samples(18, seed=2)}
    cfg = EvalConfig(batch_size=7, retrieval=[RetrievalTask(name="scenes", urls=list(shards), a="image", b="text",
                                                            label_key="cls")])
    loaders = InMemoryLoaders(shards)
    model = ToyModel().eval()
    (result,) = run_tasks(model, cfg, device="cpu", progress=False, loader_factory=loaders)
    assert loaders.calls[0] == (list(shards), ["image", "text"], ("cls",))
    samples = shards["val-0.tar"] + shards["val-1.tar"]
    with torch.no_grad():
        images = torch.cat([model.encode("image", s["image"].flatten()[None]) for s in samples]).numpy()
        texts = torch.cat([model.encode("text", tokenize(s["text"])[None]) for s in samples]).numpy()
    labels = np.array([s["cls"] for s in samples])
    for k in (1, 5):
        hits = [labels[np.argsort(-(texts @ images[i]), kind="stable")[:k]].__contains__(labels[i])
                for i in range(len(samples))]
        assert result.metrics[f"retrieval/scenes/image_to_text_label_R@{k}"] == pytest.approx(np.mean(hits))
    assert result.chance["R@5"] == pytest.approx(5 / 41)
    assert result.chance["label_R@1"] == pytest.approx(label_chance(torch.tensor(labels), torch.tensor(labels), 1))
    assert result.chance_line().startswith("retrieval/scenes chance: R@1 0.0244")
