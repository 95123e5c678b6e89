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
from mmembed.data.decode import DecodeError, decode_audio, decode_image, decode_text
from mmembed.data.rng import derive_rng, derive_seed
from mmembed.data.samples import parse_key_list
from mmembed.data.tar_samples import RawSample
from mmembed.reinforce.captioner import Captioner
from mmembed.reinforce.teacher_embeddings import (
    ACROP,
    MEDIA_EMB,
    PAUG,
    SYN,
    TEXT_EMB,
    AudioCrops,
    audio_embeddings,
    image_embeddings,
    text_embeddings,
)
from mmembed.reinforce.teachers import Teacher
from mmembed.reinforced_format.augment import AugmentSampler, AugRecord
from mmembed.reinforced_format.codec import decode_array, encode_array

REINFORCED_MEMBERS = (PAUG, SYN, ACROP, TEXT_EMB, *MEDIA_EMB.values())


@dataclass
class ReinforceContext:
    cfg: ReinforceConfig
    shard_name: str
    teachers: Sequence[Teacher]
    captioner: Captioner | None = None
    sampler: AugmentSampler = field(init=False)

    def __post_init__(self) -> None:
        self.sampler = AugmentSampler(self.cfg.augment)
        keys = {"image": self.cfg.image_keys, "audio": self.cfg.audio_keys}
        self.media_keys = parse_key_list(keys[self.cfg.modality])
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
    _, media_bytes = _member(raw, ctx.media_keys, ctx.cfg.modality)
    text_ext, text_bytes = _member(raw, ctx.text_keys, "caption")
    media = decode_image(media_bytes) if ctx.cfg.modality == "image" else decode_audio(media_bytes)
    members = {k: v for k, v in raw.items() if not k.startswith("__")}
    return _Source(raw["__key__"], members, media, decode_text(text_bytes, text_ext))


def _audio_crops(ctx: ReinforceContext, key: str, audio: tuple[np.ndarray, int]) -> AudioCrops:
    waveform, rate = audio
    length = max(1, round(ctx.cfg.audio.crop_seconds * rate))
    rng = ctx.rng("acrop", key)
    last = max(waveform.shape[0] - length, 0)
    return AudioCrops(rate, length, tuple(rng.randint(0, last) for _ in range(ctx.cfg.audio.num_crops)))


def _media(ctx: ReinforceContext, teachers: Sequence[Teacher], sources: Sequence[_Source],
           augs: Sequence[Any]) -> list[np.ndarray]:
    if ctx.cfg.modality == "image":
        return image_embeddings(teachers, [s.media for s in sources], augs)
    return audio_embeddings(teachers, [s.media[0] for s in sources], augs)


def _augs_json(modality: str, augs: Any) -> tuple[str, bytes]:
    if modality == "image":
        return PAUG, json.dumps([r.to_json() for r in augs]).encode()
    return ACROP, json.dumps(augs.to_json()).encode()


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
    cfg = ctx.cfg
    if cfg.modality == "image":
        augs: list[Any] = [ctx.sampler.sample_many(s.media.width, s.media.height, cfg.augment.num_augs,
                                                   ctx.rng("paug", s.key)) for s in sources]
    else:
        augs = [_audio_crops(ctx, s.key, s.media) for s in sources]
    syn: list[list[str]] = [[] for _ in sources]
    if ctx.captioner is not None:
        if cfg.modality != "image":
            raise ValueError("reinforce.captioner needs image data (modality: image)")
        captions = ctx.captioner.generate([s.media for s in sources],
                                          derive_seed(cfg.seed, "syn", ctx.shard_name, sources[0].key))
        syn = captions.per_sample
        result.captions_generated, result.captions_rejected = captions.generated, captions.rejected
    media_emb = _media(ctx, ctx.teachers, sources, augs)
    text_emb = text_embeddings(ctx.teachers, [[s.caption, *extra] for s, extra in zip(sources, syn)])
    groups = [t.dim for t in ctx.teachers]
    for i, source in enumerate(sources):
        members = dict(source.members)
        name, data = _augs_json(cfg.modality, augs[i])
        members[name] = data
        if ctx.captioner is not None:
            members[SYN] = json.dumps({"syn_text": syn[i]}).encode()
        members[MEDIA_EMB[cfg.modality]] = encode_array(media_emb[i], cfg.storage, groups)
        members[TEXT_EMB] = encode_array(text_emb[i], cfg.storage, groups)
        result.samples.append((source.key, members))
    return result


def stored_augs(raw: RawSample, modality: str) -> Any:
    """The augmentation records (image) or crops (audio) stored in a reinforced sample."""
    if modality == "image":
        return [AugRecord.from_json(r) for r in json.loads(raw[PAUG])]
    data = json.loads(raw[ACROP])
    return AudioCrops(int(data["sample_rate"]), int(data["length"]), tuple(int(o) for o in data["offsets"]))


def stored_syn(raw: RawSample) -> list[str]:
    return list(json.loads(raw[SYN])["syn_text"]) if SYN in raw else []


def append_samples(ctx: ReinforceContext, raws: Sequence[RawSample], stored: int) -> list[tuple[str, dict]]:
    """Add the embeddings of teachers[stored:] to already reinforced samples, replaying their records."""
    modality = ctx.cfg.modality
    new = list(ctx.teachers[stored:])
    groups = [t.dim for t in ctx.teachers]
    emb_key = MEDIA_EMB[modality]
    sources, augs, texts = [], [], []
    for raw in raws:
        plain = {k: v for k, v in raw.items() if k not in REINFORCED_MEMBERS}
        source = _decode(ctx, plain)
        source.members = {k: v for k, v in raw.items() if not k.startswith("__")}
        sources.append(source)
        augs.append(stored_augs(raw, modality))
        texts.append([source.caption, *stored_syn(raw)])
    media_new = _media(ctx, new, sources, augs)
    text_new = text_embeddings(new, texts)
    out = []
    for source, media, text in zip(sources, media_new, text_new):
        members = dict(source.members)
        for name, extra in ((emb_key, media), (TEXT_EMB, text)):
            old, _ = decode_array(members[name], f"{ctx.shard_name} {source.key}.{name}")
            members[name] = encode_array(np.concatenate([old, extra], axis=1), ctx.cfg.storage, groups)
        out.append((source.key, members))
    return out
