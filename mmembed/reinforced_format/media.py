"""One handler per stored medium (image, audio): everything about a reinforced sample that depends on it.

The builder, the verifier and the training reader look the medium up once (`MEDIA[name]`) and never branch
on its name again. What a handler knows: which members hold the view records and the teacher embeddings,
how the records are (de)serialised and counted, and how the training reader turns view k of the stored
sample into the student's input. What the builder additionally needs (drawing records, running teachers)
lives with the builder, in mmembed.reinforce.media_build, on top of these handlers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from mmembed.reinforced_format.augment import AugRecord, ReplayTransform
from mmembed.reinforced_format.crops import AudioCrops
from mmembed.reinforced_format.members import ACROP, AUDIO_EMB, IMAGE_EMB, PAUG
from mmembed.reinforced_format.replay_params import replay_from_transform
from mmembed.types import Preprocessor

# (decoded source value, stored records, view index k) -> the student's per-sample input.
StudentView = Callable[[Any, Any, int], Any]


class MediaFormat(Protocol):
    name: str  # the modality: "image" | "audio"
    emb_member: str  # [K, ΣD] teacher embeddings of the K views
    records_member: str  # the K view records

    def read_records(self, raw: Mapping[str, bytes]) -> Any: ...

    def encode_records(self, records: Any) -> bytes: ...

    def num_views(self, records: Any) -> int: ...

    def student_view(self, preprocessor: Preprocessor) -> StudentView: ...


@dataclass(frozen=True)
class ReplayView:
    """Image view k: record k replayed at the student's size and normalisation (picklable for workers)."""

    replay: ReplayTransform

    def __call__(self, image: Any, records: list[AugRecord], k: int) -> Any:
        return self.replay(image, records[k])


@dataclass(frozen=True)
class CropView:
    """Audio view k: crop k of the waveform through the student's own audio preprocessor."""

    preprocessor: Preprocessor

    def __call__(self, audio: tuple[Any, int], crops: AudioCrops, k: int) -> Any:
        waveform, sample_rate = audio
        return self.preprocessor((crops.clip(waveform, k), sample_rate))


class ImageMedium:
    name = "image"
    emb_member = IMAGE_EMB
    records_member = PAUG

    def read_records(self, raw: Mapping[str, bytes]) -> list[AugRecord]:
        return [AugRecord.from_json(r) for r in json.loads(raw[PAUG])]

    def encode_records(self, records: list[AugRecord]) -> bytes:
        return json.dumps([r.to_json() for r in records]).encode()

    def num_views(self, records: list[AugRecord]) -> int:
        return len(records)

    def student_view(self, preprocessor: Preprocessor) -> StudentView:
        return ReplayView(replay_from_transform(preprocessor, "student image preprocessor"))


class AudioMedium:
    name = "audio"
    emb_member = AUDIO_EMB
    records_member = ACROP

    def read_records(self, raw: Mapping[str, bytes]) -> AudioCrops:
        return AudioCrops.from_bytes(raw[ACROP])

    def encode_records(self, records: AudioCrops) -> bytes:
        return json.dumps(records.to_json()).encode()

    def num_views(self, records: AudioCrops) -> int:
        return len(records.offsets)

    def student_view(self, preprocessor: Preprocessor) -> StudentView:
        return CropView(preprocessor)


MEDIA: dict[str, MediaFormat] = {"image": ImageMedium(), "audio": AudioMedium()}


def medium(name: str) -> MediaFormat:
    if name not in MEDIA:
        raise ValueError(f"reinforced data stores one of the media {sorted(MEDIA)}, got {name!r}")
    return MEDIA[name]
