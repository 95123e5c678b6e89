"""Write the tri-modal demo set (images, captions, audio) with held-out colour-shape combinations.

    python -m data_tools.make_demo_data --out data/demo        # ~2400 samples, a few seconds

Layout: OUT/train/train-{000000..}.tar and OUT/val/val-{000000..}.tar (each with sizes.json),
OUT/classnames.txt (the held-out combinations: the zero-shot classes), OUT/classnames_all.txt (all 12) and
OUT/info.json (brace patterns and counts). Members: png, txt, flac, idx; val adds cls and cls_all.
Train never contains a held-out (colour, shape) pair, val contains only those, and every colour and every
shape still occurs in train, so zero-shot accuracy on val measures compositional generalisation.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from data_tools.demo_synth import (
    COLOURS,
    POSITIONS,
    SHAPES,
    Attributes,
    caption,
    encode_flac,
    encode_png,
    render_audio,
    render_image,
)
from data_tools.shard_writer import ShardSet, SizedShardWriter

ALL_COMBOS: tuple[tuple[str, str], ...] = tuple(itertools.product(COLOURS, SHAPES))
# A 2x2 block of (colour, shape): among the held-out classes neither attribute alone identifies the class,
# so zero-shot accuracy on them needs colour AND shape composed. Every colour and shape still occurs in
# train (red and blue with triangles, circles and squares with green and yellow).
HELD_OUT: tuple[tuple[str, str], ...] = (
    ("red", "circle"), ("red", "square"), ("blue", "circle"), ("blue", "square"),
)
TRAIN_COMBOS = tuple(c for c in ALL_COMBOS if c not in HELD_OUT)


def _classname(combo: tuple[str, str]) -> str:
    return f"{combo[0]} {combo[1]}"


def _balanced_attributes(combos: tuple[tuple[str, str], ...], count: int,
                         rng: np.random.Generator) -> list[Attributes]:
    """`count` attribute sets cycling through combos x positions (so classes are balanced), shuffled."""
    cycle = [Attributes(c, s, p) for (c, s), p in itertools.product(combos, POSITIONS)]
    items = [cycle[i % len(cycle)] for i in range(count)]
    return [items[i] for i in rng.permutation(count)]


def _write_split(out_dir: Path, split: str, combos: tuple[tuple[str, str], ...], count: int, *,
                 image_size: int, sample_rate: int, audio_seconds: float, samples_per_shard: int,
                 seed: int, progress: bool) -> ShardSet:
    rng = np.random.default_rng([seed, {"train": 0, "val": 1}[split]])
    labelled = split == "val"
    all_names = [_classname(c) for c in ALL_COMBOS]
    held_names = [_classname(c) for c in HELD_OUT]
    with SizedShardWriter(out_dir / split, split, samples_per_shard=samples_per_shard) as writer:
        attributes = _balanced_attributes(combos, count, rng)
        bar = tqdm(attributes, desc=f"demo {split}", unit="sample", disable=not progress)
        for i, attrs in enumerate(bar):
            members: dict[str, bytes | str] = {
                "png": encode_png(render_image(attrs, image_size, rng)),
                "txt": caption(attrs, rng),
                "flac": encode_flac(render_audio(attrs, sample_rate, audio_seconds, rng), sample_rate),
            }
            if labelled:
                members["cls"] = str(held_names.index(attrs.classname))
                members["cls_all"] = str(all_names.index(attrs.classname))
            writer.write(f"{split}{i:07d}", members)
    return writer.close()


def make_demo_data(out_dir: str | Path, *, train_samples: int = 2000, val_samples: int = 400,
                   image_size: int = 32, sample_rate: int = 16000, audio_seconds: float = 1.0,
                   samples_per_shard: int = 250, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Write the demo set under `out_dir`; returns (and saves as info.json) its patterns, counts and paths."""
    if train_samples < 1 or val_samples < 1:
        raise ValueError(f"need at least one sample per split, got train={train_samples} val={val_samples}")
    out = Path(out_dir)
    common = {"image_size": image_size, "sample_rate": sample_rate, "audio_seconds": audio_seconds,
              "samples_per_shard": samples_per_shard, "seed": seed, "progress": progress}
    splits = {
        "train": _write_split(out, "train", TRAIN_COMBOS, train_samples, **common),
        "val": _write_split(out, "val", HELD_OUT, val_samples, **common),
    }
    (out / "classnames.txt").write_text("".join(_classname(c) + "\n" for c in HELD_OUT))
    (out / "classnames_all.txt").write_text("".join(_classname(c) + "\n" for c in ALL_COMBOS))
    info = {
        "splits": {name: {"urls": s.pattern, "num_samples": s.num_samples, "num_shards": len(s.shards)}
                   for name, s in splits.items()},
        "classnames": str(out / "classnames.txt"),
        "classnames_all": str(out / "classnames_all.txt"),
        "held_out": [_classname(c) for c in HELD_OUT],
        "train_combos": [_classname(c) for c in TRAIN_COMBOS],
        "image_size": image_size, "sample_rate": sample_rate, "audio_seconds": audio_seconds, "seed": seed,
    }
    (out / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    return {**info, "info": str(out / "info.json")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data_tools.make_demo_data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/demo"), help="output directory")
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--val-samples", type=int, default=400)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--audio-seconds", type=float, default=1.0)
    parser.add_argument("--samples-per-shard", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpora", action="store_true",
                        help="also write the demo as separate image-text and audio-text corpora plus a tri-modal "
                             "val set under OUT/corpora (data_tools.make_demo_corpora)")
    args = parser.parse_args(argv)
    info = make_demo_data(args.out, train_samples=args.train_samples, val_samples=args.val_samples,
                          image_size=args.image_size, sample_rate=args.sample_rate,
                          audio_seconds=args.audio_seconds, samples_per_shard=args.samples_per_shard,
                          seed=args.seed, progress=True)
    for name, split in info["splits"].items():
        print(f"{name}: {split['num_samples']} samples in {split['num_shards']} shards: {split['urls']}")
    print(f"zero-shot classes: {info['classnames']}  info: {info['info']}")
    if args.corpora:
        from data_tools.make_demo_corpora import main as write_corpora

        write_corpora(["--out", str(args.out / "corpora"), "--seed", str(args.seed)])


if __name__ == "__main__":
    main()
