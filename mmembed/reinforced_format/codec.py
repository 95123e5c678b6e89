"""Storage codecs for the stored teacher embeddings (`image_emb`, `text_emb`, `audio_emb` members).

Every member is self-describing: a 4-byte magic, a 1-byte codec id, a 1-byte rank, the shape as uint32s,
then the payload. Codecs:
- `fp32`: raw float32 (DataCompDR's precision);
- `fp16` (default): float16; relative error <= 2^-11 per component;
- `int8`: one float32 scale per vector (max |x| / 127) and int8 values; absolute error <= scale / 2 per
  component, i.e. <= max|x| / 254. A "vector" is one teacher's embedding: a row [ΣD] is split into the
  teachers' `groups` widths, so each teacher's unit vector keeps its own accuracy, and appending a teacher
  later re-encodes the old parts losslessly (their peaks, hence scales, are unchanged).
Decoding always returns float32.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

MAGIC = b"MMRE"
_HEADER = struct.Struct("<4sBB")


@dataclass(frozen=True)
class Codec:
    name: str
    ident: int
    encode_payload: Callable[[np.ndarray, Sequence[int]], bytes]
    decode_payload: Callable[[bytes, tuple[int, ...]], np.ndarray]


def _segments(groups: Sequence[int]) -> list[slice]:
    edges = np.cumsum([0, *groups])
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(edges)]


def _int8_encode(x: np.ndarray, groups: Sequence[int]) -> bytes:
    rows = x.reshape(-1, x.shape[-1])
    parts = _segments(groups)
    peak = np.stack([np.abs(rows[:, s]).max(axis=1) for s in parts], axis=1)  # [rows, G]
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.empty(rows.shape, dtype=np.int8)
    for g, s in enumerate(parts):
        q[:, s] = np.clip(np.rint(rows[:, s] / scale[:, g:g + 1]), -127, 127)
    header = struct.pack(f"<H{len(groups)}I", len(groups), *groups)
    return header + scale.tobytes() + q.tobytes()


def _int8_decode(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    (count,) = struct.unpack_from("<H", data)
    groups = struct.unpack_from(f"<{count}I", data, 2)
    offset = 2 + 4 * count
    cols = shape[-1]
    rows = int(np.prod(shape[:-1]))
    scale = np.frombuffer(data, dtype=np.float32, count=rows * count, offset=offset).reshape(rows, count)
    q = np.frombuffer(data, dtype=np.int8, offset=offset + 4 * rows * count, count=rows * cols)
    out = q.reshape(rows, cols).astype(np.float32)
    for g, s in enumerate(_segments(groups)):
        out[:, s] *= scale[:, g:g + 1]
    return out.reshape(shape)


def _plain(dtype: type) -> tuple[Callable[[np.ndarray, Sequence[int]], bytes],
                                 Callable[[bytes, tuple[int, ...]], np.ndarray]]:
    def encode(x: np.ndarray, groups: Sequence[int]) -> bytes:
        return np.ascontiguousarray(x, dtype=dtype).tobytes()

    def decode(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
        return np.frombuffer(data, dtype=dtype, count=int(np.prod(shape))).reshape(shape).astype(np.float32)

    return encode, decode


CODECS: dict[str, Codec] = {
    "fp32": Codec("fp32", 0, *_plain(np.float32)),
    "fp16": Codec("fp16", 1, *_plain(np.float16)),
    "int8": Codec("int8", 2, _int8_encode, _int8_decode),
}
_BY_ID = {codec.ident: codec for codec in CODECS.values()}


def get_codec(name: str) -> Codec:
    if name not in CODECS:
        raise ValueError(f"unknown storage codec {name!r}; choose one of {sorted(CODECS)}")
    return CODECS[name]


def encode_array(x: np.ndarray, codec: str, groups: Sequence[int] | None = None) -> bytes:
    """float array [..., D] (rank 1..255) -> self-describing bytes; `groups` split D into vectors (int8 scales)."""
    array = np.asarray(x, dtype=np.float32)
    if array.ndim < 1 or array.shape[-1] < 1:
        raise ValueError(f"cannot store an embedding array of shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("cannot store non-finite embeddings")
    widths = list(groups) if groups else [array.shape[-1]]
    if sum(widths) != array.shape[-1] or min(widths) < 1:
        raise ValueError(f"groups {widths} must be positive and sum to the last dimension {array.shape[-1]}")
    chosen = get_codec(codec)
    header = _HEADER.pack(MAGIC, chosen.ident, array.ndim) + struct.pack(f"<{array.ndim}I", *array.shape)
    return header + chosen.encode_payload(array, widths)


def decode_array(data: bytes, what: str = "embedding") -> tuple[np.ndarray, str]:
    """Bytes from `encode_array` -> (float32 array, codec name)."""
    if len(data) < _HEADER.size or data[:4] != MAGIC:
        raise ValueError(f"{what}: not an mmembed embedding member (bad magic {data[:4]!r})")
    _, ident, ndim = _HEADER.unpack_from(data)
    if ident not in _BY_ID:
        raise ValueError(f"{what}: unknown codec id {ident}")
    offset = _HEADER.size + 4 * ndim
    shape = struct.unpack_from(f"<{ndim}I", data, _HEADER.size)
    codec = _BY_ID[ident]
    try:
        return codec.decode_payload(data[offset:], tuple(shape)), codec.name
    except ValueError as err:
        raise ValueError(f"{what}: truncated {codec.name} payload for shape {list(shape)}: {err}") from err


def payload_bytes(rows: int, dim: int, codec: str, groups: int = 1) -> int:
    """Bytes of the encoded [rows, dim] array, header included (for the storage table in the docs)."""
    per_value = {"fp32": 4, "fp16": 2, "int8": 1}[get_codec(codec).name]
    extra = 2 + 4 * groups + 4 * rows * groups if codec == "int8" else 0
    return _HEADER.size + 8 + rows * dim * per_value + extra
