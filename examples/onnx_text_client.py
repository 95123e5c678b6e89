"""Embed texts with an mmembed ONNX text export using only numpy, onnxruntime and tokenizers: no mmembed, torch
or open_clip. The export folder holds `text.json`, `text.onnx` and the tokenizer `text_tokenizer.json`.

    mmembed export runs/demo --format onnx --out exported/towers
    python examples/onnx_text_client.py exported/towers "a red circle on the left" "a blue square" --out emb.npy
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def embed_texts(export_dir: str | Path, texts: list[str], modality: str = "text") -> np.ndarray:
    """Unit embeddings [len(texts), embed_dim] (float32) of `texts`."""
    root = Path(export_dir)
    meta = json.loads((root / f"{modality}.json").read_text())
    tokenizer = Tokenizer.from_file(str(root / meta["tokenizer"]["file"]))  # pads and truncates by itself
    session = ort.InferenceSession(str(root / meta["files"]["onnx"]), providers=["CPUExecutionProvider"])
    encodings = tokenizer.encode_batch(texts)
    # Each model input ("text", or "input_ids" + "attention_mask") comes from one field of the encodings.
    feed = {name: np.array([getattr(e, field) for e in encodings], dtype=np.int64)
            for name, field in meta["tokenizer"]["inputs"].items()}
    return session.run(None, feed)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dir")
    parser.add_argument("texts", nargs="+")
    parser.add_argument("--modality", default="text")
    parser.add_argument("--out", help="save the embeddings as .npy (default: print cosine similarities)")
    args = parser.parse_args()
    embeddings = embed_texts(args.export_dir, args.texts, args.modality)
    if args.out:
        np.save(args.out, embeddings)
    else:
        print(np.round(embeddings @ embeddings.T, 3))


if __name__ == "__main__":
    main()
