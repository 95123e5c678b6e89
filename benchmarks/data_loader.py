"""Data-loader throughput per worker: mmembed's WebDataset pipeline vs open_clip_train's, same shard, same
transforms, same machine, one run.

    .venv/bin/python benchmarks/data_loader.py                # 512 JPEGs of 256 px -> 224 random crops

Both pipelines run with one DataLoader worker process (as in training), so samples/s is the throughput of
one loader worker: read the tar, shuffle, decode the JPEG, run open_clip's training image transform
(RandomResizedCrop 224, normalise) and tokenize the caption, then batch. The transform and tokenizer
objects are the same for both. The first batch (start-up, shuffle-buffer fill) is excluded; the rest are
timed. Repeats alternate between the pipelines, so machine load hits both alike; the table gives the best
and the median samples/s of the repeats, and the median of the per-repeat ratios (mmembed / open_clip of the
same round).

On a shared machine wall-clock rates swing with other jobs, so the benchmark also reads CPU time from /proc:
per sample, of the worker's main thread (decoding, transforms, batching: the critical path of one worker),
of the whole worker process (adding the result queue's feeder thread, which moves each batch into shared
memory), and of the main process (receiving batches). CPU time counts only while a thread runs, which makes
it much steadier under load than samples/s; 1 / (main-thread CPU per sample) is the rate one worker reaches
when its feeder thread has a core of its own.

open_clip 3.3's `group_by_keys_nothrow` raises KeyError('fname') on webdataset 1.0's end-of-shard marker
(the empty dict its tar expander yields after each shard; docs/design.md, "Batches and the data pipeline"),
which its shuffle buffer reaches even with one shard. To measure its pipeline at all, the benchmark gives it
the one-line fix open_clip would need (drop entries without "fname" before grouping); everything else is
open_clip's code.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from argparse import Namespace
from collections.abc import Iterable
from dataclasses import dataclass
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


@dataclass
class Measurement:
    samples_per_s: float
    cpu_per_sample: dict[str, float]  # "worker_thread", "worker", "main": CPU seconds per sample (empty: no /proc)


def _children() -> set[int]:
    me = str(os.getpid())
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:  # ppid
            found.add(int(stat.parent.name))
    return found


def _cpu_seconds(stat_path: str) -> float:
    """utime + stime of a process or thread, from its /proc stat line."""
    fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_clocks(worker: int | None) -> dict[str, float]:
    if worker is None:
        return {}
    try:
        return {"worker_thread": _cpu_seconds(f"/proc/{worker}/task/{worker}/stat"),
                "worker": _cpu_seconds(f"/proc/{worker}/stat"), "main": time.process_time()}
    except OSError:
        return {}


def timed(batches: Iterable, batch_count: int, batch_size: int) -> Measurement:
    before = _children() if Path("/proc/self/stat").exists() else None
    iterator = iter(batches)
    next(iterator)  # start-up and shuffle-buffer fill
    new = sorted(_children() - before) if before is not None else []
    worker = new[0] if len(new) == 1 else None  # the loader's one worker process
    clocks = _cpu_clocks(worker)
    start = time.perf_counter()
    for _ in range(batch_count):
        next(iterator)
    elapsed = time.perf_counter() - start
    samples = batch_count * batch_size
    after = _cpu_clocks(worker)
    cpu = {k: (after[k] - clocks[k]) / samples for k in clocks if k in after}
    return Measurement(samples / elapsed, cpu)


def patch_open_clip_grouping() -> None:
    import open_clip_train.data as ocd

    original = ocd.group_by_keys_nothrow

    def skip_end_of_shard(data, *args, **kwargs):
        return original((s for s in data if "fname" in s), *args, **kwargs)

    ocd.group_by_keys_nothrow = skip_end_of_shard


def open_clip_rate(shard: Path, transform, tokenize, args: argparse.Namespace) -> Measurement:
    from open_clip_train.data import get_wds_dataset

    opts = Namespace(train_data=str(shard), val_data=None, train_num_samples=args.samples,
                     train_data_upsampling_factors=None, dataset_resampled=False, seed=0,
                     batch_size=args.batch_size, workers=1, world_size=1, val_num_samples=None)
    info = get_wds_dataset(opts, transform, is_train=True, tokenizer=tokenize)
    return timed(info.dataloader, args.batches, args.batch_size)


def mmembed_rate(shard: Path, transform, tokenize, args: argparse.Namespace) -> Measurement:
    cfg = DataConfig(train=[ShardSource(urls=[str(shard)])], num_workers=1, resampled=False, shuffle_buffer=1000)
    loader = build_train_loader(cfg, {"image": transform, "text": lambda t: tokenize([t])[0]},
                                batch_size=args.batch_size, seed=0)
    return timed(loader, args.batches, args.batch_size)


def mmembed_default_collate_rate(shard: Path, transform, tokenize, args: argparse.Namespace) -> Measurement:
    """mmembed's pipeline with torch's default_collate rules (stacking into shared memory inside the worker): the
    state before batches were stacked into private memory, for `--with-default-collate`."""
    from torch.utils.data._utils.collate import default_collate_fn_map

    import mmembed.data.collate as collate

    private = collate._COLLATE_FNS
    collate._COLLATE_FNS = default_collate_fn_map  # read at call time; the forked worker inherits it
    try:
        return mmembed_rate(shard, transform, tokenize, args)
    finally:
        collate._COLLATE_FNS = private


def report(runs: dict[str, list[Measurement]]) -> None:
    rates = {name: [m.samples_per_s for m in values] for name, values in runs.items()}
    width = max(map(len, runs)) + 2
    print(f"{'pipeline':<{width}}{'best':>8}{'median':>8}   {'CPU ms/sample: worker thread':>29}{'worker':>8}"
          f"{'main':>7}   all runs (samples/s)")
    for name, values in runs.items():
        cpu = {k: 1e3 * statistics.median(m.cpu_per_sample[k] for m in values) for k in values[0].cpu_per_sample}
        shown = "".join(f"{cpu.get(k, float('nan')):>{w}.3f}" for k, w in (("worker_thread", 29), ("worker", 8),
                                                                            ("main", 7)))
        print(f"{name:<{width}}{max(rates[name]):>8.1f}{statistics.median(rates[name]):>8.1f}   {shown}   "
              f"{' '.join(f'{v:.0f}' for v in rates[name])}")
    paired = [ours / theirs for ours, theirs in zip(rates["mmembed"], rates["open_clip"])]
    if "mmembed_default_collate" in rates:
        before = rates["mmembed_default_collate"]
        paired_before = [ours / theirs for ours, theirs in zip(before, rates["open_clip"])]
        print(f"with default_collate, ratio to open_clip: best {max(before) / max(rates['open_clip']):.3f}, "
              f"median {statistics.median(before) / statistics.median(rates['open_clip']):.3f}, "
              f"median of per-round ratios {statistics.median(paired_before):.3f}")
    print(f"ratio mmembed/open_clip: best {max(rates['mmembed']) / max(rates['open_clip']):.3f}, "
          f"median {statistics.median(rates['mmembed']) / statistics.median(rates['open_clip']):.3f}, "
          f"median of per-round ratios {statistics.median(paired):.3f}")
    if all(m.cpu_per_sample for values in runs.values() for m in values):
        thread = {n: statistics.median(m.cpu_per_sample["worker_thread"] for m in v) for n, v in runs.items()}
        print(f"worker-thread CPU per sample, open_clip / mmembed (per-worker speed on idle cores): "
              f"{thread['open_clip'] / thread['mmembed']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=14)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--with-default-collate", action="store_true",
                        help="also run mmembed's pipeline with torch's default_collate (the state before the change)")
    args = parser.parse_args()
    patch_open_clip_grouping()
    transform = open_clip.image_transform(224, is_train=True)
    tokenize = open_clip.get_tokenizer("ViT-B-32")
    with tempfile.TemporaryDirectory() as tmp:
        shard = Path(tmp) / "bench-000000.tar"
        write_shard(shard, args.samples, args.image_size)
        rates = {"open_clip": open_clip_rate, "mmembed": mmembed_rate}
        if args.with_default_collate:
            rates["mmembed_default_collate"] = mmembed_default_collate_rate
        runs: dict[str, list[Measurement]] = {name: [] for name in rates}
        for round_ in range(args.repeats):  # interleaved, and rotating who goes first
            names = list(rates)
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                runs[name].append(rates[name](shard, transform, tokenize, args))
    report(runs)


if __name__ == "__main__":
    main()
