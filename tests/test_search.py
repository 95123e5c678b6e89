"""Retrieval: the faiss index returns the exact top-k by cosine similarity, and `mmembed search` answers
text -> image and audio -> text queries with exported towers, showing each hit's caption or path, without
faiss's harmless loader messages."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from test_export_support import make_model, tri_modal_tree, write_audio, write_image

from mmembed.cli import main
from mmembed.embed import embed, read_embeddings
from mmembed.embed.search import HarmlessFaissLoaderMessages, VectorIndex, embed_queries, search
from mmembed.export import export_towers

REPO = Path(__file__).resolve().parents[1]

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
    # Each hit shows its sample's caption, read from the shards independently here.
    captions = shard_captions(shards)
    assert all(h.about == {"caption": captions[h.id]} for h in hits)
    lines = printed.splitlines()[1:]
    assert [line.split()[2] for line in lines] == [h.id for h in hits]
    assert all(line.endswith(f'"{captions[h.id]}"') for line, h in zip(lines, hits, strict=True))


def shard_captions(shards: list[str]) -> dict[str, str]:
    captions = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".txt"):
                    captions[member.name[:-4]] = tar.extractfile(member).read().decode().strip()  # type: ignore[union-attr]
    return captions


def test_folder_hits_show_their_paths(towers: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "photos" / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.png", "b.png", "sub/c.png"]):
        write_image(tmp_path / "photos" / name, seed=i)
    embed(towers, [str(tmp_path / "photos")], tmp_path / "emb", modality="image")
    hits = search(tmp_path / "emb", towers, "text", ["a photo"], k=3)[0]
    names = ["a.png", "b.png", "sub/c.png"]
    assert {h.id: h.describe() for h in hits} == {n: str(tmp_path / "photos" / n) for n in names}
    main(["search", str(tmp_path / "emb"), "--model", str(towers), "--modality", "text", "--query", "a photo",
          "-k", "1"])
    assert capsys.readouterr().out.splitlines()[1].endswith(str(tmp_path / "photos" / hits[0].id))


# `mmembed search` (its CLI sets INFO logging), then a real loader failure logged as faiss logs one: the
# filter `mmembed search` installed must let it through.
FAISS_LOADER_CHECK = """
import logging, sys
from mmembed.cli import main
code = main(sys.argv[1:])
logging.getLogger("faiss.loader").info("Could not load library with AVX2 support due to:\\n%r",
                                      ImportError("libgomp.so.1: cannot open shared object file"))
sys.exit(code)
"""


def test_audio_to_text(towers: Path, tmp_path: Path) -> None:
    texts = tmp_path / "captions.csv"
    texts.write_text("text\n" + "".join(f"sound number {i}\n" for i in range(6)))
    embed(towers, [str(texts)], tmp_path / "texts", modality="text")
    write_audio(tmp_path / "q.wav", seed=3, seconds=0.4)
    hits = search(tmp_path / "texts", towers, "audio", [str(tmp_path / "q.wav")], k=10)[0]
    assert len(hits) == 6 and [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # Ids are row numbers of the table; each hit carries that row's text.
    assert all(h.about == {"caption": f"sound number {h.id}"} for h in hits)


def test_search_hides_only_faiss_missing_build_messages(towers: Path, tmp_path: Path) -> None:
    """A fresh process (faiss not yet loaded) with faiss told to try its AVX2 build, which the wheel lacks:
    that message is dropped, while a real loader failure logged the same way afterwards still shows."""
    texts = tmp_path / "captions.csv"
    texts.write_text("text\na red circle\na blue square\n")
    embed(towers, [str(texts)], tmp_path / "texts", modality="text")
    env = {**os.environ, "PYTHONPATH": str(REPO), "FAISS_OPT_LEVEL": "AVX2"}
    done = subprocess.run([sys.executable, "-c", FAISS_LOADER_CHECK, "search", str(tmp_path / "texts"), "--model",
                           str(towers), "--modality", "text", "--query", "a red circle", "-k", "2"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "swigfaiss" not in done.stderr and "Loading faiss" not in done.stderr
    assert "libgomp.so.1: cannot open shared object file" in done.stderr
    assert '"a red circle"' in done.stdout and '"a blue square"' in done.stdout


def test_faiss_loader_filter_keeps_real_errors() -> None:
    keep = HarmlessFaissLoaderMessages().filter

    def record(level: int, message: str) -> logging.LogRecord:
        return logging.LogRecord("faiss.loader", level, __file__, 1, message, None, None)

    missing = ("Could not load library with AVX2 support due to:\n"
               'ModuleNotFoundError("No module named \'faiss.swigfaiss_avx2\'")')
    assert not keep(record(logging.INFO, missing))
    assert not keep(record(logging.INFO, "Loading faiss with AVX512 support."))
    assert keep(record(logging.INFO, missing.replace("ModuleNotFoundError", "ImportError")))
    assert keep(record(logging.INFO, 'Could not load library with AVX2 support due to:\nModuleNotFoundError('
                                     '"No module named \'numpy\'")'))
    assert keep(record(logging.WARNING, missing))
