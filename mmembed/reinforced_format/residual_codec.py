"""The `int8_residual` storage codec: the rows of one member coded jointly, a 12-bit mean row + int8 residuals.

A reinforced sample stores K rows per teacher that are strongly alike (K augmentations of one image, or
captions of one image). Coding each row alone (`int8`) spends its 8 bits on what the rows share. Here the
rows [R, D] are first turned by the orthonormal Helmert matrix H (R×R) into c = H x: row 0 is √R × their mean,
rows 1..R-1 an orthonormal basis of the deviations from it. Row 0 is quantized to 12 bits (scale max|c_0| /
2047) and the deviation rows to 8 bits, each with its own scale (max|c_r| / 127); decoding is x = Hᵀ ĉ.
Scales are per teacher (`groups`, as in `int8`) and per row; appending a teacher (`append_groups`) copies
the stored teachers' codes, so their decoded values stay exactly the same.

Error, per component of row k: |x̂_k − x_k| <= Σ_r |H_rk| · scale_r / 2 (tested). Its mean square is that of
the coefficients (H is orthonormal): (1/R) Σ_r scale_r² / 12, i.e. the 12-bit mean costs 1/16 of int8's error
and the deviation rows cost int8's error times (their peak / a row's peak). Bytes per row and teacher
dimension: 1 + 0.5 / R (plus 4 bytes of scale per row and teacher), vs 1 for `int8`.

Payload: uint16 group count, uint32 group widths, float32 scales [R, G], the 12-bit mean row packed two
values per 3 bytes, then int8 deviations [R-1, D].
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

MEAN_LEVELS = 2047  # 12-bit signed: -2047..2047
ROW_LEVELS = 127


def _slices(groups: Sequence[int]) -> list[slice]:
    edges = np.cumsum([0, *groups])
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(edges)]


@lru_cache(maxsize=64)
def helmert(rows: int) -> np.ndarray:
    """The orthonormal Helmert matrix [rows, rows]: row 0 = 1/√n; row r compares element r with those before."""
    h = np.zeros((rows, rows))
    h[0] = 1.0 / np.sqrt(rows)
    for r in range(1, rows):
        norm = np.sqrt(r * (r + 1.0))
        h[r, :r] = 1.0 / norm
        h[r, r] = -r / norm
    h.setflags(write=False)
    return h


def _pack12(values: np.ndarray) -> bytes:
    """Signed 12-bit integers (|v| <= 2047) -> 3 bytes per pair (an odd count is padded with one 0)."""
    u = (values.astype(np.int32) + 2048).astype(np.uint16)
    if u.size % 2:
        u = np.append(u, np.uint16(2048))
    a, b = u[0::2], u[1::2]
    packed = np.stack([a & 0xFF, (a >> 8) | ((b & 0xF) << 4), b >> 4], axis=1).astype(np.uint8)
    return packed.tobytes()


def _unpack12(data: bytes, count: int) -> np.ndarray:
    raw = np.frombuffer(data, dtype=np.uint8, count=3 * ((count + 1) // 2)).reshape(-1, 3).astype(np.int32)
    a = raw[:, 0] | ((raw[:, 1] & 0xF) << 8)
    b = (raw[:, 1] >> 4) | (raw[:, 2] << 4)
    return np.stack([a, b], axis=1).reshape(-1)[:count] - 2048


@dataclass
class Coded:
    """The quantized form: per-teacher widths, scales [R, G], 12-bit mean codes [D], int8 deviations [R-1, D]."""

    groups: list[int]
    scales: np.ndarray
    mean: np.ndarray
    deviations: np.ndarray


def _quantize(c: np.ndarray, parts: list[slice], levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row and group: (scales [rows, G] float32 = peak / levels, integer codes [rows, D])."""
    peaks = np.stack([np.abs(c[:, s]).max(axis=1) for s in parts], axis=1)
    scales = np.where(peaks > 0, peaks / levels, 1.0).astype(np.float32)
    codes = np.empty(c.shape, dtype=np.int32)
    for g, s in enumerate(parts):
        codes[:, s] = np.clip(np.rint(c[:, s] / scales[:, g:g + 1]), -levels, levels)
    return scales, codes


def quantize(x: np.ndarray, groups: Sequence[int]) -> Coded:
    rows = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
    if rows.shape[0] < 1:
        raise ValueError(f"int8_residual needs at least one row, got shape {list(x.shape)}")
    parts = _slices(groups)
    c = helmert(rows.shape[0]) @ rows
    mean_scales, mean_codes = _quantize(c[:1], parts, MEAN_LEVELS)
    dev_scales, dev_codes = _quantize(c[1:], parts, ROW_LEVELS)
    return Coded(list(groups), np.concatenate([mean_scales, dev_scales]), mean_codes[0], dev_codes)


def to_bytes(coded: Coded) -> bytes:
    header = struct.pack(f"<H{len(coded.groups)}I", len(coded.groups), *coded.groups)
    return (header + coded.scales.astype(np.float32).tobytes() + _pack12(coded.mean)
            + coded.deviations.astype(np.int8).tobytes())


def from_bytes(data: bytes, shape: tuple[int, ...]) -> Coded:
    (count,) = struct.unpack_from("<H", data)
    groups = list(struct.unpack_from(f"<{count}I", data, 2))
    cols, rows = shape[-1], int(np.prod(shape[:-1]))
    offset = 2 + 4 * count
    mean_bytes = 3 * ((cols + 1) // 2)
    need = offset + 4 * rows * count + mean_bytes + (rows - 1) * cols
    if len(data) < need or sum(groups) != cols:
        raise ValueError(f"{len(data)} bytes with groups {groups}, need {need} bytes and groups summing to {cols}")
    scales = np.frombuffer(data, dtype=np.float32, count=rows * count, offset=offset).reshape(rows, count)
    offset += 4 * rows * count
    mean = _unpack12(data[offset:offset + mean_bytes], cols)
    deviations = np.frombuffer(data, dtype=np.int8, count=(rows - 1) * cols, offset=offset + mean_bytes)
    return Coded(groups, scales, mean, deviations.reshape(rows - 1, cols).astype(np.int32))


def dequantize(coded: Coded) -> np.ndarray:
    """[R, D] float32 rows from the codes."""
    c = np.concatenate([coded.mean[None].astype(np.float64), coded.deviations.astype(np.float64)])
    for g, s in enumerate(_slices(coded.groups)):
        c[:, s] *= coded.scales[:, g:g + 1]
    return (helmert(c.shape[0]).T @ c).astype(np.float32)


def encode(x: np.ndarray, groups: Sequence[int]) -> bytes:
    return to_bytes(quantize(x, groups))


def decode(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    return dequantize(from_bytes(data, shape)).reshape(shape)


def append_groups(data: bytes, shape: tuple[int, ...], extra: np.ndarray, extra_groups: Sequence[int]) -> bytes:
    """The stored array with more teachers' columns appended; the stored teachers' codes are copied as they
    are (groups are quantized independently), so their decoded values do not change."""
    old, new = from_bytes(data, shape), quantize(extra, extra_groups)
    if new.scales.shape[0] != old.scales.shape[0]:
        raise ValueError(f"cannot append {new.scales.shape[0]} rows to a stored array of {old.scales.shape[0]}")
    deviations = np.concatenate([old.deviations, new.deviations], axis=1)
    return to_bytes(Coded(old.groups + new.groups, np.concatenate([old.scales, new.scales], axis=1),
                          np.concatenate([old.mean, new.mean]), deviations))


def payload_size(rows: int, dim: int, groups: int) -> int:
    """Bytes of `encode`'s payload for a [rows, dim] array split into `groups` teachers."""
    return 2 + 4 * groups + 4 * rows * groups + 3 * ((dim + 1) // 2) + (rows - 1) * dim
