"""Retrieval: the faiss index returns the exact top-k by cosine similarity, and `mmembed search` answers
text -> image and audio -> text queries with exported towers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_export_support import make_model, tri_modal_tree, write_audio

from mmembed.cli import main
from mmembed.embed import embed, read_embeddings
from mmembed.embed.search import VectorIndex, embed_queries, search
from mmembed.export import export_towers

pytest.importorskip("faiss")


def test_index_is_exact_top_k() -> None:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((50, 16)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    queries = base[[3, 17]] + 0.05 * rng.standard_normal((2, 16)).astype(np.float32)
    hits = VectorIndex.build(base, [f"id{i}" for i in range(50)]).search(queries, k=4)
    for query, row in zip(queries, hits, strict=True):
        scores = base @ query
        order = np.argsort(-scores)[:4]
        assert [h.id for h in row] == [f"id{i}" for i in order]
        np.testing.assert_allclose([h.score for h in row], scores[order], rtol=1e-5)
    assert hits[0][0].id == "id3" and hits[1][0].id == "id17"


@pytest.fixture(scope="module")
def towers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, config = make_model(tri_modal_tree())
    root = tmp_path_factory.mktemp("towers")
    export_towers(model, config, root, "safetensors")
    return root


def test_text_to_image_over_demo_shards(towers: Path, small_demo: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    shards = sorted(str(p) for p in (small_demo / "val").glob("*.tar"))
    embed(towers, shards, tmp_path / "images", modality="image", dtype="float32")
    query = "a red circle on the left"
    hits = search(tmp_path / "images", towers, "text", [query], k=3)[0]
    emb, ids = read_embeddings(tmp_path / "images")
    scores = emb @ embed_queries(towers, "text", [query])[0]
    assert [h.id for h in hits] == [ids[i] for i in np.argsort(-scores)[:3]]
    assert (tmp_path / "images" / "index.faiss").is_file()
    assert main(["search", str(tmp_path / "images"), "--model", str(towers), "--modality", "text",
                 "--query", query, "-k", "3"]) == 0
    printed = capsys.readouterr().out
    assert f"query: {query}" in printed and all(h.id in printed for h in hits)


def test_audio_to_text(towers: Path, tmp_path: Path) -> None:
    texts = tmp_path / "captions.csv"
    texts.write_text("text\n" + "".join(f"sound number {i}\n" for i in range(6)))
    embed(towers, [str(texts)], tmp_path / "texts", modality="text")
    write_audio(tmp_path / "q.wav", seed=3, seconds=0.4)
    hits = search(tmp_path / "texts", towers, "audio", [str(tmp_path / "q.wav")], k=10)[0]
    assert len(hits) == 6 and [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
