"""Session-wide fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each worker takes an equal share of the cores: N workers each running torch with
    every core's worth of threads would oversubscribe the CPU (on 2 cores, 2 x 2 threads spin against each
    other). Subprocesses the tests start (accelerate launch, exports) inherit the share."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        share = max(1, (os.cpu_count() or 1) // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(share))
        torch.set_num_threads(share)


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
