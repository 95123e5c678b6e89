"""MultiModalModel: unit embeddings, per-pair logit scales, freezing, weight-decay names, tri-modal."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from test_towers_common import TINY_AUDIO, TINY_BYTE_TEXT, TINY_TEXT, TINY_VIT

from mmembed.config.model import HeadSpec, ModalityConfig, ModelConfig, PairConfig, TowerSpec
from mmembed.config.validate import structured_from_dict
from mmembed.heads import HEADS, build_head
from mmembed.model import MultiModalModel, build_model
from mmembed.types import ReadsModality

CLIP_DEFAULTS = {"infonce": (math.log(1 / 0.07), None), "siglip": (math.log(10.0), -10.0)}


def fixed_defaults(name: str) -> tuple[float, float | None]:
    return CLIP_DEFAULTS[name]


def tri_modal_cfg(**overrides: Any) -> ModelConfig:
    image = {"tower": {"type": "open_clip_vision", "args": {"vision_cfg": TINY_VIT, "embed_dim": 32}},
             "head": {"type": "identity"}}
    text = {"tower": {"type": "open_clip_text", "args": {"text_cfg": TINY_TEXT, "embed_dim": 32}},
            "head": {"type": "identity"}}
    audio = {"tower": {"type": "audio_mel", "args": TINY_AUDIO}, "head": {"type": "linear"}}
    tree: dict[str, Any] = {
        "embed_dim": 32,
        "modalities": {"image": image, "text": text, "audio": audio},
        "pairs": [{"a": "image", "b": "text"}, {"a": "audio", "b": "text", "loss": "siglip"}],
    }
    for key, value in overrides.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return structured_from_dict(ModelConfig, tree, "model")


def tri_modal(**overrides: Any) -> MultiModalModel:
    torch.manual_seed(0)
    return build_model(tri_modal_cfg(**overrides), loss_defaults=fixed_defaults)


def random_batch(model: MultiModalModel, batch: int = 4) -> dict[str, Any]:
    tokenize = model.preprocessors(is_train=True)["text"]
    return {
        "image": torch.randn(batch, 3, 32, 32),
        "text": torch.stack([tokenize(f"caption {i}") for i in range(batch)]),
        "audio": torch.randn(batch, 9000),
        "index": torch.arange(batch),
    }


def test_tri_modal_forward_backward() -> None:
    model = tri_modal().train()
    out = model(random_batch(model))
    assert set(out.embeddings) == set(out.features) == {"image", "text", "audio"}
    for modality, emb in out.embeddings.items():
        assert emb.shape == (4, 32) and emb.dtype == torch.float32
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(4))
        assert out.features[modality].shape == (4, model.towers[modality].output_dim)
    s = model.logit_scale("image", "text")
    loss = -(s * out.embeddings["image"] @ out.embeddings["text"].T).diag().mean()
    sig = model.logit_scale("audio", "text") * out.embeddings["audio"] @ out.embeddings["text"].T
    loss = loss + (sig + model.logit_bias("audio", "text")).sigmoid().mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_missing_modality_is_absent_not_invented() -> None:
    model = tri_modal().eval()
    batch = random_batch(model)
    del batch["audio"]
    batch["image"] = None
    out = model(batch)
    assert set(out.embeddings) == {"text"}


def test_encode_is_the_public_path_and_returns_unit_vectors() -> None:
    model = tri_modal().eval()
    batch = random_batch(model)
    with torch.no_grad():
        out = model(batch)
        for modality in ("image", "text", "audio"):
            emb = model.encode(modality, batch[modality])
            torch.testing.assert_close(emb, out.embeddings[modality])
            torch.testing.assert_close(emb.norm(dim=-1), torch.ones(4))
    with pytest.raises(KeyError, match="unknown modality 'video'"):
        model.encode("video", batch["image"])


@pytest.mark.parametrize(("head", "args"), [("linear", {}), ("linear", {"bias": True}),
                                            ("mlp", {"hidden_dim": 16, "layers": 3, "dropout": 0.1}),
                                            ("identity", {})])
def test_heads_return_unit_vectors(head: str, args: dict[str, Any]) -> None:
    torch.manual_seed(0)
    module = build_head(HeadSpec(type=head, args=args), in_dim=8, embed_dim=8)
    out = module(torch.randn(5, 8) * 100)
    assert out.shape == (5, 8)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(5))
    assert set(HEADS.names()) == {"linear", "mlp", "identity"}


def test_head_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"output_dim \(8\) to equal embed_dim \(4\)"):
        build_head(HeadSpec(type="identity"), in_dim=8, embed_dim=4)
    with pytest.raises(ValueError, match="unknown activation 'swoosh'"):
        build_head(HeadSpec(type="mlp", args={"activation": "swoosh"}), in_dim=8, embed_dim=4)
    with pytest.raises(ValueError, match=r"model\.modalities\.image\.head: .*identity head"):
        narrow = {"modalities.image.tower.args": {"vision_cfg": TINY_VIT, "embed_dim": 16}}
        build_model(tri_modal_cfg(**narrow), loss_defaults=fixed_defaults)


def test_logit_scales_per_pair_and_clamp() -> None:
    model = tri_modal(**{"pairs": [{"a": "image", "b": "text"},
                                   {"a": "audio", "b": "text", "loss": "siglip"},
                                   {"a": "image", "b": "audio", "logit_scale_init": 5.0,
                                    "logit_bias_init": 2.0, "learn_logit_scale": False}]})
    assert set(model.logit_scales) == {"image__text", "audio__text", "image__audio"}
    torch.testing.assert_close(model.logit_scale("image", "text"), torch.tensor(1 / 0.07))
    torch.testing.assert_close(model.logit_scale("text", "image"), torch.tensor(1 / 0.07))
    assert model.logit_bias("image", "text") is None
    torch.testing.assert_close(model.logit_scale("audio", "text"), torch.tensor(10.0))
    torch.testing.assert_close(model.logit_bias("audio", "text"), torch.tensor(-10.0))
    assert not model.logit_scales["image__audio"].requires_grad
    torch.testing.assert_close(model.logit_bias("audio", "image"), torch.tensor(2.0))
    with torch.no_grad():
        model.logit_scales["image__text"].fill_(7.0)
        model.logit_scales["audio__text"].fill_(-3.0)
    model.clamp_logit_scales()
    assert model.logit_scales["image__text"].item() == pytest.approx(math.log(100.0))
    assert model.logit_scales["audio__text"].item() == 0.0
    assert model.logit_scales["image__audio"].item() == 5.0  # fixed by the recipe: not clamped


def test_pair_errors_are_clear() -> None:
    with pytest.raises(ValueError, match=r"pairs\[1\] \(audio, video\) names unknown modality 'video'"):
        tri_modal(pairs=[{"a": "image", "b": "text"}, {"a": "audio", "b": "video"}])
    with pytest.raises(ValueError, match="'text' twice"):
        tri_modal(pairs=[{"a": "text", "b": "text"}])
    with pytest.raises(ValueError, match="shares its logit scale"):
        tri_modal(pairs=[{"a": "image", "b": "text"}, {"a": "text", "b": "image", "loss": "siglip"}])
    with pytest.raises(KeyError, match=r"no trained pair \(image, audio\)"):
        tri_modal().logit_scale("image", "audio")


def test_repeated_pair_shares_one_scale() -> None:
    model = tri_modal(pairs=[{"a": "image", "b": "text"}, {"a": "text", "b": "image", "weight": 0.5}])
    assert list(model.logit_scales) == ["image__text"]


def test_default_logit_scales_come_from_the_losses() -> None:
    from mmembed.losses import loss_defaults

    model = build_model(tri_modal_cfg())
    assert model.logit_scales["image__text"].item() == pytest.approx(loss_defaults("infonce")[0])
    assert model.logit_scales["audio__text"].item() == pytest.approx(loss_defaults("siglip")[0])
    bias = loss_defaults("siglip")[1]
    assert model.logit_bias("audio", "text").item() == pytest.approx(bias)


def test_frozen_tower_gets_no_grad_stays_eval_and_head_trains() -> None:
    model = tri_modal(**{"modalities.audio.tower.freeze": True, "modalities.text.tower.freeze": True,
                         "modalities.text.head": {"type": "linear"}})
    model.train()
    assert not model.towers["audio"].training and not any(m.training for m in model.towers["audio"].modules())
    assert model.heads["audio"].training and model.towers["image"].training
    bn = model.towers["audio"].input_norm
    stats = bn.running_mean.clone()
    out = model(random_batch(model))
    torch.testing.assert_close(bn.running_mean, stats)  # BatchNorm statistics untouched
    assert not out.features["audio"].requires_grad
    sum(e.sum() for e in out.embeddings.values()).backward()
    for modality in ("audio", "text"):
        assert all(p.grad is None and not p.requires_grad for p in model.towers[modality].parameters())
        assert all(p.grad is not None for p in model.heads[modality].parameters())
    assert all(p.grad is not None for p in model.towers["image"].parameters())


def test_partial_unfreeze() -> None:
    unfreeze = [r"^model\.transformer\.resblocks\.1\.", r"^model\.(ln_post|proj)"]
    model = tri_modal(**{"modalities.image.tower.freeze": True, "modalities.image.tower.unfreeze": unfreeze})
    model.train()
    tower = model.towers["image"]
    trainable = {n for n, p in tower.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("model.transformer.resblocks.1.", "model.ln_post", "model.proj"))
                             for n in trainable)
    assert not tower.model.transformer.resblocks[0].training
    assert tower.model.transformer.resblocks[1].training
    out = model(random_batch(model))
    out.embeddings["image"].sum().backward()
    assert all((p.grad is not None) == (n in trainable) for n, p in tower.named_parameters())


def test_no_weight_decay_names() -> None:
    model = tri_modal()
    names = model.no_weight_decay()
    params = dict(model.named_parameters())
    assert names <= params.keys()
    assert {"logit_scales.image__text", "logit_scales.audio__text", "logit_biases.audio__text"} <= names
    assert {"towers.image.model.positional_embedding", "towers.image.model.class_embedding",
            "towers.text.model.positional_embedding"} <= names
    assert "towers.image.model.transformer.resblocks.0.ln_1.weight" in names
    assert "towers.image.model.proj" not in names and "heads.audio.proj.weight" not in names
    assert all(params[n].ndim <= 1 for n in names if ".positional_embedding" not in n)


def test_grad_checkpointing_and_preprocessors() -> None:
    model = tri_modal().eval()
    batch = random_batch(model)
    with torch.no_grad():
        ref = model(batch).embeddings
        model.set_grad_checkpointing(True)
        out = model(batch).embeddings
    for modality in ref:
        torch.testing.assert_close(out[modality], ref[modality])
    assert set(model.preprocessors(False)) == {"image", "text", "audio"}


def test_a_second_text_tower_gets_its_own_key_scale_and_data() -> None:
    """Two text towers (a frozen-anchor-style open_clip text and a byte_text) on one audio tower: each is a
    modality of its own with its own pair scale, and the second reads the caption as text."""
    chars = {"tower": {"type": "byte_text", "args": TINY_BYTE_TEXT}, "head": {"type": "linear"}}
    cfg = tri_modal_cfg(**{"modalities.chars": chars, "pairs": [
        {"a": "audio", "b": "text"}, {"a": "audio", "b": "chars"}]})
    torch.manual_seed(0)
    model = build_model(cfg, loss_defaults=fixed_defaults)
    pre = model.preprocessors(is_train=True)
    assert isinstance(pre["chars"], ReadsModality) and pre["chars"].reads == "text"
    assert not isinstance(pre["text"], ReadsModality)
    batch = random_batch(model)
    batch["chars"] = torch.stack([pre["chars"](f"caption {i}") for i in range(4)])
    out = model(batch)
    assert set(out.embeddings) == {"image", "text", "audio", "chars"}
    torch.testing.assert_close(out.embeddings["chars"], model.encode("chars", batch["chars"]))
    assert sorted(model.logit_scales) == ["audio__chars", "audio__text"]


def test_grad_checkpointing_from_tower_spec() -> None:
    model = tri_modal(**{"modalities.image.tower.grad_checkpointing": True})
    assert model.towers["image"].model.transformer.grad_checkpointing
    assert not model.towers["text"].model.transformer.grad_checkpointing


def test_build_model_rejects_empty_and_bad_specs() -> None:
    with pytest.raises(ValueError, match="at least one modality"):
        build_model(ModelConfig(), loss_defaults=fixed_defaults)
    bad = ModelConfig(modalities={"image": ModalityConfig(tower=TowerSpec(type="open_clip_vision",
                                                                          args={"vison_cfg": {}}))},
                      pairs=[PairConfig(a="image", b="text")])
    with pytest.raises(ValueError, match="unknown modality 'text'"):
        build_model(bad, loss_defaults=fixed_defaults)
