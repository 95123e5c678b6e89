"""Which checkpoints `--resume latest` tries, in order: the one LATEST names, then the rest, newest first.

Kept apart from the writer so that any checkpoint layout with the same `checkpoints/step_*/` + `LATEST`
convention (e.g. a sharded writer) shares the same fallback order.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

log = logging.getLogger("mmembed.train")

LATEST = "LATEST"
STEP_DIR = re.compile(r"^step_(\d{8})$")


def step_dirs(root: Path) -> list[Path]:
    """The checkpoint folders under `root`, oldest step first (hidden temporary folders excluded)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name))


def read_latest(root: Path) -> str | None:
    """The folder name LATEST holds, or None when there is no LATEST (or it is unreadable, with a warning)."""
    path = root / LATEST
    if not path.is_file():
        return None
    try:
        name = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as err:
        log.warning("%s is unreadable (%s); trying the checkpoints newest first", path, err)
        return None
    if not STEP_DIR.match(name):
        log.warning("%s holds %r, not a checkpoint folder name; trying the checkpoints newest first", path, name)
        return None
    return name


def resume_candidates(root: Path) -> list[Path]:
    """LATEST's checkpoint (even when it is missing: the caller reports that), then the others, newest first."""
    latest = read_latest(root)
    others = [p for p in reversed(step_dirs(root)) if p.name != latest]
    return ([root / latest] if latest else []) + others
