"""Helpers of the fault-injection suite (tests/test_faults_*.py): tiny runs, damaged files, bad shards, and
assertions on the outcome classes (one-line user error, clean skip with key, exact resume)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import soundfile as sf
from train_support import DEMO_RECIPE, run_cli, tiny_overrides

from mmembed.config import ExperimentConfig, load_recipe


def tiny_config(data: Path, run_dir: Path, steps: int = 4, **extra: object) -> ExperimentConfig:
    """The demo recipe cut to image-text, batch 8, in-process data loading, no eval: about 0.2 s a step."""
    values: dict[str, object] = {"data.num_workers": 0, "data.batch_size": 8, "eval.zeroshot": "[]",
                                 "eval.retrieval": "[]", "train.save_every": 2, "train.keep_last": 0}
    values.update(extra)
    config = load_recipe(DEMO_RECIPE, tiny_overrides(data, run_dir, steps=steps, **values))
    del config.model.modalities["audio"]
    config.model.pairs = config.model.pairs[:1]
    return config


def cli_overrides(data: Path, run_dir: Path, steps: int = 4, **extra: object) -> list[str]:
    """`mmembed train` arguments for the same kind of run (all three modalities: the CLI reads the recipe)."""
    values: dict[str, object] = {"data.num_workers": 0, "data.batch_size": 8, "eval.zeroshot": "[]",
                                 "eval.retrieval": "[]", "train.save_every": 2, "train.keep_last": 0}
    values.update(extra)
    return ["train", str(DEMO_RECIPE), *tiny_overrides(data, run_dir, steps=steps, **values)]


def assert_one_line_error(proc: subprocess.CompletedProcess, command: str, *needles: str) -> str:
    """Exit code 2, no traceback, and a last stderr line `mmembed <command>: error: ...` holding every needle."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, f"exit {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = lines[-1]
    assert last.startswith(f"mmembed {command}: error: "), last
    for needle in needles:
        assert needle in last, (needle, last)
    return last


def mmembed(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return run_cli(args, timeout=timeout)


# -- damaging files ------------------------------------------------------------------------------------
def overwrite_middle(path: Path, nbytes: int = 64) -> None:
    """Bit rot: overwrite bytes in the middle of the file; the size stays the same."""
    with open(path, "r+b") as handle:
        handle.seek(os.path.getsize(path) // 2)
        handle.write(b"\xff" * nbytes)


def truncate_half(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)


def checkpoint(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:08d}"


def latest(run_dir: Path) -> str:
    return (run_dir / "checkpoints" / "LATEST").read_text().strip()


def rewrite_checksums(checkpoint_dir: Path) -> None:
    """What a careless copy tool or a tampering user does: make trainer.json agree with the current bytes."""
    from mmembed.integrity import describe_files

    meta_path = checkpoint_dir / "trainer.json"
    meta = json.loads(meta_path.read_text())
    meta["files"] = describe_files(checkpoint_dir, sorted(meta["files"]))
    meta_path.write_text(json.dumps(meta))


# -- bad shards ----------------------------------------------------------------------------------------
def copy_shard_without(src: Path, dst: Path, drop_ext: str) -> Path:
    """A copy of a shard whose samples all lack the `drop_ext` member (e.g. no captions)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for member in tin.getmembers():
            if not member.name.endswith(f".{drop_ext}"):
                tout.addfile(member, tin.extractfile(member))
    return dst


def float_wav_bytes(values: np.ndarray, sample_rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, values.astype(np.float32), sample_rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()
