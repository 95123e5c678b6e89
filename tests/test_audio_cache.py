"""A frozen text anchor with a feature cache: no gradient reaches it, its cache is hit after the first pass,
cached features equal freshly computed ones, and the cache stays out of checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_towers_common import TINY_AUDIO, make_tiny_bert
from torch.utils.data import default_collate

from mmembed.config import structured_from_dict
from mmembed.config.model import ModelConfig, PairConfig, TowerSpec
from mmembed.config.validate import ConfigError
from mmembed.losses import LossContext, build_loss
from mmembed.model import MultiModalModel, build_model
from mmembed.towers.feature_cache import FeatureCache

CAPTIONS = ["yes", "no", "stop", "go", "yes", "left"]  # "yes" repeats within the batch


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def _model(bert_folder: Path, cache: bool, cache_size: int = 64) -> MultiModalModel:
    cfg = structured_from_dict(ModelConfig, {
        "embed_dim": 16,
        "modalities": {
            "audio": {"tower": {"type": "audio_mel", "args": TINY_AUDIO}},
            "text": {"tower": {"type": "hf_text", "args": {"path": str(bert_folder)}, "freeze": True,
                               "cache_features": cache, "cache_size": cache_size}},
        },
        "pairs": [{"a": "audio", "b": "text", "loss": "cwcl", "args": {"anchor": "text"}}],
    })
    torch.manual_seed(0)
    return build_model(cfg)


def _batch(model: MultiModalModel, captions: list[str]) -> dict[str, object]:
    pre = model.preprocessors(is_train=True)
    return {"text": default_collate([pre["text"](c) for c in captions]),
            "audio": torch.randn(len(captions), 9000)}


def _cwcl_step(model: MultiModalModel, batch: dict[str, object]) -> torch.Tensor:
    """Forward + CWCL (weights from the frozen text features) + backward; returns the text features."""
    model.train()
    out = model(batch)
    loss = build_loss(PairConfig(a="audio", b="text", loss="cwcl", args={"anchor": "text"}))
    ctx = LossContext(a="audio", b="text", batch=batch, features=out.features, step=0)
    terms = loss(out.embeddings["audio"], out.embeddings["text"], model.logit_scale("audio", "text"), None, ctx)
    terms["cwcl"].backward()
    return out.features["text"]


def test_frozen_text_tower_gets_no_gradient_and_its_cache_is_hit(bert_folder: Path) -> None:
    model = _model(bert_folder, cache=True)
    text_tower = model.towers["text"]
    calls: list[int] = []
    text_tower.model.register_forward_hook(lambda module, args, output: calls.append(1))
    cache = model.feature_cache("text")
    assert cache is not None and model.feature_cache("audio") is None
    batch = _batch(model, CAPTIONS)
    first = _cwcl_step(model, batch)
    # Six rows, five distinct captions: every row missed, and the tower ran once on the five distinct ones.
    assert (cache.hits, cache.misses, len(cache), len(calls)) == (0, 6, 5, 1)
    second = _cwcl_step(model, _batch(model, ["go", "yes", "stop", "no", "yes", "left"]))
    assert (cache.hits, cache.misses, len(calls)) == (6, 6, 1)  # the frozen tower did not run at all
    third = _cwcl_step(model, _batch(model, ["down", "yes"]))
    assert (cache.hits, cache.misses, len(cache), len(calls)) == (7, 7, 6, 2)
    assert all(p.grad is None and not p.requires_grad for p in text_tower.parameters())
    assert all(p.grad is not None for p in model.towers["audio"].parameters())
    assert not first.requires_grad and not second.requires_grad and not third.requires_grad
    # The head of the frozen tower still trains (it is outside the tower).
    assert all(p.grad is not None for p in model.heads["text"].parameters())


def test_cached_features_equal_fresh_features(bert_folder: Path) -> None:
    cached, plain = _model(bert_folder, cache=True), _model(bert_folder, cache=False)
    batch = _batch(cached, CAPTIONS)
    for _ in range(2):  # the second pass is served entirely from the cache
        with torch.no_grad():
            got, want = cached(batch), plain(batch)
        torch.testing.assert_close(got.features["text"], want.features["text"], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(got.embeddings["text"], want.embeddings["text"], rtol=1e-6, atol=1e-6)
    assert cached.feature_cache("text").hits == len(CAPTIONS)


def test_cache_is_not_checkpointed_and_load_clears_it(bert_folder: Path) -> None:
    model = _model(bert_folder, cache=True)
    with torch.no_grad():
        model(_batch(model, CAPTIONS))
    cache = model.feature_cache("text")
    assert len(cache) == 5
    state = model.state_dict()
    assert _model(bert_folder, cache=False).state_dict().keys() == state.keys()
    model.load_state_dict(state)
    assert len(cache) == 0


def test_cache_is_a_bounded_lru() -> None:
    cache = FeatureCache(max_entries=2)
    encode = lambda x: x.float() * 2  # a stand-in frozen "tower": features = 2 * input
    rows = torch.tensor([[1], [2], [3]])
    torch.testing.assert_close(cache.encode(encode, rows), torch.tensor([[2.0], [4.0], [6.0]]))
    assert len(cache) == 2 and (cache.hits, cache.misses) == (0, 3)
    cache.encode(encode, torch.tensor([[3]]))  # still cached: the most recent two are 2 and 3
    cache.encode(encode, torch.tensor([[1]]))  # evicted: recomputed, then 2 (least recent) goes
    assert (cache.hits, cache.misses) == (1, 4)
    cache.encode(encode, torch.tensor([[3], [1]]))
    assert (cache.hits, cache.misses) == (3, 4)
    # Rows differing only in the attention mask of a dict input are different entries.
    ids = {"input_ids": torch.tensor([[5, 6], [5, 6]]), "attention_mask": torch.tensor([[1, 1], [1, 0]])}
    dict_cache = FeatureCache(8)
    dict_cache.encode(lambda x: x["attention_mask"].float(), ids)
    assert len(dict_cache) == 2


def test_cache_needs_a_fully_frozen_tower(bert_folder: Path) -> None:
    with pytest.raises(ValueError, match="cache_features needs a fully frozen tower"):
        TowerSpec(type="hf_text", cache_features=True)
    with pytest.raises(ValueError, match="cache_features needs a fully frozen tower"):
        TowerSpec(type="hf_text", freeze=True, unfreeze=["layer.1"], cache_features=True)
    with pytest.raises(ConfigError, match="cache_features needs a fully frozen tower"):
        structured_from_dict(TowerSpec, {"type": "hf_text", "cache_features": True})
    with pytest.raises(ValueError, match="cache_size must be >= 1"):
        TowerSpec(type="hf_text", freeze=True, cache_features=True, cache_size=0)
    model = _model(bert_folder, cache=False)
    with pytest.raises(ValueError, match="feature cache of 'audio'"):
        MultiModalModel(dict(model.towers), dict(model.heads), {}, feature_cache_sizes={"audio": 8})


def test_models_with_the_same_frozen_tower_can_share_one_cache(bert_folder: Path) -> None:
    first, second = _model(bert_folder, cache=True), _model(bert_folder, cache=True)
    shared = first.feature_cache("text")
    second.share_feature_cache("text", shared)
    assert second.feature_cache("text") is shared
    with torch.no_grad():
        want = first(_batch(first, CAPTIONS)).features["text"]
        got = second(_batch(second, CAPTIONS)).features["text"]  # served from the first model's entries
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert (shared.hits, shared.misses) == (len(CAPTIONS), len(CAPTIONS))
    with pytest.raises(ValueError, match="'audio' has no feature cache"):
        second.share_feature_cache("audio", shared)
