"""The reinforced-dataset builder: one output shard per input shard, resumable, rank-parallel, appendable.

Per input shard `NAME.tar` the builder writes `OUT/NAME.tar` with every source member kept and the
reinforcement members added (see mmembed.reinforced_format). Work is split by shard: under `accelerate launch`
(or torchrun) rank r of W takes shards r, r+W, ... (RANK / WORLD_SIZE / LOCAL_RANK from the environment, so
no process group is needed). A shard is complete iff its completion record exists (mmembed.reinforce.shard_io);
a restart with the same command skips complete shards and rewrites the rest. When every shard is complete,
whichever rank finishes last writes `manifest.json`, `teachers.json` and `sizes.json`.

Appending a teacher: re-run with the extra teacher at the end of `teachers`. Complete shards whose record
lists the earlier teachers as a prefix get only the new teachers' embeddings, computed by replaying their
stored augmentation records and captions; nothing else changes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mmembed.config.reinforce import ReinforceConfig
from mmembed.data.sources import check_local_shards, expand_urls
from mmembed.data.stats import SkipStats
from mmembed.data.tar_samples import RawSample, shard_samples
from mmembed.progress import Progress, progress
from mmembed.reinforce.captioner import Captioner, build_captioner
from mmembed.reinforce.manifest import build_fingerprint, maybe_write_manifest, teacher_ids
from mmembed.reinforce.sample_build import ReinforceContext, append_samples, reinforce_samples
from mmembed.reinforce.shard_io import DeterministicTarWriter, finish_shard, read_done, temp_path
from mmembed.reinforce.teachers import Teacher, build_teachers

log = logging.getLogger("mmembed.reinforce")


@dataclass(frozen=True)
class ShardJob:
    # Position of the source shard in the expanded input list: it alone decides which rank owns the shard,
    # so ranks that start at different times (or after a partial restart) never disagree.
    index: int
    source: str
    output: Path
    # None: build from the source; else the number of teachers already stored (append the rest).
    stored_teachers: int | None


def rank_and_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher's environment; (0, 1, 0) when run directly."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def pick_device(name: str, local_rank: int) -> torch.device:
    if name != "auto":
        return torch.device(name)
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def plan_jobs(cfg: ReinforceConfig, sources: Sequence[str], ids: list[str], fingerprint: str) -> list[ShardJob]:
    """What each shard needs, checking completed shards were built with the same settings."""
    out_dir = Path(cfg.output_dir)
    names = [os.path.basename(url) for url in sources]
    if len(set(names)) != len(names):
        raise ValueError("reinforce.input: shard file names must be unique (one output shard per input shard)")
    jobs = []
    for index, (url, name) in enumerate(zip(sources, names)):
        done = read_done(out_dir / name)
        if done is None:
            jobs.append(ShardJob(index, url, out_dir / name, None))
            continue
        if done.get("fingerprint") != fingerprint:
            raise ValueError(f"{out_dir / name} was built with other augmentation/captioner/storage/seed settings "
                             "than this recipe; use a new output_dir or the original recipe")
        stored = list(done.get("teachers", []))
        if stored == ids:
            continue
        if ids[:len(stored)] != stored:
            raise ValueError(f"{out_dir / name} holds teachers {stored}, which are not a prefix of the recipe's "
                             f"{ids}; new teachers can only be appended at the end")
        jobs.append(ShardJob(index, url, out_dir / name, len(stored)))
    return jobs


class ReinforceBuilder:
    def __init__(self, cfg: ReinforceConfig, *, progress: bool = True) -> None:
        self.cfg = cfg
        self.rank, self.world, local_rank = rank_and_world()
        self.device = pick_device(cfg.device, local_rank)
        self.progress = progress and self.rank == 0
        self.sources = expand_urls(list(cfg.input))
        check_local_shards(self.sources)
        self.teachers: list[Teacher] = build_teachers(cfg.teachers, self.device)
        self.captioner: Captioner | None = (build_captioner(cfg.captioner, self.device)
                                            if cfg.captioner is not None else None)
        self.fingerprint = build_fingerprint(cfg, self.captioner)
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)

    def run(self) -> bool:
        """Build this rank's shards; returns True when the whole dataset is complete (manifest written)."""
        ids = teacher_ids(self.teachers)
        jobs = plan_jobs(self.cfg, self.sources, ids, self.fingerprint)
        mine = [job for job in jobs if job.index % self.world == self.rank]
        total = _expected_samples(mine)
        with progress(total=total, desc=f"reinforce (rank {self.rank})", unit="sample",
                      disable=not self.progress, smoothing=0.1) as bar:
            for job in mine:
                self._run_job(job, ids, bar)
        return maybe_write_manifest(self.cfg, self.sources, self.teachers, self.captioner, self.fingerprint)

    def _run_job(self, job: ShardJob, ids: list[str], bar: Progress) -> None:
        ctx = ReinforceContext(self.cfg, job.output.name, self.teachers, self.captioner)
        tmp = temp_path(job.output)
        stats = SkipStats()
        writer = DeterministicTarWriter(tmp)
        record: dict[str, object] = {"source": job.source, "fingerprint": self.fingerprint, "teachers": ids}
        try:
            if job.stored_teachers is None:
                counts = self._build(ctx, job.source, writer, stats, bar)
            else:
                counts = self._append(ctx, job, writer, stats, bar)
        finally:
            writer.close()
        record.update(counts, samples=writer.count, unreadable=stats.skipped)
        finish_shard(tmp, job.output, record)
        log.info("finished %s: %d samples", job.output, writer.count)

    def _build(self, ctx: ReinforceContext, source: str, writer: DeterministicTarWriter, stats: SkipStats,
               bar: Progress) -> dict[str, object]:
        skipped: list[str] = []
        generated = rejected = 0
        for batch in _batches(shard_samples(source, stats), self.cfg.batch_size):
            result = reinforce_samples(ctx, batch)
            for key, members in result.samples:
                writer.write(key, members)
            skipped += result.skipped
            generated += result.captions_generated
            rejected += result.captions_rejected
            bar.update(len(batch))
        return {"skipped": skipped, "captions_generated": generated, "captions_rejected": rejected}

    def _append(self, ctx: ReinforceContext, job: ShardJob, writer: DeterministicTarWriter, stats: SkipStats,
                bar: Progress) -> dict[str, object]:
        done = read_done(job.output) or {}
        stored = int(job.stored_teachers or 0)
        for batch in _batches(shard_samples(str(job.output), stats), self.cfg.batch_size):
            for key, members in append_samples(ctx, batch, stored):
                writer.write(key, members)
            bar.update(len(batch))
        return {k: done[k] for k in ("skipped", "captions_generated", "captions_rejected") if k in done}


def _batches(samples: Iterator[RawSample], size: int) -> Iterator[list[RawSample]]:
    batch: list[RawSample] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _expected_samples(jobs: Sequence[ShardJob]) -> int | None:
    from mmembed.data.sources import count_samples

    try:
        return sum(count_samples(job.source) for job in jobs) if jobs else 0
    except (FileNotFoundError, KeyError, ValueError):
        return None  # no sizes.json: the bar shows a rate without an ETA


def run_reinforce(cfg: ReinforceConfig, *, progress: bool = True) -> bool:
    return ReinforceBuilder(cfg, progress=progress).run()
