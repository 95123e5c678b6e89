"""DataLoader factories: an endless, resumable training stream and a single-pass evaluation stream."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from mmembed.config.data import DataConfig, ShardSource
from mmembed.config.sources import source_name
from mmembed.config.validate import ConfigError
from mmembed.data.mixing import MixedBatchStream, SourceStream, parse_mix_resume
from mmembed.data.plans import EpochPlan, ResampledPlan, ShardPlan, SinglePassPlan, check_enough_shards
from mmembed.data.resume import ResumableDataLoader, parse_resume
from mmembed.data.rng import derive_seed
from mmembed.data.samples import Decoder, Preprocessor, SampleDecoder, parse_key_list
from mmembed.data.sources import check_local_shards, expand_urls, source_num_samples
from mmembed.data.stream import BatchStream, StreamSpec

log = logging.getLogger("mmembed.data")


def build_train_loader(
    cfg: DataConfig,
    preprocessors: Mapping[str, Preprocessor],
    *,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    resume: Mapping[str, Any] | None = None,
    extra_keys: Sequence[str] = (),
) -> DataLoader:
    """Endless dict batches for step-based training (docs/design.md, "Batches and the data pipeline").

    Each batch also carries `__worker__`, `__consumed__` (raw samples that worker has pulled, corrupt ones
    included) and `__skipped__` (what that worker has skipped so far). Record the latest `__consumed__` per
    worker and the last batch's `__worker__`, and pass
    `resume={"consumed": {worker: n}, "next_worker": (last_worker + 1) % num_workers}` to continue the
    identical stream (see mmembed.data.resume); this requires the same seed, rank, world_size and
    num_workers. Without `next_worker` the order is exact only after a multiple of num_workers batches.

    With several `cfg.train` sources each batch comes from one source (mmembed.data.mixing) and also carries
    `__source__` and `__batch__`; `__consumed__` then counts within that source, and the resume point is
    `{"sources": {name: {worker: n}}, "next_batch": last __batch__ + 1}`.
    """
    _check_positive(batch_size=batch_size, world_size=world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if not cfg.train:
        raise ConfigError("data.train lists no shard sources; add one with urls: [...]")
    sources = [expand_urls(source.urls) for source in cfg.train]
    check_local_shards([url for urls in sources for url in urls])
    common = {"batch_size": batch_size, "rank": rank, "world_size": world_size,
              "shuffle_buffer": cfg.shuffle_buffer, "max_consecutive_skips": cfg.max_consecutive_skips}
    if len(cfg.train) > 1:
        return _mixed_loader(cfg, sources, preprocessors, extra_keys, seed, resume, common)
    point = parse_resume(resume, cfg.num_workers)
    spec = StreamSpec(
        plan=_source_plan(cfg, sources[0], world_size, "data.train"),
        decoder=_decoder(cfg, _source_preprocessors(cfg.train[0], preprocessors), extra_keys,
                         reinforced=cfg.reinforced.enabled),
        seed=seed, resume=point.consumed, max_empty_shards=2 * len(sources[0]) + 8, **common,
    )
    return _dataloader(BatchStream(spec), cfg.num_workers, seed, first_worker=point.next_worker)


def _mixed_loader(cfg: DataConfig, sources: list[list[str]], preprocessors: Mapping[str, Preprocessor],
                  extra_keys: Sequence[str], seed: int, resume: Mapping[str, Any] | None,
                  common: dict[str, Any]) -> DataLoader:
    """One stream per source, one source per micro-batch (mmembed.data.mixing)."""
    names = [source_name(source, i) for i, source in enumerate(cfg.train)]
    point = parse_mix_resume(resume, names, cfg.num_workers)
    offsets, sizes = _index_offsets(cfg)
    streams = []
    for i, (source, urls) in enumerate(zip(cfg.train, sources, strict=True)):
        spec = StreamSpec(
            plan=_source_plan(cfg, urls, common["world_size"], f"data.train[{i}] ('{names[i]}')"),
            decoder=_decoder(cfg, _source_preprocessors(source, preprocessors), extra_keys,
                             reinforced=cfg.reinforced.enabled),
            # Each source's shuffles and augmentations draw from their own seeds.
            seed=derive_seed(seed, "source", names[i]), resume=point.consumed.get(names[i], {}),
            max_empty_shards=2 * len(urls) + 8, **common,
        )
        streams.append(SourceStream(names[i], spec, offsets[i], sizes[i]))
    stream = MixedBatchStream(streams, [source.weight for source in cfg.train], seed, point.next_batch)
    return _dataloader(stream, cfg.num_workers, seed, first_worker=point.next_batch % max(1, cfg.num_workers))


def _index_offsets(cfg: DataConfig) -> tuple[list[int | None], list[int | None]]:
    """(offset, size) per source: offsets are the summed sizes of the sources before; None if any is unknown."""
    try:
        sizes = [source_num_samples(source) for source in cfg.train]
    except (OSError, KeyError, ValueError) as err:
        log.warning("the size of some data.train source is unknown (%s): sample indices keep each source's own "
                    "idx, so two sources' samples can share an index; set num_samples on every source", err)
        return [None] * len(cfg.train), [None] * len(cfg.train)
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    return list(offsets), list(sizes)


def _source_preprocessors(source: ShardSource, preprocessors: Mapping[str, Preprocessor]) -> dict[str, Preprocessor]:
    """The preprocessors of the modalities the source provides (all of them unless it names its own)."""
    if source.modalities is None:
        return dict(preprocessors)
    missing = [m for m in source.modalities if m not in preprocessors]
    if missing:
        raise ValueError(f"data source '{source.name or source.urls}' names modalities {missing} that have no "
                         f"preprocessor; available: {sorted(preprocessors)}")
    return {m: p for m, p in preprocessors.items() if m in source.modalities}


def build_eval_loader(
    urls: list[str],
    preprocessors: Mapping[str, Preprocessor],
    *,
    batch_size: int,
    num_workers: int = 0,
    extra_keys: Sequence[str] = ("cls",),
    cfg: DataConfig | None = None,
) -> DataLoader:
    """Every sample of `urls` exactly once: no shuffling, no resampling, last batch possibly smaller.

    With num_workers=0 samples come in shard and file order; with more workers shards are dealt
    round-robin to workers and batches interleave in worker order (still deterministic). `cfg` only
    supplies the member keys per modality (defaults: DataConfig()).
    """
    _check_positive(batch_size=batch_size)
    shards = expand_urls(urls)
    check_local_shards(shards)
    spec = StreamSpec(
        plan=SinglePassPlan(tuple(shards)), decoder=_decoder(cfg or DataConfig(), preprocessors, extra_keys),
        batch_size=batch_size, seed=0, final_partial_batch=True,
    )
    return _dataloader(BatchStream(spec), num_workers, 0)


def _source_plan(cfg: DataConfig, urls: list[str], world_size: int, where: str) -> ShardPlan:
    if cfg.resampled:
        return ResampledPlan((tuple(urls),), (1.0,))
    try:
        check_enough_shards(len(urls), world_size, cfg.num_workers)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from err
    return EpochPlan(tuple(urls))


def _decoder(cfg: DataConfig, preprocessors: Mapping[str, Preprocessor],
             extra_keys: Sequence[str], reinforced: bool = False) -> Decoder:
    if not preprocessors:
        raise ValueError("no preprocessors: name at least one modality to load")
    keys = {"image": cfg.image_keys, "text": cfg.text_keys, "audio": cfg.audio_keys}
    parsed = {m: parse_key_list(spec) for m, spec in keys.items()}
    if reinforced:  # evaluation always reads plain members
        from mmembed.data.reinforced import ReinforcedSampleDecoder  # lazy: only reinforced runs replay views

        return ReinforcedSampleDecoder(dict(preprocessors), parsed, cfg.reinforced, tuple(extra_keys))
    return SampleDecoder(dict(preprocessors), parsed, tuple(extra_keys))


def _dataloader(stream: IterableDataset, num_workers: int, seed: int, first_worker: int = 0) -> DataLoader:
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    return ResumableDataLoader(
        stream, first_worker=first_worker, batch_size=None, num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        # A private generator: worker base seeds are then not drawn from (and do not advance) the global RNG.
        generator=torch.Generator().manual_seed(seed),
    )


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
