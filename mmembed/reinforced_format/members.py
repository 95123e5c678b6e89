"""Names of what a reinforced dataset adds to its source data: per-sample tar members and dataset files.

A reinforced sample keeps every member of its source sample and adds:
    paug.json   (image) list of K augmentation records (mmembed.reinforced_format.augment)
    acrop.json  (audio) {"sample_rate", "length", "offsets": [K]} (mmembed.reinforced_format.crops)
    syn.json    {"syn_text": [...]}: synthetic captions, when a captioner ran
    image_emb / audio_emb   [K, ΣD] teacher embeddings of the K stored views (mmembed.reinforced_format.codec)
    text_emb    [1 + n_syn, ΣD] teacher embeddings of the real caption, then each synthetic one
"""

from __future__ import annotations

import json
from collections.abc import Mapping

PAUG = "paug.json"
ACROP = "acrop.json"
SYN = "syn.json"
TEXT_EMB = "text_emb"
IMAGE_EMB = "image_emb"
AUDIO_EMB = "audio_emb"
# Every member name the builder adds; a source sample holding one of them is already reinforced.
REINFORCED_MEMBERS = (PAUG, ACROP, SYN, TEXT_EMB, IMAGE_EMB, AUDIO_EMB)


def stored_syn(raw: Mapping[str, bytes]) -> list[str]:
    """The synthetic captions of a reinforced sample ([] when it has none)."""
    return list(json.loads(raw[SYN])["syn_text"]) if SYN in raw else []
