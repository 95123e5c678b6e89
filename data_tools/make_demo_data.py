"""Write the tri-modal demo set (images, captions, audio) with held-out colour-shape combinations.

    python -m data_tools.make_demo_data --out data/demo                       # scatter split, ~10 s
    python -m data_tools.make_demo_data --out data/demo_block --split block   # the harder block split
    python -m data_tools.make_demo_data --out data/demo_noisy --caption-noise 0.2   # 20 % wrong captions
    python -m data_tools.make_demo_data --out data/demo_two --two-objects 0.5       # two-object scenes

Layout: OUT/train/train-{000000..}.tar and OUT/val/val-{000000..}.tar (each with sizes.json),
OUT/classnames.txt (the held-out combinations: the zero-shot classes), OUT/classnames_all.txt (all 30) and
OUT/info.json (split, brace patterns, counts, noisy samples). Members: png, txt, flac, idx; val adds cls
(index into classnames.txt) and cls_all (index into classnames_all.txt).

Train never contains a held-out (colour, shape) pair and val contains only those (data_tools/demo_splits.py
describes the two splits), so zero-shot accuracy on val measures compositional generalisation. Attributes
are balanced: each combination gets an equal share of samples, cycling through sizes and grid cells.

`--two-objects f` gives a fraction f of the training images a second object (two grid cells away, from the
training combinations; the caption names both). Validation images always hold one object.

`--caption-noise p` replaces the captions of round(p * train) training samples, chosen at random, by the
caption of another random training sample (which may by chance describe the same combination; info.json
counts those that do not). Noise is a fixed property of the written set, as with noisy web captions, and
is drawn from its own random stream: a noisy set holds exactly the images, audio and other captions of the
clean set of the same seed. Validation is never noisy.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_tools.demo_captions import caption
from data_tools.demo_splits import ALL_COMBOS, SPLITS, Combo, Split, classname
from data_tools.demo_synth import (
    COLUMNS,
    POSITIONS,
    ROWS,
    SIZES,
    Attributes,
    encode_flac,
    encode_png,
    render_audio,
    render_image,
)
from data_tools.shard_writer import ShardSet, SizedShardWriter
from data_tools.tool_args import add_shard_output, tool_parser
from mmembed.progress import progress_iter

# Random streams of one split, each from (seed, split, stream): changing one choice never moves another.
_STREAMS = {"attributes": 0, "captions": 1, "render": 2, "noise": 3}
_SPLIT_IDS = {"train": 0, "val": 1}


def _rng(seed: int, split: str, stream: str) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_IDS[split], _STREAMS[stream]])


@dataclass(frozen=True)
class RenderSettings:
    image_size: int = 32
    sample_rate: int = 16000
    audio_seconds: float = 1.0


def balanced_attributes(combos: Sequence[Combo], count: int, rng: np.random.Generator) -> list[Attributes]:
    """`count` attribute sets: combinations as equal as possible, each cycling through sizes x cells in
    its own shuffled order; the whole list shuffled."""
    cells = [(size, row, column) for size in SIZES for row, column in POSITIONS]
    items = []
    for c, (colour, shape) in enumerate(combos):
        share = count // len(combos) + (1 if c < count % len(combos) else 0)
        order = [cells[i] for i in rng.permutation(len(cells))]
        items += [Attributes(colour, shape, *order[i % len(order)]) for i in range(share)]
    return [items[i] for i in rng.permutation(len(items))]


Scene = tuple[Attributes, ...]


def _second_object(first: Attributes, combos: Sequence[Combo], rng: np.random.Generator) -> Attributes | None:
    """A random object of `combos` two grid cells away from `first` along a row or column (so the two never
    overlap), or None when `first` sits in the centre cell."""
    far = [(r, c) for r, c in POSITIONS if abs(ROWS.index(r) - ROWS.index(first.row)) == 2
           or abs(COLUMNS.index(c) - COLUMNS.index(first.column)) == 2]
    if not far:
        return None
    colour, shape = combos[int(rng.integers(len(combos)))]
    row, column = far[int(rng.integers(len(far)))]
    return Attributes(colour, shape, SIZES[int(rng.integers(len(SIZES)))], row, column)


def compose_scenes(firsts: list[Attributes], combos: Sequence[Combo], two_objects: float,
                   rng: np.random.Generator) -> list[Scene]:
    """Each first object alone, or with probability `two_objects` joined by a second object of `combos`.

    A second object puts two colours and two shapes in one image, so within an image colour no longer
    predicts shape; every object is still one of `combos` (a held-out combination never appears)."""
    if not 0.0 <= two_objects <= 1.0:
        raise ValueError(f"two_objects must be a fraction in [0, 1], got {two_objects}")
    scenes: list[Scene] = []
    for first in firsts:
        second = _second_object(first, combos, rng) if rng.random() < two_objects else None
        scenes.append((first,) if second is None else (first, second))
    return scenes


def swap_captions(captions: list[str], fraction: float, rng: np.random.Generator) -> dict[int, int]:
    """Replace round(fraction * n) captions, in place, by another random sample's original caption.

    Returns {noisy sample: donor sample}."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"caption noise must be in [0, 1), got {fraction}")
    n = len(captions)
    noisy = rng.permutation(n)[: round(fraction * n)] if n > 1 else []
    original = list(captions)
    donors = {}
    for i in sorted(int(i) for i in noisy):
        donor = int(rng.integers(n - 1))
        donors[i] = donor + (donor >= i)  # any sample but i itself
        captions[i] = original[donors[i]]
    return donors


def _labels(scene: Scene, split: Split) -> dict[str, str]:
    if len(scene) != 1:
        raise ValueError("labelled (validation) samples hold exactly one object")
    attrs = scene[0]
    held = [classname(c) for c in split.held_out]
    every = [classname(c) for c in ALL_COMBOS]
    return {"cls": str(held.index(attrs.classname)), "cls_all": str(every.index(attrs.classname))}


def sample_members(scene: Scene, caption_text: str, *, render: RenderSettings, rng: np.random.Generator,
                   labels: Split | None = None) -> dict[str, bytes | str]:
    """One demo sample's shard members: png (the scene drawn), txt (its caption), flac (the scene as sound),
    plus cls / cls_all (the held-out and all-combination class indices) when `labels` names the split."""
    members: dict[str, bytes | str] = {
        "png": encode_png(render_image(scene, render.image_size, rng)),
        "txt": caption_text,
        "flac": encode_flac(render_audio(scene, render.sample_rate, render.audio_seconds, rng), render.sample_rate),
    }
    if labels is not None:
        members.update(_labels(scene, labels))
    return members


def write_samples(out_dir: Path, prefix: str, scenes: list[Scene], captions: list[str], *,
                  render: RenderSettings, rng: np.random.Generator, samples_per_shard: int,
                  labels: Split | None = None, progress: bool = False) -> ShardSet:
    """Render and write one shard set: png + txt + flac (+ cls / cls_all when `labels` names the split)."""
    with SizedShardWriter(out_dir / prefix, prefix, samples_per_shard=samples_per_shard) as writer:
        shown = progress_iter(scenes, total=len(scenes), desc=f"demo {prefix}", unit="sample", disable=not progress)
        for i, scene in enumerate(shown):
            writer.write(f"{prefix}{i:07d}", sample_members(scene, captions[i], render=render, rng=rng, labels=labels))
    return writer.close()


def _make_split(out: Path, name: str, split: Split, count: int, *, render: RenderSettings, seed: int,
                caption_noise: float, two_objects: float, samples_per_shard: int,
                progress: bool) -> tuple[ShardSet, dict[str, Any]]:
    combos = split.train_combos if name == "train" else split.held_out
    attribute_rng = _rng(seed, name, "attributes")
    scenes = compose_scenes(balanced_attributes(combos, count, attribute_rng), combos, two_objects, attribute_rng)
    caption_rng = _rng(seed, name, "captions")
    captions = [caption(scene, caption_rng) for scene in scenes]
    donors = swap_captions(captions, caption_noise, _rng(seed, name, "noise")) if caption_noise else {}
    shards = write_samples(out, name, scenes, captions, render=render, rng=_rng(seed, name, "render"),
                           samples_per_shard=samples_per_shard, labels=split if name == "val" else None,
                           progress=progress)
    stats = {"noisy_idx": sorted(donors), "two_objects": sum(len(scene) == 2 for scene in scenes),
             "noisy_other_combo": sum({a.combo for a in scenes[i]} != {a.combo for a in scenes[d]}
                                      for i, d in donors.items())}
    return shards, stats


def make_demo_data(out_dir: str | Path, *, split: str = "scatter", train_samples: int = 2400,
                   val_samples: int = 480, image_size: int = 32, sample_rate: int = 16000,
                   audio_seconds: float = 1.0, samples_per_shard: int = 300, caption_noise: float = 0.0,
                   two_objects: float = 0.0, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Write the demo set under `out_dir`; returns (and saves as info.json) its patterns, counts and paths."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if train_samples < 1 or val_samples < 1:
        raise ValueError(f"need at least one sample per split, got train={train_samples} val={val_samples}")
    out, chosen = Path(out_dir), SPLITS[split]
    common = {"render": RenderSettings(image_size, sample_rate, audio_seconds), "seed": seed,
              "samples_per_shard": samples_per_shard, "progress": progress}
    train, noise = _make_split(out, "train", chosen, train_samples, caption_noise=caption_noise,
                               two_objects=two_objects, **common)
    # Validation: one object per image, so each sample has one (colour, shape) class.
    val, _ = _make_split(out, "val", chosen, val_samples, caption_noise=0.0, two_objects=0.0, **common)
    (out / "classnames.txt").write_text("".join(classname(c) + "\n" for c in chosen.held_out))
    (out / "classnames_all.txt").write_text("".join(classname(c) + "\n" for c in ALL_COMBOS))
    info = {
        "split": split, "about": chosen.about,
        "splits": {name: {"urls": s.pattern, "num_samples": s.num_samples, "num_shards": len(s.shards)}
                   for name, s in (("train", train), ("val", val))},
        "classnames": str(out / "classnames.txt"),
        "classnames_all": str(out / "classnames_all.txt"),
        "held_out": [classname(c) for c in chosen.held_out],
        "train_combos": [classname(c) for c in chosen.train_combos],
        "two_objects": two_objects, "two_object_train_samples": noise["two_objects"],
        "caption_noise": caption_noise, "noisy_train_samples": len(noise["noisy_idx"]),
        "noisy_train_samples_other_combo": noise["noisy_other_combo"], "noisy_train_idx": noise["noisy_idx"],
        "image_size": image_size, "sample_rate": sample_rate, "audio_seconds": audio_seconds, "seed": seed,
    }
    (out / "info.json").write_text(json.dumps(info, indent=1) + "\n")
    return {**info, "info": str(out / "info.json")}


def main(argv: list[str] | None = None) -> None:
    parser = tool_parser("make_demo_data", __doc__)
    add_shard_output(parser, default_out=Path("data/demo"), samples_per_shard=300)
    parser.add_argument("--split", choices=sorted(SPLITS), default="scatter")
    parser.add_argument("--train-samples", type=int, default=2400)
    parser.add_argument("--val-samples", type=int, default=480)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--audio-seconds", type=float, default=1.0)
    parser.add_argument("--caption-noise", type=float, default=0.0,
                        help="fraction of training captions replaced by another sample's")
    parser.add_argument("--two-objects", type=float, default=0.0,
                        help="fraction of training images that get a second object")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpora", action="store_true",
                        help="also write the demo as separate image-text and audio-text corpora plus a tri-modal "
                             "val set under OUT/corpora (data_tools.make_demo_corpora)")
    args = parser.parse_args(argv)
    info = make_demo_data(args.out, split=args.split, train_samples=args.train_samples,
                          val_samples=args.val_samples, image_size=args.image_size, sample_rate=args.sample_rate,
                          audio_seconds=args.audio_seconds, samples_per_shard=args.samples_per_shard,
                          caption_noise=args.caption_noise, two_objects=args.two_objects, seed=args.seed,
                          progress=True)
    for name, split in info["splits"].items():
        print(f"{name}: {split['num_samples']} samples in {split['num_shards']} shards: {split['urls']}")
    print(f"held out ({info['split']}): {', '.join(info['held_out'])}")
    if info["caption_noise"]:
        print(f"caption noise: {info['noisy_train_samples']} training captions replaced "
              f"({info['noisy_train_samples_other_combo']} now name another colour-shape combination)")
    print(f"zero-shot classes: {info['classnames']}  info: {info['info']}")
    if args.corpora:
        from data_tools.make_demo_corpora import main as write_corpora

        write_corpora(["--out", str(args.out / "corpora"), "--seed", str(args.seed)])


if __name__ == "__main__":
    main()
