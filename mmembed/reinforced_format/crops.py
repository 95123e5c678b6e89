"""Audio crop records (`acrop.json`): where the K stored views of a recording start, in samples."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class AudioCrops:
    """K crops of `length` samples at `sample_rate`, starting at `offsets` (the source recording's rate)."""

    sample_rate: int
    length: int
    offsets: tuple[int, ...]

    def to_json(self) -> dict[str, object]:
        return {"sample_rate": self.sample_rate, "length": self.length, "offsets": list(self.offsets)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AudioCrops:
        try:
            return cls(int(data["sample_rate"]), int(data["length"]), tuple(int(o) for o in data["offsets"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"invalid audio crop record {data!r}: {err}") from err

    @classmethod
    def from_bytes(cls, data: bytes) -> AudioCrops:
        return cls.from_json(json.loads(data))

    def clip(self, waveform: np.ndarray, k: int) -> np.ndarray:
        """Crop k, zero-padded to `length` when the recording is shorter."""
        start = self.offsets[k]
        piece = waveform[start:start + self.length]
        if piece.shape[0] < self.length:
            piece = np.pad(piece, (0, self.length - piece.shape[0]))
        return np.ascontiguousarray(piece, dtype=np.float32)
