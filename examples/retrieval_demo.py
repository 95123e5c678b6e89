"""Text -> image and audio -> text retrieval over the demo data with exported towers and faiss.

    python -m data_tools.make_demo_data --out data/demo
    .venv/bin/mmembed train recipes/demo.yaml train.steps=300 output_dir=runs/demo
    .venv/bin/python examples/retrieval_demo.py runs/demo --data data/demo --work runs/demo/retrieval

Step by step this is the same as:
    mmembed export runs/demo --format onnx --out W/towers
    mmembed embed data/demo/val/val-{000000..000001}.tar --model W/towers --modality image --out W/images
    mmembed embed data/demo/val/val-{000000..000001}.tar --model W/towers --modality text --out W/texts
    mmembed search W/images --model W/towers --modality text --query "a red circle on the left"
"""

from __future__ import annotations

import argparse
import io
import tarfile
from pathlib import Path

from mmembed.checkpoint import load_model
from mmembed.embed import embed
from mmembed.embed.search import search
from mmembed.export import export_towers


def first_audio(shard: Path, out: Path) -> tuple[Path, str]:
    """Write the shard's first audio clip to `out` and return it with its caption (the expected answer)."""
    with tarfile.open(shard) as tar:
        members = {m.name: m for m in tar.getmembers()}
        name = next(n for n in sorted(members) if n.endswith(".flac"))
        key = name.rsplit(".", 1)[0]
        out.write_bytes(tar.extractfile(members[name]).read())  # type: ignore[union-attr]
        caption = io.TextIOWrapper(tar.extractfile(members[f"{key}.txt"])).read()  # type: ignore[arg-type]
    return out, caption.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="demo run dir (or checkpoint / model dir)")
    parser.add_argument("--data", default="data/demo")
    parser.add_argument("--work", default="runs/demo/retrieval")
    parser.add_argument("-k", type=int, default=5)
    args = parser.parse_args()
    work = Path(args.work)
    model, config = load_model(args.checkpoint)
    export_towers(model, config, work / "towers", "onnx")
    shards = sorted(str(p) for p in (Path(args.data) / "val").glob("*.tar"))
    embed(work / "towers", shards, work / "images", modality="image")
    embed(work / "towers", shards, work / "texts", modality="text")

    queries = ["a red circle on the left", "a blue square on the right"]
    for query, hits in zip(queries, search(work / "images", work / "towers", "text", queries, args.k),
                           strict=True):
        print(f"text -> image: {query!r}")
        for hit in hits:
            print(f"   {hit.score:+.3f}  {hit.id}  {hit.describe()}")

    clip, caption = first_audio(Path(shards[0]), work / "query.flac")
    print(f"audio -> text: {clip} (its own caption: {caption!r})")
    for hit in search(work / "texts", work / "towers", "audio", [str(clip)], args.k)[0]:
        print(f"   {hit.score:+.3f}  {hit.id}  {hit.describe()}")


if __name__ == "__main__":
    main()
