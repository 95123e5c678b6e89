"""Reinforced storage: bytes per sample of each codec, and the KD-loss change each causes (docs/reinforced.md).

Run through `benchmarks/reinforced_step.py storage` (the demo table) and `... storage-scaling` (how the change
grows with the teacher scale c and shrinks with the teacher width ΣD, and uniform b-bit references).

Protocol: the demo set's first shard is rebuilt with fp32 storage (the reference); every sample's stored
members ([K, ΣD] augmentation rows, [1 + S, ΣD] caption rows) are encoded with each codec exactly as the
builder does (`encode_array` with the teachers' widths) and decoded. KD = MobileCLIP's distillation term
(`distill_kd`, float64) on batches of 64 samples: teacher rows = augmentation k of each sample and its real
caption, students random unit vectors (64-d) at s = 30, teacher scale c = 100. |ΔKD| = |KD(decoded) −
KD(fp32)|, over every batch of the shard × `DRAWS` student draws (draw d uses augmentation d mod K); the
table gives the maximum (the goal: < 1e-3) and the mean.

Width scaling: the embeddings are mapped into R^D by a fixed random isometry (Q with orthonormal columns).
Inner products, hence the teacher's KD targets, stay exactly the same; only the number of coordinates the
codec quantizes changes, each carrying 1/D of a unit vector's energy, as in a real teacher of width D.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmembed.reinforced_format.codec import decode_array, encode_array, payload_bytes

CODECS = ("fp16", "int8", "int8_residual")
DRAWS = 10
BATCH = 64
LAYOUTS = {"DataCompDR-12M (K=30, 5 syn, ΣD=1536)": (30, 6, 1536, 2),
           "DataCompDR-1B (K=10, 5 syn, ΣD=1536)": (10, 6, 1536, 2)}


def bytes_per_sample(k: int, dim: int) -> dict[str, dict[str, int]]:
    """Embedding bytes per sample (headers included, tar headers not) for the demo and DataCompDR layouts."""
    layouts = {f"demo (K={k}, 0 syn, ΣD={dim})": (k, 1, dim, 1), **LAYOUTS}
    table = {}
    for name, (augs, rows, width, teachers) in layouts.items():
        table[name] = {"datacompdr_fp32": 4 * (augs + rows) * width, **{
            c: payload_bytes(augs, width, c, teachers) + payload_bytes(rows, width, c, teachers)
            for c in ("fp32", *CODECS)}}
    return table


def load_members(shard: Path) -> tuple[np.ndarray, np.ndarray]:
    """(augmentation rows [N, K, D], caption rows [N, R, D]) of every sample of an fp32 reinforced shard."""
    from mmembed.data.stats import SkipStats
    from mmembed.data.tar_samples import shard_samples

    raws = list(shard_samples(str(shard), SkipStats()))
    image = np.stack([decode_array(r["image_emb"])[0] for r in raws])
    text = np.stack([decode_array(r["text_emb"])[0] for r in raws])
    return image, text


def stored(members: np.ndarray, codec: str, groups: list[int]) -> np.ndarray:
    """Each sample's member encoded and decoded as the builder and the loader do."""
    return np.stack([decode_array(encode_array(m, codec, groups))[0] for m in members])


def uniform_bits(bits: int) -> Callable[[np.ndarray, list[int]], np.ndarray]:
    """A per-row uniform quantizer with 2^(bits-1) - 1 levels a side (int8 is bits = 8): the reference curve."""
    levels = 2 ** (bits - 1) - 1

    def quantize(members: np.ndarray, groups: list[int]) -> np.ndarray:
        peak = np.abs(members).max(axis=-1, keepdims=True)
        scale = np.where(peak > 0, peak / levels, 1.0)
        return np.rint(members / scale) * scale

    return quantize


def kd_changes(image: np.ndarray, text: np.ndarray, image_q: np.ndarray, text_q: np.ndarray,
               c: float = 100.0) -> np.ndarray:
    """|ΔKD| for every batch of BATCH samples and every student draw (see the module docstring)."""
    from mmembed.losses.functional import distill_kd

    def unit(x: np.ndarray) -> torch.Tensor:
        return F.normalize(torch.from_numpy(np.ascontiguousarray(x)).double(), dim=1)

    scale, changes = torch.tensor(30.0, dtype=torch.float64), []
    for draw in range(DRAWS):
        gen = torch.Generator().manual_seed(draw)
        k = draw % image.shape[1]
        for start in range(0, image.shape[0] - BATCH + 1, BATCH):
            rows = slice(start, start + BATCH)
            student = [F.normalize(torch.randn(BATCH, 64, generator=gen, dtype=torch.float64), dim=1)
                       for _ in range(2)]
            ref = distill_kd(*student, scale, [unit(image[rows, k])], [unit(text[rows, 0])], [c])
            got = distill_kd(*student, scale, [unit(image_q[rows, k])], [unit(text_q[rows, 0])], [c])
            changes.append(abs(float(got - ref)))
    return np.array(changes)


def relative_rms_error(x: np.ndarray, y: np.ndarray) -> float:
    """RMS quantization error over the RMS of a component (σ = 1/√D for unit rows): −log2 of it is the rate a
    Gaussian source would need at the rate-distortion bound D(R) = σ² 2^(−2R)."""
    return float(np.sqrt(np.mean((x - y) ** 2)) / np.sqrt(np.mean(x**2)))


def codec_rows(image: np.ndarray, text: np.ndarray, groups: list[int], c: float,
               quantizers: dict[str, Callable[[np.ndarray, list[int]], np.ndarray]]) -> dict[str, dict[str, float]]:
    out = {}
    for name, quantize in quantizers.items():
        image_q, text_q = quantize(image, groups), quantize(text, groups)
        changes = kd_changes(image, text, image_q, text_q, c)
        out[name] = {"kd_max": float(changes.max()), "kd_mean": float(changes.mean()),
                     "rms_error_over_sigma": relative_rms_error(np.concatenate([image, text], 1),
                                                                np.concatenate([image_q, text_q], 1))}
    return out


def codec_quantizers() -> dict[str, Callable[[np.ndarray, list[int]], np.ndarray]]:
    return {codec: (lambda m, g, codec=codec: stored(m, codec, g)) for codec in CODECS}


def isometry(x: np.ndarray, width: int, seed: int = 1) -> np.ndarray:
    """x [..., d] -> [..., width] through fixed orthonormal columns: every inner product is unchanged."""
    d = x.shape[-1]
    if width == d:
        return x
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((width, d)))
    return (x.astype(np.float64) @ q.T).astype(np.float32)


def storage_table(shard: Path, k: int, dim: int) -> dict[str, Any]:
    image, text = load_members(shard)
    groups = [dim]
    return {"bytes_per_sample": bytes_per_sample(k, dim),
            "kd_change_vs_fp32": codec_rows(image, text, groups, 100.0, codec_quantizers()),
            "samples": int(image.shape[0]), "batches": int(image.shape[0] // BATCH), "draws": DRAWS,
            "teacher_dim": dim, "augmentations": int(image.shape[1]), "within_sample_augmentation_cos":
            within_sample_cosine(image)}


def within_sample_cosine(image: np.ndarray) -> float:
    """Mean cosine between two different augmentations of one sample: what int8_residual exploits."""
    unit = image / np.linalg.norm(image, axis=-1, keepdims=True)
    cos = np.einsum("nkd,njd->nkj", unit, unit)
    k = image.shape[1]
    return float(cos[:, ~np.eye(k, dtype=bool)].mean()) if k > 1 else 1.0


def scaling_table(shard: Path, widths: tuple[int, ...] = (64, 256, 768, 1536),
                  scales: tuple[float, ...] = (10.0, 30.0, 100.0)) -> dict[str, Any]:
    image, text = load_members(shard)
    quantizers = {**codec_quantizers(), **{f"uniform{b}": uniform_bits(b) for b in (9, 10, 12)}}
    rows: dict[str, Any] = {}
    for width in widths:
        wide_image, wide_text = isometry(image, width), isometry(text, width)
        for c in scales if width in (widths[0], 768) else (100.0,):
            rows[f"D={width} c={c:g}"] = codec_rows(wide_image, wide_text, [width], c, quantizers)
            print(f"  D={width} c={c:g}: " + ", ".join(f"{n} {v['kd_max']:.1e}" for n, v in
                                                      rows[f"D={width} c={c:g}"].items()), flush=True)
    return {"rows": rows, "draws": DRAWS, "batches": int(image.shape[0] // BATCH)}


def decorrelated(rows: np.ndarray, cosine: float, count: int, seed: int) -> np.ndarray:
    """`count` rows per sample whose mean pairwise cosine is about `cosine` x that of `rows`' own rows: each
    row plus isotropic noise (σ² = 1/cosine - 1), renormalised; with count > rows' rows, rows[:, 0] is kept
    first and the others are noisy copies of it (a real caption and synthetic ones)."""
    rng = np.random.default_rng(seed)
    sigma = math.sqrt(1.0 / cosine - 1.0)
    unit = rows / np.linalg.norm(rows, axis=-1, keepdims=True)
    if count > rows.shape[1]:
        base = np.repeat(unit[:, :1], count, axis=1)
        noisy = base + sigma * rng.standard_normal(base.shape) / math.sqrt(rows.shape[-1])
        noisy[:, 0] = unit[:, 0]
    else:
        noisy = unit + sigma * rng.standard_normal(unit.shape) / math.sqrt(rows.shape[-1])
    return (noisy / np.linalg.norm(noisy, axis=-1, keepdims=True)).astype(np.float32)


def correlation_table(shard: Path, width: int = 768, c: float = 100.0,
                      cosines: tuple[float, ...] = (0.9, 0.8, 0.7, 0.5)) -> dict[str, Any]:
    """int8_residual's gain as the rows of a sample grow apart (stronger augmentations, 5 synthetic captions,
    as in DataCompDR), at width `width` and teacher scale c: the demo's augmentation rows made less alike, and
    its one caption row joined by 5 noisy copies (the KD term still uses row 0 of each)."""
    image, text = load_members(shard)
    image, text = isometry(image, width), isometry(text, width)
    quantizers = {n: q for n, q in codec_quantizers().items() if n != "fp16"} | {"uniform10": uniform_bits(10)}
    rows = {}
    for cosine in cosines:
        wide_image, wide_text = decorrelated(image, cosine, image.shape[1], 0), decorrelated(text, cosine, 6, 1)
        found = {"image_rows_cos": within_sample_cosine(wide_image),
                 "caption_rows_cos": within_sample_cosine(wide_text)}
        rows[f"cos {cosine:g}"] = {**found, **codec_rows(wide_image, wide_text, [width], c, quantizers)}
        print(f"  D={width} c={c:g} image rows cos {found['image_rows_cos']:.2f}, caption rows cos "
              f"{found['caption_rows_cos']:.2f}: " + ", ".join(
                  f"{n} {v['kd_max']:.1e}" for n, v in rows[f"cos {cosine:g}"].items() if isinstance(v, dict)),
              flush=True)
    return rows


def rd_bits(rows: int, cosine: float, rms_over_sigma: float) -> float:
    """Bits per component a Gaussian source of `rows` unit rows with pairwise cosine `cosine` needs, at the
    rate-distortion bound, for an RMS error of `rms_over_sigma` × σ per component: its Karhunen-Loève basis is
    the mean row (variance σ²(1 + (R-1)ρ)) and R-1 deviation rows (σ²(1 - ρ)), each coded at
    ½ log2(variance / distortion) (reverse water-filling with the distortion below every variance)."""
    mean = 0.5 * math.log2((1 + (rows - 1) * cosine) / rms_over_sigma**2)
    deviation = 0.5 * math.log2(max(1.0 - cosine, 1e-12) / rms_over_sigma**2) if rows > 1 else 0.0
    return (mean + (rows - 1) * deviation) / rows


def kd_per_rms(rows: dict[str, Any]) -> list[float]:
    """max |ΔKD| / (RMS error / σ) of every measured codec in `rows` (one width and teacher scale)."""
    return sorted(v["kd_max"] / v["rms_error_over_sigma"] for row in rows.values() for v in row.values()
                  if isinstance(v, dict) and v["rms_error_over_sigma"] > 0)


def rd_table(correlation: dict[str, Any], width_rows: dict[str, Any], goal: float = 1e-3) -> dict[str, Any]:
    """Bits per component at the rate-distortion bound for DataCompDR-12M's members (K = 30 augmentation
    rows, 6 caption rows) at the measured within-sample cosines, for the RMS error that keeps max |ΔKD| < goal:
    goal / (max |ΔKD| per unit RMS error), taking the worst and the median ratio measured at this width and
    scale. Next to them: the 0.27× fp32 budget (8.64 bits), what int8_residual spends at that layout, and the
    RMS error the bound allows at int8_residual's rate vs the one int8_residual reaches."""
    ratios = kd_per_rms({"width": width_rows, **correlation})
    targets = {"worst": goal / ratios[-1], "median": goal / ratios[len(ratios) // 2]}
    spent = 8 * (payload_bytes(30, 1536, "int8_residual", 2) + payload_bytes(6, 1536, "int8_residual", 2)) / (36 * 1536)
    out: dict[str, Any] = {"rms_over_sigma_needed": targets, "budget_bits": 0.27 * 32, "int8_residual_bits": spent}
    for name, row in correlation.items():

        def bits(target: float, row: dict[str, Any] = row) -> float:
            image, caption = rd_bits(30, row["image_rows_cos"], target), rd_bits(6, row["caption_rows_cos"], target)
            return (30 * image + 6 * caption) / 36

        out[name] = {**{f"bits_{k}": bits(t) for k, t in targets.items()},
                     "bound_rms_at_int8_residual_bits": 2.0 ** (bits(1.0) - spent),
                     "int8_residual_rms": row["int8_residual"]["rms_error_over_sigma"]}
    return out


def format_rows(rows: dict[str, dict[str, float]]) -> str:
    lines = [f"{'codec':<15}{'max |ΔKD|':>11}{'mean |ΔKD|':>12}{'rms err/σ':>11}{'bits (R-D)':>11}"]
    for name, v in rows.items():
        bits = -math.log2(v["rms_error_over_sigma"]) if v["rms_error_over_sigma"] > 0 else float("inf")
        lines.append(f"{name:<15}{v['kd_max']:>11.2e}{v['kd_mean']:>12.2e}{v['rms_error_over_sigma']:>11.2e}"
                     f"{bits:>11.2f}")
    return "\n".join(lines)


def dump(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=1, default=str)
