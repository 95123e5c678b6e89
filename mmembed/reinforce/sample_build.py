"""One batch of source samples -> reinforced samples (and the append-a-teacher variant).

All randomness is derived from (seed, shard name, sample key), never from the order of work, so a
restarted shard is rebuilt byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmembed.config.reinforce import ReinforceConfig
from mmembed.data.decode import DecodeError, decode_text
from mmembed.data.rng import derive_rng, derive_seed
from mmembed.data.samples import MODALITY_DECODERS, parse_key_list
from mmembed.data.tar_samples import RawSample
from mmembed.reinforce.captioner import Captioner
from mmembed.reinforce.media_build import MEDIA_BUILDS, MediaBuild
from mmembed.reinforce.teacher_embeddings import text_embeddings
from mmembed.reinforce.teachers import Teacher
from mmembed.reinforced_format.augment import AugmentSampler
from mmembed.reinforced_format.codec import decode_array, encode_array
from mmembed.reinforced_format.members import REINFORCED_MEMBERS, SYN, TEXT_EMB, stored_syn


@dataclass
class ReinforceContext:
    cfg: ReinforceConfig
    shard_name: str
    teachers: Sequence[Teacher]
    captioner: Captioner | None = None
    media: MediaBuild = field(init=False)

    def __post_init__(self) -> None:
        AugmentSampler(self.cfg.augment)  # fails early on unknown RandAugment ops, whatever the medium
        self.media = MEDIA_BUILDS[self.cfg.modality]
        self.media_keys = parse_key_list(getattr(self.cfg, f"{self.cfg.modality}_keys"))
        self.text_keys = parse_key_list(self.cfg.text_keys)

    def rng(self, purpose: str, key: str):  # type: ignore[no-untyped-def]
        return derive_rng(self.cfg.seed, purpose, self.shard_name, key)


@dataclass
class BatchResult:
    samples: list[tuple[str, dict[str, bytes]]]
    skipped: list[str]
    captions_generated: int = 0
    captions_rejected: int = 0


@dataclass
class _Source:
    key: str
    members: dict[str, bytes]
    media: Any
    caption: str


def _member(raw: RawSample, keys: Sequence[str], what: str) -> tuple[str, bytes]:
    for ext in keys:
        if ext in raw:
            return ext, raw[ext]
    raise DecodeError(f"no {what} member (tried {list(keys)})")


def _decode(ctx: ReinforceContext, raw: RawSample) -> _Source:
    already = [m for m in REINFORCED_MEMBERS if m in raw]
    if already:
        raise ValueError(f"{raw['__url__']} sample {raw['__key__']} already holds reinforcement members {already}; "
                         "reinforce plain shards (or append a teacher to the reinforced output instead)")
    media_ext, media_bytes = _member(raw, ctx.media_keys, ctx.cfg.modality)
    text_ext, text_bytes = _member(raw, ctx.text_keys, "caption")
    media = MODALITY_DECODERS[ctx.cfg.modality](media_bytes, media_ext)
    members = {k: v for k, v in raw.items() if not k.startswith("__")}
    return _Source(raw["__key__"], members, media, decode_text(text_bytes, text_ext))


def reinforce_samples(ctx: ReinforceContext, raws: Sequence[RawSample]) -> BatchResult:
    sources, skipped = [], []
    for raw in raws:
        try:
            sources.append(_decode(ctx, raw))
        except DecodeError as err:
            skipped.append(f"{raw['__key__']}: {err}")
    result = BatchResult([], skipped)
    if not sources:
        return result
    cfg, media = ctx.cfg, ctx.media
    augs = [media.draw(cfg, s.media, ctx.rng(media.rng_purpose, s.key)) for s in sources]
    syn: list[list[str]] = [[] for _ in sources]
    if ctx.captioner is not None:
        if not media.captionable:
            raise ValueError(f"reinforce.captioner needs image data, not {cfg.modality} (modality: image)")
        captions = ctx.captioner.generate([s.media for s in sources],
                                          derive_seed(cfg.seed, "syn", ctx.shard_name, sources[0].key))
        syn = captions.per_sample
        result.captions_generated, result.captions_rejected = captions.generated, captions.rejected
    media_emb = media.teacher_embeddings(ctx.teachers, [s.media for s in sources], augs)
    text_emb = text_embeddings(ctx.teachers, [[s.caption, *extra] for s, extra in zip(sources, syn)])
    groups = [t.dim for t in ctx.teachers]
    for i, source in enumerate(sources):
        members = dict(source.members)
        members[media.format.records_member] = media.format.encode_records(augs[i])
        if ctx.captioner is not None:
            members[SYN] = json.dumps({"syn_text": syn[i]}).encode()
        members[media.format.emb_member] = encode_array(media_emb[i], cfg.storage, groups)
        members[TEXT_EMB] = encode_array(text_emb[i], cfg.storage, groups)
        result.samples.append((source.key, members))
    return result


def stored_augs(raw: RawSample, modality: str) -> Any:
    """The view records (augmentations or crops) stored in a reinforced sample of `modality`."""
    return MEDIA_BUILDS[modality].format.read_records(raw)


def append_samples(ctx: ReinforceContext, raws: Sequence[RawSample], stored: int) -> list[tuple[str, dict]]:
    """Add the embeddings of teachers[stored:] to already reinforced samples, replaying their records."""
    media = ctx.media
    new = list(ctx.teachers[stored:])
    groups = [t.dim for t in ctx.teachers]
    emb_key = media.format.emb_member
    sources, augs, texts = [], [], []
    for raw in raws:
        plain = {k: v for k, v in raw.items() if k not in REINFORCED_MEMBERS}
        source = _decode(ctx, plain)
        source.members = {k: v for k, v in raw.items() if not k.startswith("__")}
        sources.append(source)
        augs.append(media.format.read_records(raw))
        texts.append([source.caption, *stored_syn(raw)])
    media_new = media.teacher_embeddings(new, [s.media for s in sources], augs)
    text_new = text_embeddings(new, texts)
    out = []
    for source, media, text in zip(sources, media_new, text_new):
        members = dict(source.members)
        for name, extra in ((emb_key, media), (TEXT_EMB, text)):
            old, _ = decode_array(members[name], f"{ctx.shard_name} {source.key}.{name}")
            members[name] = encode_array(np.concatenate([old, extra], axis=1), ctx.cfg.storage, groups)
        out.append((source.key, members))
    return out
