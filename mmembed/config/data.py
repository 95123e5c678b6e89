"""Data part of a recipe: shard sources, batching and per-modality decoding options."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from mmembed.config.checks import at_least


@dataclass
class ShardSource:
    """One corpus: a shard list, the modalities its samples hold and the pairs it trains.

    `urls` accepts brace patterns ("data/train-{000000..000009}.tar") or paths. With several sources each
    micro-batch comes from one source, chosen with probability proportional to `weight` by a generator
    every rank shares (docs/design.md, "Multi-source training"); mmembed.config.sources checks that every
    source trains a pair and every pair has a source.
    """

    urls: list[str] = MISSING
    # Several sources: relative probability that a micro-batch comes from this source. One source: unused.
    weight: float = 1.0
    # Number of samples in this source; None reads sizes.json next to the shards when present.
    num_samples: int | None = None
    # Used in logs and metric names (source/<name>/...) and checkpoints; "" means "source<i>".
    name: str = ""
    # The model modalities its samples hold (members decoded); None: every modality of the model.
    modalities: list[str] | None = None
    # The recipe pairs it trains, as "a,b"; None: every pair whose two modalities it provides.
    pairs: list[str] | None = None

    def __post_init__(self) -> None:
        at_least("data.train[*]", 0, weight=self.weight)
        at_least("data.train[*]", 1, num_samples=self.num_samples)


@dataclass
class ReinforcedDataConfig:
    """Training from reinforced shards (`mmembed reinforce`): stored augmentations and teacher embeddings.

    Each sample replays one randomly chosen stored augmentation at the student's resolution and carries the
    matching teacher rows as batch["teacher"][modality] for the `distill` loss; no teacher runs in training.
    """

    enabled: bool = False
    # "two_term": `text` = real caption and `syn_key` = one sampled synthetic caption (MobileCLIP: train the
    # pairs (image, text) and (image, text_syn), summed); "mix": `text` is a synthetic caption with
    # probability syn_ratio, else the real one; "real": the real caption only.
    captions: str = "two_term"
    syn_ratio: float = 0.5
    # Batch key of the synthetic caption in two_term mode (map it to the text tower with model.input_aliases).
    syn_key: str = "text_syn"

    def __post_init__(self) -> None:
        if self.captions not in ("two_term", "mix", "real"):
            raise ValueError(f"data.reinforced.captions must be two_term, mix or real, got {self.captions!r}")
        if not 0.0 <= self.syn_ratio <= 1.0:
            raise ValueError(f"data.reinforced.syn_ratio must lie in [0, 1], got {self.syn_ratio}")


@dataclass
class DataConfig:
    train: list[ShardSource] = field(default_factory=list)
    batch_size: int = 64
    num_workers: int = 2
    # true: shards drawn with replacement per rank and worker (open_clip's ResampledShards).
    # false: each epoch reads every shard once, order seeded by (seed, epoch), split disjointly over ranks
    # then workers; needs at least world_size x num_workers shards (per source). Several sources each run
    # through their own epochs.
    resampled: bool = True
    shuffle_buffer: int = 1000
    # Which sample keys feed each modality ("jpg;png;webp" tries them in order).
    image_keys: str = "jpg;jpeg;png;webp"
    # A "json" member is read as an object with a "caption" or "text" field.
    text_keys: str = "txt;text;caption;json"
    audio_keys: str = "flac;wav;ogg;mp3"
    # Benchmarking only: replace the shards by open_clip's synthetic data (one blank image of this size and
    # one caption, preprocessed per sample), so step times compare with `open_clip_train --dataset-type
    # synthetic`. 0 disables it.
    synthetic_image_size: int = 0
    reinforced: ReinforcedDataConfig = field(default_factory=ReinforcedDataConfig)
    # A run whose data worker skips this many samples in a row (missing members, undecodable bytes) stops
    # with an error naming the reasons and shards, instead of spinning without ever producing a batch.
    max_consecutive_skips: int = 1000

    def __post_init__(self) -> None:
        at_least("data", 1, batch_size=self.batch_size, max_consecutive_skips=self.max_consecutive_skips)
        at_least("data", 0, num_workers=self.num_workers, shuffle_buffer=self.shuffle_buffer,
                 synthetic_image_size=self.synthetic_image_size)
