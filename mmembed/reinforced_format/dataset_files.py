"""The dataset-level files of a finished reinforced dataset, and reading them back.

    manifest.json   settings, teachers, per-shard counts and checksums (written by mmembed.reinforce.manifest)
    teachers.json   {"teachers": [{name, kind, args, dim, scale, sha256}, ...]}, in storage order
    sizes.json      shard file name -> samples, as for any shard folder
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmembed.errors import CorruptFileError, MissingFileError

MANIFEST = "manifest.json"
TEACHERS_FILE = "teachers.json"
SIZES = "sizes.json"
FORMAT = "mmembed-reinforced/1"


def load_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise MissingFileError(f"no {MANIFEST} in {directory}: the build is unfinished (re-run the same "
                               "`mmembed reinforce` command to complete it) or this is not a reinforced dataset")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFileError(path, f"not valid JSON: {err}") from err
    if not isinstance(manifest, dict):
        raise CorruptFileError(path, "not a JSON object")
    if manifest.get("format") != FORMAT:
        raise CorruptFileError(path, f"unknown format {manifest.get('format')!r}, expected {FORMAT}")
    return manifest


def teacher_layout(manifest: dict[str, Any]) -> tuple[list[int], list[float]]:
    """(width, logit scale) of each teacher's part of the stored embeddings, in storage order."""
    teachers = manifest.get("teachers") or []
    return [int(t["dim"]) for t in teachers], [float(t["scale"]) for t in teachers]
