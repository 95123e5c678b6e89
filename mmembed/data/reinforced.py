"""Reinforced samples -> training samples: replay a stored augmentation, pick captions and teacher rows.

Per sample, one of the K stored augmentation records (image) or audio crops is chosen, replayed at the
*student's* resolution and normalisation (read from the student's own preprocessor), and the matching row
of the stored teacher embeddings goes into `sample["teacher"][modality]`. Captions follow
`ReinforcedDataConfig.captions`; the chosen text rows go into `sample["teacher"]["text"]` (and
`[syn_key]`). `teacher_rows` records [augmentation, text row, synthetic text row] for audits and tests.

Every choice draws from `random.Random(sample_seed)`, the pipeline's per-sample seed, so exact resume holds.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mmembed.config.data import ReinforcedDataConfig
from mmembed.data.decode import DecodeError, decode_text
from mmembed.data.rng import seeded_global_rngs
from mmembed.data.samples import INDEX_KEY, MODALITY_DECODERS, SkipSample, _int_member
from mmembed.data.tar_samples import RawSample
from mmembed.reinforced_format.codec import decode_array
from mmembed.reinforced_format.media import MEDIA, MediaFormat, StudentView
from mmembed.reinforced_format.members import TEXT_EMB, stored_syn
from mmembed.types import Preprocessor


class MissingReinforcedKey(KeyError):
    """A shard read as reinforced lacks a reinforcement member: it was never built with `mmembed reinforce`."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class ReinforcedSampleDecoder:
    """Decoder for reinforced shards; the media modality is "image" or "audio" (whichever is preprocessed)."""

    preprocessors: Mapping[str, Preprocessor]
    keys: Mapping[str, Sequence[str]]
    cfg: ReinforcedDataConfig
    extra_keys: Sequence[str] = ()
    medium: MediaFormat = field(init=False)
    _view: StudentView = field(init=False)

    def __post_init__(self) -> None:
        media = [m for m in MEDIA if m in self.preprocessors]
        if len(media) != 1 or "text" not in self.preprocessors:
            raise ValueError(f"reinforced data needs the text tower and exactly one of {sorted(MEDIA)}; the "
                             f"model preprocesses {sorted(self.preprocessors)}")
        self.medium = MEDIA[media[0]]
        self._view = self.medium.student_view(self.preprocessors[self.medium.name])

    @property
    def media(self) -> str:
        """The stored medium's modality name ("image" or "audio")."""
        return self.medium.name

    @property
    def batch_fields(self) -> list[str]:
        syn = [self.cfg.syn_key] if self.cfg.captions == "two_term" else []
        return [self.media, "text", *syn, "teacher", "teacher_rows"]

    def _require(self, raw: RawSample, name: str) -> bytes:
        if name not in raw:
            raise MissingReinforcedKey(
                f"shard {raw['__url__']}: sample {raw['__key__']} has no reinforced member '{name}' (it has "
                f"{sorted(k for k in raw if not k.startswith('__'))}); build the shards with `mmembed reinforce` "
                "or set data.reinforced.enabled: false")
        return raw[name]

    def _member(self, raw: RawSample, modality: str) -> tuple[str, bytes]:
        for ext in self.keys[modality]:
            if ext in raw:
                return ext, raw[ext]
        raise SkipSample(f"missing {modality} (none of {list(self.keys[modality])})")

    def _text_rows(self, syn: list[str], rng: random.Random) -> tuple[int, int]:
        """(row of `text`, row of the synthetic caption); row 0 is the real caption, 1 + j synthetic j."""
        syn_row = 1 + rng.randrange(len(syn)) if syn else 0  # all captions filtered: fall back to the real one
        if self.cfg.captions == "mix":
            return (syn_row if syn and rng.random() < self.cfg.syn_ratio else 0), syn_row
        return 0, syn_row

    def __call__(self, raw: RawSample, sample_seed: int, restore_rngs: bool = True) -> dict[str, Any]:
        where = f"{raw['__url__']} sample {raw['__key__']}"
        medium = self.medium
        emb_bytes, text_bytes = self._require(raw, medium.emb_member), self._require(raw, TEXT_EMB)
        records = medium.read_records({medium.records_member: self._require(raw, medium.records_member)})
        syn = stored_syn(raw)
        media_emb, _ = decode_array(emb_bytes, f"{where} {medium.emb_member}")
        text_emb, _ = decode_array(text_bytes, f"{where} {TEXT_EMB}")
        if text_emb.shape[0] != 1 + len(syn):
            raise ValueError(f"{where}: {TEXT_EMB} has {text_emb.shape[0]} rows for 1 + {len(syn)} captions")
        rng = random.Random(sample_seed)
        k = rng.randrange(media_emb.shape[0])
        text_row, syn_row = self._text_rows(syn, rng)
        captions = [self._caption(raw), *syn]
        sample: dict[str, Any] = {"__key__": raw["__key__"]}
        sample["index"] = _int_member(raw, INDEX_KEY) if INDEX_KEY in raw else -1
        for name in self.extra_keys:
            if name not in raw:
                raise SkipSample(f"missing key '{name}'")
            sample[name] = _int_member(raw, name)
        with seeded_global_rngs(sample_seed, restore=restore_rngs):
            sample[self.media] = self._media(raw, records, k)
            sample["text"] = self.preprocessors["text"](captions[text_row])
            teacher = {self.media: torch.from_numpy(media_emb[k]), "text": torch.from_numpy(text_emb[text_row])}
            if self.cfg.captions == "two_term":
                sample[self.cfg.syn_key] = self.preprocessors["text"](captions[syn_row])
                teacher[self.cfg.syn_key] = torch.from_numpy(text_emb[syn_row])
        sample["teacher"] = teacher
        sample["teacher_rows"] = torch.tensor([k, text_row, syn_row], dtype=torch.long)
        return sample

    def _caption(self, raw: RawSample) -> str:
        ext, data = self._member(raw, "text")
        try:
            return decode_text(data, ext)
        except DecodeError as err:
            raise SkipSample(f"text member '{ext}': {err}") from err

    def _media(self, raw: RawSample, records: Any, k: int) -> Any:
        ext, data = self._member(raw, self.media)
        try:
            value = MODALITY_DECODERS[self.media](data, ext)
        except DecodeError as err:
            raise SkipSample(f"{self.media} member '{ext}': {err}") from err
        return self._view(value, records, k)
