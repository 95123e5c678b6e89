"""Write the demo as separate corpora, the way real tri-modal data comes: image-text shards and audio-text
shards from disjoint samples, plus a small tri-modal validation set that measures binding.

    python -m data_tools.make_demo_corpora --out data/demo/corpora      # ~2300 samples, a few seconds

Layout under OUT:
- `image_text/train-*.tar`: png, txt, idx (no audio member at all);
- `audio_text/train-*.tar`: flac, txt, idx (no image member at all);
- `trimodal_val/val-*.tar`: png, txt, flac, idx, `cls_all` (index in classnames_all.txt) and `cls_scene`
  (index in scenes.txt: colour, shape and column, which all three members show: fill / pitch, outline /
  timbre, horizontal place / onset);
- `classnames_all.txt`, `scenes.txt`, `corpora.json` (patterns and counts).

No sample is shared between the corpora: every image-text sample and every audio-text sample is its own
draw, so a model trained on the two corpora never sees an (image, audio) pair. Both corpora use the demo's
training combinations (the `scatter` split of data_tools/demo_splits.py), one object per sample. The
validation samples are fresh draws of those combinations: binding is measured on concepts both corpora
teach, in renderings neither saw.

Only two functions below touch the demo generator (`attribute_sets` and `render_members`), so a new
generator needs only those two adapted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_tools.demo_captions import caption
from data_tools.demo_splits import ALL_COMBOS, SPLITS
from data_tools.demo_synth import COLUMNS, Attributes, encode_flac, encode_png, render_audio, render_image
from data_tools.make_demo_data import balanced_attributes
from data_tools.shard_writer import ShardSet, SizedShardWriter
from data_tools.tool_args import add_shard_output, tool_parser

CORPORA = {"image_text": ("image", "text"), "audio_text": ("audio", "text")}
TRAIN_COMBOS = SPLITS["scatter"].train_combos
VAL = "trimodal_val"


# -- the generator interface ----------------------------------------------------------------------------
def attribute_sets(count: int, rng: np.random.Generator) -> list[Attributes]:
    """`count` attribute sets of the generator's training combinations, balanced over them, shuffled."""
    return balanced_attributes(TRAIN_COMBOS, count, rng)


def render_members(attrs: Attributes, modalities: Sequence[str], rng: np.random.Generator, *, image_size: int,
                   sample_rate: int, audio_seconds: float) -> dict[str, bytes | str]:
    """The members (png / txt / flac) of one sample with these attributes, only for `modalities`."""
    members: dict[str, bytes | str] = {}
    if "image" in modalities:
        members["png"] = encode_png(render_image((attrs,), image_size, rng))
    if "text" in modalities:
        members["txt"] = caption((attrs,), rng)
    if "audio" in modalities:
        members["flac"] = encode_flac(render_audio((attrs,), sample_rate, audio_seconds, rng), sample_rate)
    return members


# -- the corpora -----------------------------------------------------------------------------------------
def class_names() -> list[str]:
    return [f"{colour} {shape}" for colour, shape in ALL_COMBOS]


def scene_names() -> list[str]:
    return [f"{colour} {shape} on the {column}" for colour, shape in ALL_COMBOS for column in COLUMNS]


def _write(folder: Path, prefix: str, modalities: Sequence[str], count: int, rng: np.random.Generator,
           samples_per_shard: int, render: dict[str, Any],
           labelled: bool) -> tuple[ShardSet, dict[str, list[int]] | None]:
    """One set's shards; for a labelled set also how many samples carry each label (for chance levels)."""
    classes, scenes = class_names(), scene_names()
    counts = {"cls_all": [0] * len(classes), "cls_scene": [0] * len(scenes)}
    with SizedShardWriter(folder, prefix, samples_per_shard=samples_per_shard) as writer:
        for i, attrs in enumerate(attribute_sets(count, rng)):
            members = render_members(attrs, modalities, rng, **render)
            if labelled:
                members["cls_all"] = str(classes.index(attrs.classname))
                members["cls_scene"] = str(scenes.index(f"{attrs.classname} on the {attrs.column}"))
                for key in counts:
                    counts[key][int(members[key])] += 1
            writer.write(f"{prefix}{i:07d}", members)
    shards = writer.close()
    return shards, (counts if labelled else None)


def make_demo_corpora(out_dir: str | Path, *, corpus_samples: int = 1000, val_samples: int = 320,
                      image_size: int = 32, sample_rate: int = 16000, audio_seconds: float = 1.0,
                      samples_per_shard: int = 125, seed: int = 0) -> dict[str, Any]:
    """Write both corpora and the tri-modal validation set under `out_dir`; returns (and saves) their info."""
    if corpus_samples < 1 or val_samples < 1:
        raise ValueError(f"need at least one sample per set, got {corpus_samples} and {val_samples}")
    out = Path(out_dir)
    render = {"image_size": image_size, "sample_rate": sample_rate, "audio_seconds": audio_seconds}
    sets: dict[str, ShardSet] = {}
    for number, (name, modalities) in enumerate(CORPORA.items()):
        rng = np.random.default_rng([seed, 100 + number])  # its own draws: no sample is in two corpora
        sets[name], _ = _write(out / name, "train", modalities, corpus_samples, rng, samples_per_shard, render, False)
    sets[VAL], label_counts = _write(out / VAL, "val", ("image", "text", "audio"), val_samples,
                                     np.random.default_rng([seed, 199]), samples_per_shard, render, True)
    (out / "classnames_all.txt").write_text("".join(name + "\n" for name in class_names()))
    (out / "scenes.txt").write_text("".join(name + "\n" for name in scene_names()))
    info = {
        "sets": {name: {"urls": s.pattern, "num_samples": s.num_samples, "num_shards": len(s.shards),
                        "modalities": list(CORPORA.get(name, ("image", "text", "audio")))}
                 for name, s in sets.items()},
        "classnames_all": str(out / "classnames_all.txt"), "scenes": str(out / "scenes.txt"),
        "val_label_counts": label_counts,
        "image_size": image_size, "sample_rate": sample_rate, "audio_seconds": audio_seconds, "seed": seed,
    }
    (out / "corpora.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv: list[str] | None = None) -> None:
    parser = tool_parser("make_demo_corpora", __doc__)
    add_shard_output(parser, default_out=Path("data/demo/corpora"), samples_per_shard=125)
    parser.add_argument("--corpus-samples", type=int, default=1000, help="samples per training corpus")
    parser.add_argument("--val-samples", type=int, default=320)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    info = make_demo_corpora(args.out, corpus_samples=args.corpus_samples, val_samples=args.val_samples,
                             samples_per_shard=args.samples_per_shard, seed=args.seed)
    for name, entry in info["sets"].items():
        print(f"{name} [{', '.join(entry['modalities'])}]: {entry['num_samples']} samples in "
              f"{entry['num_shards']} shards: {entry['urls']}")


if __name__ == "__main__":
    main()
