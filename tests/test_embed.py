"""`mmembed embed`: folders (with a corrupt file), tables of texts, shards; npy / parquet; resumption."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_export_support import make_model, tri_modal_tree, write_audio, write_image

from mmembed.cli import main
from mmembed.embed import embed, read_embeddings
from mmembed.embed.store import read_about
from mmembed.export import export_towers


@pytest.fixture(scope="module")
def towers(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    model, config = make_model(tri_modal_tree())
    root = tmp_path_factory.mktemp("towers")
    export_towers(model, config, root, "safetensors")
    export_towers(model, config, root, "onnx", ["text"])
    return model, root


def _mixed_folder(root: Path) -> list[str]:
    (root / "sub").mkdir(parents=True)
    good = ["a.png", "b.jpg", "sub/c.png", "sub/d.webp"]
    for i, name in enumerate(good):
        write_image(root / name, seed=i)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "notes.txt").write_text("ignored: not an image")
    write_audio(root / "clip.wav", seed=0, seconds=0.3)
    return good


def test_mixed_folder_embeds_good_files_and_reports_the_bad_one(towers: tuple, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    model, root = towers
    good = _mixed_folder(tmp_path / "in")
    out = tmp_path / "out"
    assert main(["embed", str(tmp_path / "in"), "--model", str(root), "--modality", "image", "--out", str(out),
                 "--dtype", "float32", "--batch-size", "3"]) == 0
    assert "1 items could not be embedded" in capsys.readouterr().out
    emb, ids = read_embeddings(out)
    assert sorted(ids) == sorted(good) and emb.shape == (4, 32)
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [e["id"] for e in errors] == ["broken.png"] and "unreadable image" in errors[0]["error"]
    pre = model.preprocessors(is_train=False)["image"]
    with torch.no_grad():
        want = model.encode("image", torch.stack([pre(Image.open(tmp_path / "in" / i).convert("RGB"))
                                                  for i in ids]))
    np.testing.assert_allclose(emb, want.numpy(), atol=1e-5, rtol=0)


def test_audio_folder_of_different_lengths(towers: tuple, tmp_path: Path) -> None:
    _, root = towers
    (tmp_path / "in").mkdir()
    for i, seconds in enumerate([0.2, 0.5, 1.3]):
        write_audio(tmp_path / "in" / f"{i}.flac", seed=i, seconds=seconds)
    summary = embed(root, [str(tmp_path / "in")], tmp_path / "out", modality="audio", dtype="float16")
    emb, ids = read_embeddings(tmp_path / "out")
    assert summary.embedded == 3 and ids == ["0.flac", "1.flac", "2.flac"]
    assert np.load(tmp_path / "out" / "embeddings.npy").dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=2e-3)


def test_resume_skips_finished_parts(towers: tuple, tmp_path: Path) -> None:
    _, root = towers
    table = tmp_path / "texts.csv"
    table.write_text("key,caption\n" + "".join(f"k{i},caption number {i}\n" for i in range(7)))
    kwargs = {"modality": "text", "part_size": 2, "text_column": "caption", "id_column": "key"}
    first = embed(root, [str(table)], tmp_path / "out", **kwargs)
    emb, ids = read_embeddings(tmp_path / "out")
    # Simulate a run killed after three of four parts: the last part's record and merged outputs are gone.
    progress = json.loads((tmp_path / "out" / "progress.json").read_text())
    del progress["done"]["part-000003"]
    (tmp_path / "out" / "progress.json").write_text(json.dumps(progress))
    (tmp_path / "out" / "embeddings.npy").unlink()
    again = embed(root, [str(table)], tmp_path / "out", **kwargs)
    assert (first.skipped_parts, again.skipped_parts, again.embedded) == (0, 3, 7)
    emb2, ids2 = read_embeddings(tmp_path / "out")
    assert ids2 == ids == [f"k{i}" for i in range(7)]
    np.testing.assert_array_equal(emb2, emb)
    # What search shows per row stays aligned with the rows across the resumed parts.
    assert read_about(tmp_path / "out") == [{"caption": f"caption number {i}"} for i in range(7)]
    with pytest.raises(ValueError, match="other settings"):
        embed(root, [str(table)], tmp_path / "out", **{**kwargs, "part_size": 3})


def test_jsonl_with_onnx_backend_to_parquet(towers: tuple, tmp_path: Path) -> None:
    model, root = towers
    texts = ["a red circle", "", "a blue square"]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    summary = embed(root, [str(tmp_path / "t.jsonl")], tmp_path / "out", modality="text", fmt="parquet",
                    dtype="float32", backend="onnx")
    assert (summary.embedded, summary.failed) == (2, 1)
    emb, ids = read_embeddings(tmp_path / "out")
    pre = model.preprocessors(is_train=False)["text"]
    with torch.no_grad():
        want = model.encode("text", torch.stack([pre(texts[0]), pre(texts[2])]))
    assert ids == ["0", "2"]
    np.testing.assert_allclose(emb, want.numpy(), atol=1e-4, rtol=0)


def test_shards(towers: tuple, small_demo: Path, tmp_path: Path) -> None:
    _, root = towers
    shards = sorted(str(p) for p in (small_demo / "val").glob("*.tar"))
    summary = embed(root, shards, tmp_path / "out", modality="text", batch_size=32)
    emb, ids = read_embeddings(tmp_path / "out")
    assert summary.embedded == len(ids) == len(set(ids)) == 96 and emb.shape == (96, 32)


def test_errors_name_the_problem(towers: tuple, tmp_path: Path) -> None:
    _, root = towers
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        embed(root, [str(tmp_path / "empty")], tmp_path / "out", modality="image")
    with pytest.raises(ValueError, match="choose one with --modality"):
        embed(root, [str(tmp_path / "empty")], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="inputs not found"):
        embed(root, [str(tmp_path / "nope.tar")], tmp_path / "out", modality="text")
