"""`byte_text`: its byte tokenizer, padding that cannot leak into features, a spelling-sensitive encoder that
learns, an ONNX graph matching PyTorch, and a clear refusal from the exporter (no export entry yet).
The registry-wide contract (forward/backward, checkpointing, freezing, pickling) is in tests/test_towers.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_towers_common import TINY_BYTE_TEXT

from mmembed.towers import TOWERS
from mmembed.towers.byte_text import BOS_ID, BYTE_OFFSET, PAD_ID, ByteTextConfig, ByteTextTower, ByteTokenize


def _tower(**overrides: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return TOWERS.build("byte_text", {**TINY_BYTE_TEXT, **overrides}).eval()


def _batch(texts: list[str], context_length: int = 24) -> torch.Tensor:
    tokenize = ByteTokenize(context_length)
    return torch.stack([tokenize(t) for t in texts])


def test_tokenizer_bos_bytes_padding_truncation_and_case() -> None:
    ids = ByteTokenize(8)("Ab é")
    # BOS, then UTF-8 bytes of the lower-cased text shifted by 2 ("é" is two bytes), then padding.
    want = [BOS_ID, *[b + BYTE_OFFSET for b in "ab é".encode()], PAD_ID, PAD_ID]
    assert ids.tolist() == want and ids.dtype == torch.long
    assert ByteTokenize(8, lowercase=False)("A")[1] == ord("A") + BYTE_OFFSET
    assert ByteTokenize(4)("garden").tolist() == [BOS_ID, *[b + BYTE_OFFSET for b in b"gar"]]
    assert ByteTokenize(4)("").tolist() == [BOS_ID, PAD_ID, PAD_ID, PAD_ID]
    with pytest.raises(TypeError, match="expects a str"):
        ByteTokenize(8)(b"bytes")


@pytest.mark.parametrize("pooling", ["mean", "bos"])
def test_padding_and_batch_neighbours_do_not_change_a_rows_features(pooling: str) -> None:
    tower = _tower(pooling=pooling)
    with torch.no_grad():
        alone = tower.encode(_batch(["garden"], 24))
        short_context = tower.encode(_batch(["garden"], 9))  # the same tokens with less padding
        in_batch = tower.encode(_batch(["a much longer caption here", "garden", ""], 24))
    torch.testing.assert_close(short_context, alone)
    torch.testing.assert_close(in_batch[1:2], alone)
    assert torch.isfinite(in_batch).all()  # the empty text still has its BOS


def test_features_depend_on_spelling_and_pooling() -> None:
    tower = _tower()
    with torch.no_grad():
        a, b, c = tower.encode(_batch(["garden", "gardem", "Garden"]))
    assert not torch.allclose(a, b, atol=1e-4)  # one letter differs
    torch.testing.assert_close(a, c)  # lower-cased by default
    with torch.no_grad():
        bos = _tower(pooling="bos").encode(_batch(["garden"]))
    assert not torch.allclose(a, bos[0], atol=1e-4)


def test_learns_to_tell_apart_words_that_share_letters() -> None:
    """Anagrams share every byte: only an encoder that uses positions can separate them."""
    words = ["stop", "pots", "tops", "spot", "post", "opts"]
    tower = _tower().train()
    head = torch.nn.Linear(tower.output_dim, len(words))
    optim = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=3e-3)
    inputs, labels = _batch(words), torch.arange(len(words))
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(head(tower.encode(inputs)), labels)
        optim.zero_grad()
        loss.backward()
        optim.step()
    tower.eval()
    with torch.no_grad():
        assert (head(tower.encode(inputs)).argmax(1) == labels).all(), float(loss)


@pytest.mark.parametrize(("args", "match"), [
    ({"context_length": 1}, "context_length must be >= 2"),
    ({"width": 30, "heads": 4}, "width divisible by heads"),
    ({"pooling": "max"}, "unknown pooling 'max'"),
])
def test_invalid_configs_name_the_problem(args: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ByteTextConfig(**args)


def test_encode_rejects_wrong_inputs() -> None:
    tower = _tower()
    with pytest.raises(ValueError, match="integer token ids"):
        tower.encode(torch.randn(2, 8))
    with pytest.raises(ValueError, match="exceed context_length 24"):
        tower.encode(torch.ones(2, 25, dtype=torch.long))


def test_graph_exports_to_onnx_and_matches_pytorch(tmp_path: Path) -> None:
    """What a future export entry relies on: the encoder (masking included) is ONNX-expressible."""
    import onnxruntime as ort

    tower = _tower()
    path = tmp_path / "byte_text.onnx"
    example = _batch(["garden", "a longer caption"])
    batch = torch.export.Dim("batch")
    torch.onnx.export(tower, (example,), str(path), input_names=["text"], output_names=["features"],
                      dynamo=True, dynamic_shapes=({0: batch},), verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for texts in (["x"], ["river", "", "someone saying river.", "ÉTÉ"]):
        ids = _batch(texts)
        got = session.run(None, {"text": ids.numpy()})[0]
        with torch.no_grad():
            want = tower.encode(ids).numpy()
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


BYTE_STRINGS = ["garden", "", "Someone saying RIVER.", "ÉTÉ à Paris", "ΟΔΥΣΣΕΥΣ ΣΑΣ", "naïve café — “quotes”",
                "emoji 🙂 and CJK 漢字", "tab\tand\nnewline", "x" * 40]


def test_client_tokenizer_gives_the_towers_ids() -> None:
    """The tokenizer.json a text export ships gives the same ids as the tower's preprocessor (BOS, bytes + 2,
    lower case as Python's str.lower, truncation, padding), for multi-byte, Greek final-sigma and long text."""
    from tokenizers import Tokenizer

    tower = _tower()
    shipped = Tokenizer.from_str(ByteTextTower.export_spec.client_tokenizer(tower).json)
    pre = tower.preprocessor(is_train=False)
    for text, encoding in zip(BYTE_STRINGS, shipped.encode_batch(BYTE_STRINGS), strict=True):
        assert encoding.ids == pre(text).tolist(), text


@pytest.mark.slow
def test_onnx_byte_text_client_without_mmembed_matches_pytorch(tmp_path: Path) -> None:
    from test_export_client_tokenizer import run_isolated_client, torch_embeddings
    from test_export_support import make_model, model_tree

    from mmembed.export import export_towers

    tree = model_tree({"text": {"type": "byte_text", "args": dict(TINY_BYTE_TEXT)}}, {}, pairs=[])
    model, config = make_model(tree)
    export_towers(model, config, tmp_path / "towers", "onnx")
    got = run_isolated_client(tmp_path, tmp_path / "towers", "text", BYTE_STRINGS[1:])
    np.testing.assert_allclose(got, torch_embeddings(model, "text", BYTE_STRINGS[1:]), rtol=0, atol=1e-5)
