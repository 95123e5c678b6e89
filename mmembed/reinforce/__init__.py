"""Reinforced datasets (MobileCLIP / DataCompDR style, docs/design.md "Reinforced datasets"): build, verify, replay.

Importing this package is cheap; the builder, teachers and captioner load their models on use.
"""

from mmembed.reinforced_format.augment import AugmentSampler, AugRecord, ReplayTransform
from mmembed.reinforced_format.codec import decode_array, encode_array

__all__ = ["AugRecord", "AugmentSampler", "ReplayTransform", "decode_array", "encode_array"]
