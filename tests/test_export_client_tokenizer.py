"""Text exports ship their tokenizer (`<modality>_tokenizer.json`, for the `tokenizers` library): a process that can
import only numpy, onnxruntime and tokenizers embeds captions exactly as PyTorch does; open_clip's
SimpleTokenizer rebuilt for the tokenizers library gives its ids; a tokenizer that cannot be written out is
declared with the reason."""

from __future__ import annotations

import html
import importlib.metadata
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import ftfy
import numpy as np
import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer
from test_export_support import TEXT, make_model, model_tree
from test_towers_common import make_tiny_bert
from torch.utils.data import default_collate

from mmembed.export import export_towers
from mmembed.export.client_tokenizer import PROBE_TEXTS, TokenizerCheckError, check_client_tokenizer
from mmembed.towers import TOWERS, list_towers
from mmembed.towers.clip_tokenizer_json import clip_bpe_tokenizer
from mmembed.towers.export_spec import ClientTokenizer

pytest.importorskip("tokenizers")
pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[1]
CLIENT = REPO / "examples" / "onnx_text_client.py"
CAPTIONS = [*PROBE_TEXTS, "A dog, a cat & a bird: 3 friends!", "Ünïcödé — “quotes” ½ ² ™ © ®", "x" * 300,
            "tweet @user #hashtag http://x.co/abc?d=1"]
# The client process gets a path holding these distributions only (and the standard library).
CLIENT_DISTRIBUTIONS = ("numpy", "onnxruntime", "tokenizers")
MUST_NOT_IMPORT = ("torch", "mmembed", "open_clip", "transformers", "ftfy", "regex", "PIL")
ISOLATED_RUNNER = textwrap.dedent("""
    import importlib, runpy, sys
    for name in {blocked!r}:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        raise SystemExit(f"the client process can import {{name}}")
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
""").format(blocked=MUST_NOT_IMPORT)


def client_site(folder: Path) -> Path:
    """A folder of links to the installed files of CLIENT_DISTRIBUTIONS (their packages and bundled libs)."""
    folder.mkdir()
    for dist in CLIENT_DISTRIBUTIONS:
        files = importlib.metadata.distribution(dist).files or []
        for top in {f.parts[0] for f in files if not f.parts[0].endswith((".dist-info", "..")) and len(f.parts) > 1}:
            source = Path(importlib.metadata.distribution(dist).locate_file(top))
            if source.exists() and not (folder / top).exists():
                (folder / top).symlink_to(source)
    return folder


def run_isolated_client(tmp_path: Path, export_dir: Path, modality: str, texts: list[str]) -> np.ndarray:
    site = client_site(tmp_path / "client_site")
    out = tmp_path / "client_embeddings.npy"
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"}
    # -S: no site-packages at all; the only third-party code on the path is in `site`.
    cmd = [sys.executable, "-S", "-c", ISOLATED_RUNNER, str(CLIENT), "--out", str(out), "--modality", modality,
           str(export_dir), "--", *texts]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return np.load(out)


def torch_embeddings(model: torch.nn.Module, modality: str, texts: list[str]) -> np.ndarray:
    pre = model.preprocessors(is_train=False)[modality]
    with torch.no_grad():
        return model.encode(modality, default_collate([pre(t) for t in texts])).numpy()


@pytest.mark.slow
def test_onnx_text_client_without_mmembed_matches_pytorch(tmp_path: Path) -> None:
    model, config = make_model(model_tree({"text": TEXT}, {}, pairs=[]))
    result = export_towers(model, config, tmp_path / "towers", "onnx")[0]
    assert result.tokenizer == tmp_path / "towers" / "text_tokenizer.json"
    meta = json.loads((tmp_path / "towers" / "text.json").read_text())
    assert meta["tokenizer"] == {"file": "text_tokenizer.json", "library": "tokenizers", "inputs": {"text": "ids"}}
    got = run_isolated_client(tmp_path, tmp_path / "towers", "text", CAPTIONS)
    np.testing.assert_allclose(got, torch_embeddings(model, "text", CAPTIONS), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_hf_text_client_without_mmembed_matches_pytorch(tmp_path: Path) -> None:
    tower = {"type": "hf_text", "args": {"path": str(make_tiny_bert(tmp_path / "bert"))}}
    model, config = make_model(model_tree({"text": tower}, {}, pairs=[]))
    export_towers(model, config, tmp_path / "towers", "onnx")
    meta = json.loads((tmp_path / "towers" / "text.json").read_text())
    assert meta["tokenizer"]["inputs"] == {"input_ids": "ids", "attention_mask": "attention_mask"}
    got = run_isolated_client(tmp_path, tmp_path / "towers", "text", CAPTIONS)
    np.testing.assert_allclose(got, torch_embeddings(model, "text", CAPTIONS), rtol=0, atol=1e-5)


def test_isolated_client_cannot_import_the_training_stack(tmp_path: Path) -> None:
    site = client_site(tmp_path / "site")
    probe = "import numpy, onnxruntime, tokenizers\n" + "".join(
        f"try:\n    import {name}\nexcept ImportError:\n    pass\nelse:\n    raise SystemExit('{name}')\n"
        for name in MUST_NOT_IMPORT)
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"}
    done = subprocess.run([sys.executable, "-S", "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr + done.stdout


def _random_texts(count: int, seed: int) -> list[str]:
    """Strings drawn from many scripts, symbols, controls and whitespace."""
    rng = random.Random(seed)
    ranges = [(0x20, 0x7E), (0xA0, 0x17F), (0x370, 0x3FF), (0x400, 0x4FF), (0x3040, 0x30FF), (0x4E00, 0x4E80),
              (0xFF00, 0xFFEF), (0x1F300, 0x1F64F), (0x2000, 0x206F), (0x0, 0x20), (0x80, 0x9F), (0x600, 0x6FF),
              (0xAC00, 0xAC50)]
    return ["".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(rng.randint(1, 30))) for _ in range(count)]


@pytest.mark.parametrize("clean", ["lower", "whitespace", "canonicalize"])
def test_clip_bpe_tokenizer_gives_open_clip_ids(clean: str) -> None:
    reference = SimpleTokenizer(context_length=24, clean=clean)
    tokenizer = clip_bpe_tokenizer(reference, 24)
    # Text that ftfy's mojibake repair or HTML unescaping changes is outside the promise (see clip_tokenizer_json).
    texts = [t for t in [*CAPTIONS, *_random_texts(600, seed=1)]
             if ftfy.fix_text(t, fix_encoding=False) == ftfy.fix_text(t) and html.unescape(t) == t]
    assert len(texts) > 300
    got = [e.ids for e in tokenizer.encode_batch(texts)]
    want = reference(texts).tolist()
    wrong = [t for t, g, w in zip(texts, got, want, strict=True) if g != w]
    assert not wrong, f"{len(wrong)} texts tokenized differently, e.g. {wrong[:3]}"


def test_tokenizer_check_refuses_a_different_tokenizer() -> None:
    model, _ = make_model(model_tree({"text": TEXT}, {}, pairs=[]))
    tower = model.towers["text"]
    good = clip_bpe_tokenizer(tower.tokenizer, tower.context_length)
    check_client_tokenizer(ClientTokenizer(good.to_str(), {"text": "ids"}), tower, "text")
    other = clip_bpe_tokenizer(SimpleTokenizer(context_length=tower.context_length, clean="whitespace"),
                               tower.context_length)
    with pytest.raises(TokenizerCheckError, match="differs"):
        check_client_tokenizer(ClientTokenizer(other.to_str(), {"text": "ids"}), tower, "text")


def test_inexpressible_tokenizer_is_declared_with_its_reason(tmp_path: Path) -> None:
    model, config = make_model(model_tree({"text": TEXT}, {}, pairs=[]))
    model.towers["text"].tokenizer = SimpleTokenizer(context_length=16, reduction_mask="simple")
    result = export_towers(model, config, tmp_path, "safetensors")[0]
    meta = json.loads((tmp_path / "text.json").read_text())
    assert result.tokenizer is None and meta["tokenizer"]["file"] is None
    assert "reduction mask" in meta["tokenizer"]["reason"]
    assert not (tmp_path / "text_tokenizer.json").exists()


@pytest.mark.parametrize("name", list_towers())
def test_every_text_tower_ships_a_tokenizer_or_says_why(name: str) -> None:
    cls = TOWERS.get(name).builder
    if cls.modality == "text":
        assert cls.export_spec.declares_client_tokenizer(), f"{name}: no client_tokenizer in export_spec, no reason"


def test_export_spec_checks_the_tokenizer_declaration() -> None:
    from mmembed.towers.export_spec import ExportSpec, image_inputs

    base = {"inputs": image_inputs, "preprocess": lambda t: {}, "unsupported": {"open_clip": "no slot for it"}}
    with pytest.raises(ValueError, match="unsupported names"):
        ExportSpec(**{**base, "unsupported": {"open_clip": "no slot", "tokeniser": "typo"}})
    with pytest.raises(ValueError, match="without a reason"):
        ExportSpec(**{**base, "unsupported": {"open_clip": "no slot", "tokenizer": " "}})
    assert not ExportSpec(**base).declares_client_tokenizer()
    assert ExportSpec(**{**base, "unsupported": {"open_clip": "x", "tokenizer": "no vocabulary"}}
                      ).declares_client_tokenizer()
