"""`manifest.json`, `teachers.json` and `sizes.json` of a finished reinforced dataset.

The manifest proves completeness: per output shard its source shard, sample count, skipped (unreadable)
source samples and sha256, plus the teachers, augmentation settings, captioner and seed. It holds no
timestamps or host names, so an interrupted-and-resumed build yields the same manifest as an uninterrupted
one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmembed.config.reinforce import ReinforceConfig
from mmembed.reinforce.captioner import Captioner
from mmembed.reinforce.media_build import MEDIA_BUILDS
from mmembed.reinforce.shard_io import atomic_write_json, read_done
from mmembed.reinforce.teachers import Teacher
from mmembed.reinforced_format.dataset_files import FORMAT, MANIFEST, SIZES, TEACHERS_FILE, load_manifest

__all__ = ["build_fingerprint", "load_manifest", "maybe_write_manifest", "teacher_ids"]
_SHARD_FIELDS = ("source", "samples", "sha256", "bytes", "skipped", "unreadable", "captions_generated",
                 "captions_rejected")


def teacher_ids(teachers: Sequence[Teacher]) -> list[str]:
    """Stable teacher identities: name plus weights checksum."""
    return [f"{t.name}@{t.checksum}" for t in teachers]


def _settings(cfg: ReinforceConfig, captioner: Captioner | None) -> dict[str, Any]:
    settings: dict[str, Any] = {"modality": cfg.modality, "seed": cfg.seed, "storage": cfg.storage,
                                "captioner": captioner.describe() if captioner is not None else None,
                                "batch_size": cfg.batch_size, "image_keys": cfg.image_keys,
                                "text_keys": cfg.text_keys, "audio_keys": cfg.audio_keys}
    settings.update(MEDIA_BUILDS[cfg.modality].settings(cfg))
    return settings


def build_fingerprint(cfg: ReinforceConfig, captioner: Captioner | None) -> str:
    """Hash of every setting that changes stored bytes (teachers excluded: they may be appended)."""
    text = json.dumps(_settings(cfg, captioner), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def maybe_write_manifest(cfg: ReinforceConfig, sources: Sequence[str], teachers: Sequence[Teacher],
                         captioner: Captioner | None, fingerprint: str) -> bool:
    """Write the dataset-level files when every shard is complete with these teachers; else return False."""
    out = Path(cfg.output_dir)
    ids = teacher_ids(teachers)
    shards: dict[str, dict[str, Any]] = {}
    for url in sources:
        name = os.path.basename(url)
        done = read_done(out / name)
        if done is None or done.get("teachers") != ids or done.get("fingerprint") != fingerprint:
            return False
        shards[name] = {k: done[k] for k in _SHARD_FIELDS if k in done}
    described = [t.describe() for t in teachers]
    manifest = {
        "format": FORMAT,
        **_settings(cfg, captioner),
        "fingerprint": fingerprint,
        "teachers": described,
        "embedding_dim": sum(t.dim for t in teachers),
        "num_samples": sum(s["samples"] for s in shards.values()),
        "num_skipped": sum(len(s.get("skipped", [])) + s.get("unreadable", 0) for s in shards.values()),
        "shards": shards,
    }
    atomic_write_json(out / TEACHERS_FILE, {"teachers": described})
    _merge_sizes(out / SIZES, {name: s["samples"] for name, s in shards.items()})
    atomic_write_json(out / MANIFEST, manifest)
    return True


def _merge_sizes(path: Path, sizes: dict[str, int]) -> None:
    existing = json.loads(path.read_text()) if path.is_file() else {}
    existing.update(sizes)
    atomic_write_json(path, dict(sorted(existing.items())))
