"""Session-wide fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small copy of the demo data set (512 train / 96 val samples, 64 per shard), made once per session."""
    from train_support import make_small_demo

    return make_small_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="session")
def small_corpora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo as two small corpora (image-text, audio-text: 256 samples each, 4 shards) plus 64 tri-modal val."""
    from data_tools.make_demo_corpora import make_demo_corpora

    out = tmp_path_factory.mktemp("corpora")
    make_demo_corpora(out, corpus_samples=256, val_samples=64, samples_per_shard=64)
    return out
