"""Session-wide fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small copy of the demo data set (512 train / 96 val samples, 64 per shard), made once per session."""
    from train_support import make_small_demo

    return make_small_demo(tmp_path_factory.mktemp("demo"))
