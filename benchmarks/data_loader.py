"""Data-loader throughput per worker: mmembed's WebDataset pipeline vs open_clip_train's, same shard, same
transforms, same machine, one run.

    .venv/bin/python benchmarks/data_loader.py                # 512 JPEGs of 256 px -> 224 random crops

Both pipelines run with one DataLoader worker process (as in training), so samples/s is the throughput of
one loader worker: read the tar, shuffle, decode the JPEG, run open_clip's training image transform
(RandomResizedCrop 224, normalise) and tokenize the caption, then batch. The transform and tokenizer
objects are the same for both. The first batch (start-up, shuffle-buffer fill) is excluded; the rest are
timed, best of --repeats.

open_clip 3.3's `group_by_keys_nothrow` raises KeyError('fname') on webdataset 1.0's end-of-shard marker
(the empty dict its tar expander yields after each shard; docs/design.md, "Batches and the data pipeline"),
which its shuffle buffer reaches even with one shard. To measure its pipeline at all, the benchmark gives it
the one-line fix open_clip would need (drop entries without "fname" before grouping); everything else is
open_clip's code.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from argparse import Namespace
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import open_clip
import webdataset as wds
from PIL import Image

from mmembed.config.data import DataConfig, ShardSource
from mmembed.data import build_train_loader


def write_shard(path: Path, samples: int, size: int) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8)
    with wds.TarWriter(str(path)) as sink:
        for i in range(samples):
            # Smooth images with noise: closer to photos' JPEG decode cost than pure noise.
            image = Image.fromarray(np.roll(base, i, axis=0)).resize((size, size), Image.BILINEAR)
            pixels = np.asarray(image).astype(np.int16) + rng.integers(-12, 12, (size, size, 3))
            buf = io.BytesIO()
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
            sink.write({"__key__": f"{i:06d}", "jpg": buf.getvalue(), "txt": f"a photo of thing {i}"})


def timed(batches: Iterable, batch_count: int, batch_size: int) -> float:
    iterator = iter(batches)
    next(iterator)  # start-up and shuffle-buffer fill
    start = time.perf_counter()
    for _ in range(batch_count):
        next(iterator)
    return batch_count * batch_size / (time.perf_counter() - start)


def patch_open_clip_grouping() -> None:
    import open_clip_train.data as ocd

    original = ocd.group_by_keys_nothrow

    def skip_end_of_shard(data, *args, **kwargs):
        return original((s for s in data if "fname" in s), *args, **kwargs)

    ocd.group_by_keys_nothrow = skip_end_of_shard


def open_clip_rate(shard: Path, transform, tokenize, args: argparse.Namespace) -> float:
    from open_clip_train.data import get_wds_dataset

    opts = Namespace(train_data=str(shard), val_data=None, train_num_samples=args.samples,
                     train_data_upsampling_factors=None, dataset_resampled=False, seed=0,
                     batch_size=args.batch_size, workers=1, world_size=1, val_num_samples=None)
    info = get_wds_dataset(opts, transform, is_train=True, tokenizer=tokenize)
    return timed(info.dataloader, args.batches, args.batch_size)


def mmembed_rate(shard: Path, transform, tokenize, args: argparse.Namespace) -> float:
    cfg = DataConfig(train=[ShardSource(urls=[str(shard)])], num_workers=1, resampled=False, shuffle_buffer=1000)
    loader = build_train_loader(cfg, {"image": transform, "text": lambda t: tokenize([t])[0]},
                                batch_size=args.batch_size, seed=0)
    return timed(loader, args.batches, args.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    patch_open_clip_grouping()
    transform = open_clip.image_transform(224, is_train=True)
    tokenize = open_clip.get_tokenizer("ViT-B-32")
    with tempfile.TemporaryDirectory() as tmp:
        shard = Path(tmp) / "bench-000000.tar"
        write_shard(shard, args.samples, args.image_size)
        rates: dict[str, list[float]] = {"open_clip": [], "mmembed": []}
        for _ in range(args.repeats):  # interleaved, so machine load hits both alike
            rates["open_clip"].append(open_clip_rate(shard, transform, tokenize, args))
            rates["mmembed"].append(mmembed_rate(shard, transform, tokenize, args))
    best = {name: max(values) for name, values in rates.items()}
    print(f"{'pipeline':<12}{'samples/s/worker (best)':>26}{'all runs':>30}")
    for name, values in rates.items():
        print(f"{name:<12}{best[name]:>26.1f}{'  '.join(f'{v:.1f}' for v in values):>30}")
    print(f"ratio mmembed/open_clip: {best['mmembed'] / best['open_clip']:.3f}")


if __name__ == "__main__":
    main()
