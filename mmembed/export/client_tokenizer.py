"""The tokenizer a per-tower text export ships (`<modality>_tokenizer.json`, read by the `tokenizers` library),
so a client needs no mmembed, torch or open_clip to turn text into the ONNX model's inputs.

Before the file is written it must give exactly the tower's own preprocessing on a set of probe texts
(punctuation, accents, CJK, emoji, curly quotes, odd whitespace, text far over the context length); a
tokenizer that differs is refused, as an ONNX file that differs from PyTorch is.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmembed.towers.export_spec import CLIENT_TOKENIZER, ClientTokenizer, ExportSpec
from mmembed.towers.open_clip_slots import NotExpressibleError

log = logging.getLogger("mmembed.export")

TOKENIZER_SUFFIX = "_tokenizer.json"
PROBE_TEXTS: tuple[str, ...] = (
    "a red circle on the left",
    "Hello, world!!! -- it's a dog's life; (really?) [yes] {no} #1 @home 50% $3.99 a/b c\\d",
    "I'M SURE YOU'RE RIGHT, WE'LL SEE, THEY'D KNOW",
    "Café déjà vu — naïve façade, Straße, İstanbul, ŁÓDŹ",
    "日本語のテキストと中文文本 및 한국어",
    "emoji 🐶🐱 👍🏽 🇫🇷 ❤️",
    "“curly” ‘quotes’ it’s ﬁne ＦＵＬＬ　ｗｉｄｔｈ",
    "  tabs\tand\nnew lines\r\n and\u00a0odd\u2009spaces  ",
    "ΣΟΦΟΣ Ο ΔΡΟΜΟΣ.",
    "numbers 12345 3.14159 1,000,000 2nd 3rd",
    " ".join(["an over-length caption that goes on and on,"] * 80),
    "",
)


class TokenizerCheckError(RuntimeError):
    """The tokenizer written for clients does not reproduce the tower's own preprocessing."""


def _expected(preprocess: Any, text: str, names: list[str]) -> dict[str, list[int]]:
    out = preprocess(text)
    tensors = out if isinstance(out, dict) else {names[0]: out}
    return {name: torch.as_tensor(tensors[name]).reshape(-1).tolist() for name in names}


def check_client_tokenizer(client: ClientTokenizer, tower: nn.Module, modality: str) -> None:
    """Raise TokenizerCheckError unless `client` gives the tower's inputs for every probe text."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(client.json)
    preprocess = tower.preprocessor(is_train=False)
    names = list(client.inputs)
    for text, encoding in zip(PROBE_TEXTS, tokenizer.encode_batch(list(PROBE_TEXTS)), strict=True):
        want = _expected(preprocess, text, names)
        for name, field in client.inputs.items():
            if list(getattr(encoding, field)) != want[name]:
                raise TokenizerCheckError(f"{modality} tokenizer for clients: '{field}' differs from the tower's "
                                          f"'{name}' for {text[:60]!r}")


def write_client_tokenizer(spec: ExportSpec, tower: nn.Module, root: Path, modality: str) -> dict[str, Any] | None:
    """Write `<modality>_tokenizer.json` into `root` and return the export config's `tokenizer` entry; for a
    tower that cannot ship one, the entry holds `file: null` and the reason. None for towers without text."""
    if spec.client_tokenizer is None:
        reason = spec.unsupported.get(CLIENT_TOKENIZER)
        return None if reason is None else {"file": None, "reason": reason}
    try:
        client = spec.client_tokenizer(tower)
    except NotExpressibleError as err:
        reason = str(err)
    except ImportError as err:
        reason = f"{err}; the tokenizers library is needed to write it (pip install 'mmembed[export]')"
    else:
        check_client_tokenizer(client, tower, modality)
        path = root / f"{modality}{TOKENIZER_SUFFIX}"
        path.write_text(client.json, encoding="utf-8")
        return {"file": path.name, "library": "tokenizers", "inputs": dict(client.inputs)}
    log.warning("%s: no tokenizer for clients is shipped: %s", modality, reason)
    return {"file": None, "reason": reason}
