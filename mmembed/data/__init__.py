"""WebDataset data pipeline: shards -> decoded, preprocessed dict batches (docs/design.md)."""

from mmembed.data.decode import DecodeError, decode_audio, decode_image, decode_int, decode_text
from mmembed.data.loaders import build_eval_loader, build_train_loader
from mmembed.data.sources import count_samples, expand_urls, read_sizes, source_num_samples
from mmembed.data.stats import SkipStats

__all__ = [
    "DecodeError",
    "SkipStats",
    "build_eval_loader",
    "build_train_loader",
    "count_samples",
    "decode_audio",
    "decode_image",
    "decode_int",
    "decode_text",
    "expand_urls",
    "read_sizes",
    "source_num_samples",
]
