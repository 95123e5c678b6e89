"""`mmembed reinforce --verify DIR`: prove a finished reinforced dataset is complete and faithful.

Checks, per shard in the manifest: the file exists with the recorded sha256 and sample count; every sample
holds its records and embeddings with the expected shapes (K x ΣD media rows, 1 + n_syn text rows) and
finite values. Then, for a seeded random subset of samples (`replay` of them, or as many as a stated
detection guarantee needs: mmembed.reinforce.replay_sampling), the teachers are rebuilt from `teachers.json`
(their weights must still match the recorded checksums), each stored augmentation is replayed, and the
teacher's fresh embedding must equal the stored one within the storage codec's error.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmembed.config.reinforce import TeacherSpec
from mmembed.data.decode import decode_text
from mmembed.data.samples import MODALITY_DECODERS, parse_key_list
from mmembed.data.stats import SkipStats
from mmembed.data.tar_samples import RawSample, shard_samples
from mmembed.reinforce.media_build import MEDIA_BUILDS
from mmembed.reinforce.replay_sampling import ReplayPlan
from mmembed.reinforce.shard_io import sha256_file
from mmembed.reinforce.teacher_embeddings import text_embeddings
from mmembed.reinforce.teachers import Teacher, build_teacher
from mmembed.reinforced_format.codec import decode_array
from mmembed.reinforced_format.dataset_files import load_manifest
from mmembed.reinforced_format.members import TEXT_EMB, stored_syn

# Largest |stored - recomputed| per component accepted for each codec (unit vectors; int8 <= max|x|/254).
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-3, "int8": 1e-2}


@dataclass
class VerifyReport:
    directory: str
    shards: int = 0
    samples: int = 0
    replayed: int = 0
    max_replay_error: float = 0.0
    errors: list[str] = field(default_factory=list)
    plan: ReplayPlan | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        status = "OK" if self.ok else f"FAILED ({len(self.errors)} problems)"
        lines = [f"{self.directory}: {status}: {self.shards} shards, {self.samples} samples, "
                 f"{self.replayed} samples replayed through the teachers (max |Δ| {self.max_replay_error:.2e})"]
        if self.plan is not None:
            lines.append(f"  {self.plan.describe()}")
        return "\n".join(lines + [f"  - {e}" for e in self.errors[:50]])


def _samples(path: Path) -> Iterator[RawSample]:
    stats = SkipStats()
    yield from shard_samples(str(path), stats)
    if stats.skipped:
        raise ValueError(f"{path}: {stats.skipped} unreadable tar entries")


def check_sample(raw: RawSample, manifest: dict[str, Any]) -> list[str]:
    """Shape and value problems of one stored sample (empty when it is fine)."""
    where = f"{raw['__url__']} sample {raw['__key__']}"
    media, dim = MEDIA_BUILDS[manifest["modality"]], manifest["embedding_dim"]
    k = media.expected_views(manifest)
    problems = []
    try:
        count = media.format.num_views(media.format.read_records(raw))
        if count != k:
            problems.append(f"{where}: {count} augmentation records, expected {k}")
        rows = {media.format.emb_member: k, TEXT_EMB: 1 + len(stored_syn(raw))}
        for key, expected in rows.items():
            emb, codec = decode_array(raw[key], f"{where} {key}")
            if emb.shape != (expected, dim) or codec != manifest["storage"] or not np.isfinite(emb).all():
                problems.append(f"{where}: {key} is {codec} {list(emb.shape)}, expected {manifest['storage']} "
                                f"[{expected}, {dim}] with finite values")
    except (KeyError, ValueError, json.JSONDecodeError) as err:
        problems.append(f"{where}: {type(err).__name__}: {err}")
    return problems


def _rebuild_teachers(manifest: dict[str, Any], device: torch.device) -> list[Teacher]:
    teachers = []
    for entry in manifest["teachers"]:
        spec = TeacherSpec(name=entry["name"], kind=entry["kind"], args=entry["args"], scale=entry["scale"])
        teacher = build_teacher(spec, device)
        if teacher.checksum != entry["sha256"]:
            raise ValueError(f"teacher '{entry['name']}': its weights changed since the build (sha256 "
                             f"{teacher.checksum[:12]}..., recorded {entry['sha256'][:12]}...)")
        teachers.append(teacher)
    return teachers


def replay_error(raw: RawSample, manifest: dict[str, Any], teachers: list[Teacher]) -> float:
    """Max |stored - recomputed| over the sample's media and real-caption embeddings."""
    modality = manifest["modality"]
    media = MEDIA_BUILDS[modality]
    media_ext = next(ext for ext in parse_key_list(manifest[f"{modality}_keys"]) if ext in raw)
    value = MODALITY_DECODERS[modality](raw[media_ext], media_ext)
    fresh = media.teacher_embeddings(teachers, [value], [media.format.read_records(raw)])[0]
    text_ext = next(ext for ext in parse_key_list(manifest["text_keys"]) if ext in raw)
    texts = [decode_text(raw[text_ext], text_ext), *stored_syn(raw)]
    fresh_text = text_embeddings(teachers, [texts])[0]
    stored_media, _ = decode_array(raw[media.format.emb_member])
    stored_text, _ = decode_array(raw[TEXT_EMB])
    return float(max(np.abs(stored_media - fresh).max(), np.abs(stored_text - fresh_text).max()))


def verify_dataset(directory: str | Path, *, replay: int | None = 1, device: str = "cpu", detect: float = 0.01,
                   confidence: float = 0.99, seed: int | None = None) -> VerifyReport:
    """Check counts, checksums and shapes of every sample, and replay a random subset through the teachers:
    `replay` samples, or (replay=None) as many as catching a corrupted fraction >= `detect` with probability
    >= `confidence` needs. `seed` (default: fresh, printed in the report) picks the subset."""
    directory = Path(directory)
    manifest = load_manifest(directory)
    report = VerifyReport(str(directory))
    report.plan = ReplayPlan.build(int(manifest["num_samples"]), count=replay, fraction=detect,
                                   confidence=confidence, seed=seed)
    to_replay: list[RawSample] = []
    offset = 0  # index of the shard's first sample, by the manifest's counts
    for name, info in manifest["shards"].items():
        path = directory / name
        report.shards += 1
        first, offset = offset, offset + int(info["samples"])
        if not path.is_file() or sha256_file(path) != info["sha256"]:
            report.errors.append(f"{path}: missing or its sha256 differs from the manifest")
            continue
        count = 0
        for raw in _samples(path):
            if first + count in report.plan.indices:
                to_replay.append(raw)
            count += 1
            report.errors += check_sample(raw, manifest)
        report.samples += count
        if count != info["samples"]:
            report.errors.append(f"{path}: {count} samples, the manifest records {info['samples']}")
    if report.samples != manifest["num_samples"]:
        report.errors.append(f"{report.samples} samples in total, the manifest records {manifest['num_samples']}")
    if to_replay:
        teachers = _rebuild_teachers(manifest, torch.device(device))
        tolerance = TOLERANCE[manifest["storage"]]
        for raw in to_replay:
            error = replay_error(raw, manifest, teachers)
            report.replayed += 1
            report.max_replay_error = max(report.max_replay_error, error)
            if error > tolerance:
                report.errors.append(f"{raw['__url__']} sample {raw['__key__']}: replaying its augmentations "
                                     f"gives teacher embeddings {error:.3g} away from the stored ones "
                                     f"(tolerance {tolerance} for {manifest['storage']})")
    return report
