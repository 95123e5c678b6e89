"""DataLoader factories: an endless, resumable training stream and a single-pass evaluation stream."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from mmembed.config.data import DataConfig
from mmembed.config.validate import ConfigError
from mmembed.data.plans import EpochPlan, ResampledPlan, ShardPlan, SinglePassPlan, check_enough_shards
from mmembed.data.resume import ResumableDataLoader, parse_resume
from mmembed.data.samples import Decoder, Preprocessor, SampleDecoder, parse_key_list
from mmembed.data.sources import check_local_shards, expand_urls
from mmembed.data.stream import BatchStream, StreamSpec


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
    """
    _check_positive(batch_size=batch_size, world_size=world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if not cfg.train:
        raise ConfigError("data.train lists no shard sources; add one with urls: [...]")
    sources = [expand_urls(source.urls) for source in cfg.train]
    check_local_shards([url for urls in sources for url in urls])
    point = parse_resume(resume, cfg.num_workers)
    spec = StreamSpec(
        plan=_train_plan(cfg, sources, world_size),
        decoder=_decoder(cfg, preprocessors, extra_keys, reinforced=cfg.reinforced.enabled),
        batch_size=batch_size, seed=seed, rank=rank, world_size=world_size,
        shuffle_buffer=cfg.shuffle_buffer, resume=point.consumed,
        max_empty_shards=2 * sum(len(urls) for urls in sources) + 8,
        max_consecutive_skips=cfg.max_consecutive_skips,
    )
    return _dataloader(BatchStream(spec), cfg.num_workers, seed, first_worker=point.next_worker)


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


def _train_plan(cfg: DataConfig, sources: list[list[str]], world_size: int) -> ShardPlan:
    weights = [float(source.weight) for source in cfg.train]
    if cfg.resampled:
        return ResampledPlan(tuple(tuple(urls) for urls in sources), tuple(weights))
    if len(set(weights)) > 1:
        # An epoch visits every sample once, which leaves no room for weights.
        raise ConfigError(f"data.train weights {weights} need data.resampled: true; with resampled: false "
                          "every shard is read once per epoch")
    urls = [url for source_urls in sources for url in source_urls]
    check_enough_shards(len(urls), world_size, cfg.num_workers)
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


def _dataloader(stream: BatchStream, num_workers: int, seed: int, first_worker: int = 0) -> DataLoader:
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
