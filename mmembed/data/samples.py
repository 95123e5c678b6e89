"""Raw sample (member bytes) -> preprocessed sample: pick keys, decode, run the towers' preprocessors."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mmembed.data.decode import DecodeError, decode_audio, decode_image, decode_int, decode_text
from mmembed.data.rng import seeded_global_rngs
from mmembed.data.tar_samples import RawSample
from mmembed.types import Preprocessor, ReadsModality

# (member bytes, member extension) -> the value a modality's preprocessor receives.
MemberDecoder = Callable[[bytes, str], Any]



def _image_member(data: bytes, ext: str) -> Any:
    return decode_image(data)  # PIL sniffs the format from the bytes; the extension may lie


def _audio_member(data: bytes, ext: str) -> Any:
    return decode_audio(data)


MODALITY_DECODERS: dict[str, MemberDecoder] = {
    "image": _image_member,
    "text": decode_text,
    "audio": _audio_member,
}

# The sample key holding the global dataset index (ASCII decimal); samples without it get -1.
INDEX_KEY = "idx"


class Decoder(Protocol):
    """What the stream needs of a decoder (SampleDecoder; mmembed.data.reinforced.ReinforcedSampleDecoder)."""

    extra_keys: Sequence[str]

    @property
    def batch_fields(self) -> list[str]: ...

    def __call__(self, raw: RawSample, sample_seed: int, restore_rngs: bool = True) -> dict[str, Any]: ...


class SkipSample(Exception):
    """A sample that cannot be used (missing or corrupt member); the message names what is wrong.

    `reason` is the short cause that skips are grouped by (logging, the stall error): by default the message
    up to its first " (" or ": ", e.g. "missing text" or "image member 'jpg'".
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or _short_reason(message)


def _short_reason(message: str) -> str:
    cuts = [i for i in (message.find(" ("), message.find(": ")) if i > 0]
    return message[: min(cuts)] if cuts else message


@dataclass(frozen=True)
class SampleDecoder:
    """Turns one raw sample into {modality: preprocessed value, "index": int, extra key: int, "__key__"}.

    `keys[modality]` lists the member extensions tried in order ("jpg", "png", ...). Every modality in
    `preprocessors` and every `extra_keys` entry is required: a sample lacking one is skipped, never
    padded. Decoding failures raise SkipSample; preprocessor failures are bugs and propagate.
    """

    preprocessors: Mapping[str, Preprocessor]
    keys: Mapping[str, Sequence[str]]
    extra_keys: Sequence[str] = ()

    def __post_init__(self) -> None:
        unknown = [m for m in self.preprocessors if self.reads(m) not in MODALITY_DECODERS]
        if unknown:
            raise ValueError(f"no decoder for modalities {unknown}; known: {sorted(MODALITY_DECODERS)}")
        no_keys = [m for m in self.preprocessors if not self.keys.get(self.reads(m))]
        if no_keys:
            raise ValueError(f"no sample keys configured for modalities {no_keys}")

    def reads(self, field: str) -> str:
        """The data modality whose member feeds batch field `field`: the field itself unless its preprocessor
        is a `ReadsModality` naming another (a second text tower reading the caption)."""
        preprocessor = self.preprocessors[field]
        return preprocessor.reads if isinstance(preprocessor, ReadsModality) else field

    def __call__(self, raw: RawSample, sample_seed: int, restore_rngs: bool = True) -> dict[str, Any]:
        """Decode and preprocess; augmentations draw from global RNGs seeded with `sample_seed`."""
        members = {m: self._member(raw, m) for m in self.preprocessors}
        sample: dict[str, Any] = {"__key__": raw["__key__"]}
        sample["index"] = _int_member(raw, INDEX_KEY) if INDEX_KEY in raw else -1
        for name in self.extra_keys:
            if name not in raw:
                raise SkipSample(f"missing key '{name}'")
            sample[name] = _int_member(raw, name)
        decoded = {}
        for modality, (ext, data) in members.items():
            try:
                decoded[modality] = MODALITY_DECODERS[self.reads(modality)](data, ext)
            except DecodeError as err:
                raise SkipSample(f"{modality} member '{ext}': {err}") from err
        with seeded_global_rngs(sample_seed, restore=restore_rngs):
            for modality, value in decoded.items():
                sample[modality] = self._preprocess(modality, value, raw["__key__"])
        return sample

    @property
    def batch_fields(self) -> list[str]:
        """The per-sample fields the stream stacks into the batch (besides index, extra keys and keys)."""
        return list(self.preprocessors)

    def _member(self, raw: RawSample, modality: str) -> tuple[str, bytes]:
        keys = self.keys[self.reads(modality)]
        for ext in keys:
            if ext in raw:
                return ext, raw[ext]
        present = sorted(k for k in raw if not k.startswith("__"))
        raise SkipSample(f"missing {modality} (none of {list(keys)}; has {present})")

    def _preprocess(self, modality: str, value: Any, key: str) -> Any:
        try:
            return self.preprocessors[modality](value)
        except Exception as err:
            raise RuntimeError(f"{modality} preprocessor failed on sample {key}: {err}") from err


def _int_member(raw: RawSample, name: str) -> int:
    try:
        return decode_int(raw[name])
    except DecodeError as err:
        raise SkipSample(f"key '{name}': {err}") from err


def parse_key_list(spec: str) -> tuple[str, ...]:
    """"jpg;png" -> ("jpg", "png"): the member extensions tried in order."""
    return tuple(part.strip().lower() for part in spec.split(";") if part.strip())
