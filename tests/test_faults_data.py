"""Fault injection, data: bad shards never hang a run (one error naming the reason and the shards, on every
rank), repeated skips are rate-limited, samples of every image mode decode correctly, absurd audio is
skipped with its key, a non-finite step names its samples, and eval counts what it skipped."""

from __future__ import annotations

import io
import itertools
import json
import logging
import re
import signal
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from fault_support import (
    assert_one_line_error,
    cli_overrides,
    copy_shard_without,
    float_wav_bytes,
    mmembed,
    tiny_config,
)
from PIL import Image
from test_data_support import PLAIN, char_tokens, png_bytes, sample_members

from data_tools.shard_writer import SizedShardWriter
from mmembed.config.data import DataConfig, ShardSource
from mmembed.data import build_eval_loader, build_train_loader
from mmembed.data.decode import DecodeError, decode_audio, decode_image
from mmembed.errors import DataError


class Hang(BaseException):
    """Not an Exception: webdataset's error handlers, which swallow Exceptions, must not swallow this one."""


@contextmanager
def within(seconds: float) -> Iterator[None]:
    """Fail instead of hanging: the old behaviour of these inputs was to spin forever."""
    def expire(signum: int, frame: object) -> None:
        raise Hang(f"no result within {seconds} s: the pipeline hangs")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def captionless(small_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Two demo shards with image and audio but no caption (the hang reported in issue 12)."""
    out = tmp_path_factory.mktemp("nocap")
    return [str(copy_shard_without(small_demo / "train" / f"train-00000{i}.tar", out / f"nocap-{i}.tar", "txt"))
            for i in (0, 1)]


@pytest.mark.parametrize("workers", [0, 2])
def test_samples_all_missing_a_modality_stop_with_one_error(captionless: list[str], workers: int) -> None:
    cfg = DataConfig(train=[ShardSource(urls=captionless)], num_workers=workers, max_consecutive_skips=200)
    loader = build_train_loader(cfg, PLAIN, batch_size=4, seed=0)
    with within(60), pytest.raises(DataError) as raised:
        next(iter(loader))
    message = str(raised.value)
    assert "\n" not in message and "Traceback" not in message
    assert "the last 200 samples were all unusable" in message and "missing text x200" in message
    assert "none of ['txt', 'text', 'caption', 'json']" in message  # which member, and what was there
    assert all(Path(shard).name in message for shard in captionless)
    assert "data.max_consecutive_skips" in message and "rank 0" in message


def test_shards_without_any_sample_stop_with_one_error(tmp_path: Path) -> None:
    empty = []
    for i in range(3):
        path = tmp_path / f"empty-{i}.tar"
        with tarfile.open(path, "w") as tar:  # a valid tar holding only a stray file without a sample key
            info = tarfile.TarInfo("README")
            tar.addfile(info, io.BytesIO(b""))
        empty.append(str(path))
    cfg = DataConfig(train=[ShardSource(urls=empty)], num_workers=0)
    with within(60), pytest.raises(DataError, match=r"shards read .*held no samples"):
        next(iter(build_train_loader(cfg, PLAIN, batch_size=4, seed=0)))


def test_repeated_skips_are_rate_limited(captionless: list[str], caplog: pytest.LogCaptureFixture) -> None:
    """1000 caption-less samples: a handful of lines, each naming the rank, instead of 1000."""
    cfg = DataConfig(train=[ShardSource(urls=captionless)], num_workers=0, shuffle_buffer=0)
    caplog.set_level(logging.WARNING, logger="mmembed.data")
    loader = build_train_loader(cfg, {"text": char_tokens}, batch_size=16, seed=0)
    with within(120), pytest.raises(DataError, match="the last 1000 samples"):
        next(iter(loader))
    lines = [r.getMessage() for r in caplog.records if "missing text" in r.getMessage()]
    assert len(lines) == 6, lines  # 3 with their keys, then at 10, 100 and 1000
    assert all(line.startswith("data rank 0 worker 0 ") for line in lines)
    assert "has skipped 1000 items so far for 'missing text'" in lines[-1]


def _agree(rank: int, world_size: int) -> str:
    from mmembed.collective import agree_on_failure

    failure = DataError("rank 0's shards are all unusable") if rank == 0 else None
    try:
        agree_on_failure(failure, "loading its next batch")
    except Exception as err:  # the outcome is what the test compares
        return f"{type(err).__name__}: {err}"
    return "continued"


def test_a_data_failure_on_one_rank_stops_every_rank() -> None:
    from dist_utils import run_distributed

    with within(120):
        outcomes = run_distributed(_agree, 2)
    assert outcomes[0] == "DataError: rank 0's shards are all unusable"
    assert outcomes[1].startswith("PeerFailure: rank 0 failed while loading its next batch")


@pytest.mark.slow
def test_training_on_captionless_shards_exits_with_one_line(captionless: list[str], small_demo: Path,
                                                          tmp_path: Path) -> None:
    urls = "[" + ",".join(f'"{u}"' for u in captionless) + "]"
    proc = mmembed([*cli_overrides(small_demo, tmp_path / "run"), f"data.train.0.urls={urls}"], timeout=300)
    assert_one_line_error(proc, "train", "missing text", "nocap-0.tar", "data.max_consecutive_skips")
    assert proc.stderr.count("skipped sample") <= 3


@pytest.mark.slow
def test_two_process_run_stops_on_both_ranks_when_one_ranks_shard_is_bad(captionless: list[str], small_demo: Path,
                                                                          tmp_path: Path) -> None:
    """accelerate launch, 2 processes, one good and one caption-less shard split between the ranks: the rank
    reading the bad shard stops with the data error, the other with 'rank R failed ...', both in bounded time."""
    import os
    import subprocess
    import sys

    from train_support import REPO

    urls = f'["{captionless[0]}","{small_demo / "train" / "train-000002.tar"}"]'
    args = [*cli_overrides(small_demo, tmp_path / "run"), f"data.train.0.urls={urls}", "data.resampled=false",
            "data.max_consecutive_skips=16", "data.shuffle_buffer=0"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "launch/cpu_2proc.yaml"),
           "--main_process_port", "29547", "-m", "mmembed", *args]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode != 0
    # Both ranks write to one stderr, so one rank's line may run into the other's progress bar or error line.
    # The failing rank's own error is always there (the peer waits before exiting, so the launcher never stops
    # the failing rank first); the peer's line usually is too, unless the launcher stops it before it prints.
    errors = re.findall(r"mmembed train: error: (?:(?!mmembed train: error: ).)*", proc.stderr)
    assert any("the last 16 samples were all unusable" in e and "nocap-0.tar" in e for e in errors), \
        proc.stderr[-4000:]
    others = [e for e in errors if "the last 16 samples were all unusable" not in e]
    assert all(re.search(r"rank [01] failed while loading its next batch", e) for e in others), errors


# -- decoding -----------------------------------------------------------------------------------------
def _encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _grey(values: np.ndarray) -> np.ndarray:
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return np.stack([grey] * 3, axis=-1)


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None].astype(np.float64) / 255.0
    return rgb.astype(np.float64) * a + 255.0 * (1.0 - a)


RAMP16 = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 1365)  # 0 .. 64155
GREY8 = np.linspace(0, 255, 48).reshape(6, 8).astype(np.uint8)
ALPHA = np.tile(np.array([0, 64, 128, 255], dtype=np.uint8), (6, 2))


def _mode_cases() -> dict[str, tuple[bytes, np.ndarray]]:
    """PIL mode -> (file bytes in that mode, reference 8-bit RGB computed with numpy)."""
    palette_pixels = (np.arange(48).reshape(6, 8) % 3).astype(np.uint8)
    palette = Image.fromarray(palette_pixels, "P")
    palette.putpalette([200, 10, 10, 10, 200, 10, 10, 10, 200] + [0] * 759)
    palette_ref = np.array([[200, 10, 10], [10, 200, 10], [10, 10, 200]], dtype=np.uint8)[palette_pixels]
    palette_ref[palette_pixels == 1] = 255  # index 1 is transparent: composited onto white
    cmyk = np.stack([GREY8, 255 - GREY8, np.full_like(GREY8, 60), np.full_like(GREY8, 30)], axis=-1)
    cmyk_ref = (255 - cmyk[..., :3].astype(np.float64)) * (255 - cmyk[..., 3:].astype(np.float64)) / 255
    bits = GREY8 > 127
    rgba = np.stack([GREY8, 255 - GREY8, np.full_like(GREY8, 90), ALPHA], axis=-1)
    return {
        "I;16": (_encoded(Image.fromarray(RAMP16), "PNG"), _grey(RAMP16 * 255.0 / 65535.0)),
        "I": (_encoded(Image.fromarray(RAMP16.astype(np.int32)), "TIFF"), _grey(RAMP16 * 255.0 / 65535.0)),
        "F": (_encoded(Image.fromarray((GREY8 / 255.0).astype(np.float32)), "TIFF"), _grey(GREY8.astype(float))),
        "LA": (_encoded(Image.fromarray(np.stack([GREY8, ALPHA], -1), "LA"), "PNG"),
               _grey(_over_white(GREY8[..., None], ALPHA)[..., 0])),
        "P": (_encoded(palette, "PNG", transparency=1), palette_ref),
        "CMYK": (_encoded(Image.fromarray(cmyk, "CMYK"), "TIFF"), np.rint(cmyk_ref).astype(np.uint8)),
        "1": (_encoded(Image.fromarray(bits), "PNG"), _grey(bits * 255.0)),
        "RGBA": (_encoded(Image.fromarray(rgba, "RGBA"), "PNG"), np.rint(_over_white(rgba[..., :3], ALPHA))),
    }


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "LA", "P", "CMYK", "1", "RGBA"])
def test_every_image_mode_decodes_to_the_reference_rgb(mode: str) -> None:
    data, reference = _mode_cases()[mode]
    assert Image.open(io.BytesIO(data)).mode == mode, "the test must feed the mode it names"
    decoded = decode_image(data)
    assert decoded.mode == "RGB" and decoded.size == (8, 6)
    got = np.asarray(decoded).astype(np.int16)
    assert np.abs(got - reference.astype(np.int16)).max() <= 1, (mode, got[..., 0], reference[..., 0])


@pytest.mark.parametrize(("values", "reason"), [
    (np.full(1600, 1e30), "peak amplitude"),
    (np.full(1600, 1e3), "peak amplitude"),
    (np.array([0.1] * 800 + [np.nan] * 800), "NaN or infinite"),
])
def test_absurd_audio_is_refused(values: np.ndarray, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_audio(float_wav_bytes(values))
    wave, rate = decode_audio(float_wav_bytes(np.full(1600, 1.5)))  # mildly hot float audio is fine
    assert rate == 16000 and float(wave.max()) == pytest.approx(1.5)


def test_absurd_audio_samples_are_skipped_with_their_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with SizedShardWriter(tmp_path, "loud", samples_per_shard=10) as writer:
        for n in range(4):
            writer.write(f"ok{n}", sample_members(n))
        loud = {k: v for k, v in sample_members(5).items() if k != "flac"}
        writer.write("huge", {**loud, "wav": float_wav_bytes(np.full(800, 1e30))})
    caplog.set_level(logging.WARNING, logger="mmembed.data")
    loader = build_eval_loader([str(tmp_path / "loud-000000.tar")], PLAIN, batch_size=8, extra_keys=())
    (batch,) = list(loader)
    assert batch["__key__"] == ["ok0", "ok1", "ok2", "ok3"] and loader.skip_counts["samples"] == 1
    assert any("huge" in r.getMessage() and "peak amplitude" in r.getMessage() for r in caplog.records)


# -- a step with a non-finite loss names its samples ---------------------------------------------------
def test_non_finite_step_names_the_batch_sample_keys(small_demo: Path, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    from mmembed.train import Trainer
    from mmembed.train.trainer import NonFiniteLoss

    def poisoned(name: str, **extra: object) -> Trainer:
        trainer = Trainer(tiny_config(small_demo, tmp_path / name, steps=1, **extra))
        scale = next(iter(trainer.unwrapped.logit_scales.values()))
        with torch.no_grad():
            scale.fill_(float("nan"))  # the clamp after each step keeps NaN: every step's loss is NaN
        return trainer

    with pytest.raises(NonFiniteLoss, match=r"rank 0's batch held 8 samples: train\d+, train\d+"):
        poisoned("aborted", **{"train.on_nonfinite": "abort"}).fit()
    caplog.set_level(logging.WARNING, logger="mmembed.train")
    poisoned("run", **{"train.save_every": 0}).fit()
    record = tmp_path / "run" / "nonfinite_batches" / "rank0.jsonl"
    (entry,) = [json.loads(line) for line in record.read_text().splitlines()]
    assert entry["step"] == 0 and len(entry["keys"]) == 8
    assert all(re.fullmatch(r"train\d{7}", key) for key in entry["keys"])
    warning = next(r.getMessage() for r in caplog.records if "non-finite loss" in r.getMessage())
    assert "skipping the update" in warning and "train" in warning and str(record) in warning


# -- evaluation counts what it skipped -----------------------------------------------------------------
def test_eval_reports_used_and_skipped_samples_per_task(small_demo: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from mmembed.eval.cli import run_eval_command
    from mmembed.train import Trainer

    run = tmp_path / "run"
    Trainer(tiny_config(small_demo, run, steps=1)).fit()
    with SizedShardWriter(tmp_path / "mixed", "mixed", samples_per_shard=20) as writer:
        for n in range(10):
            members = sample_members(n)
            if n in (2, 7):
                members["png"] = png_bytes(n)[:30]  # truncated image
            writer.write(f"m{n}", members)
    run_eval_command(run, "retrieval", [str(tmp_path / "mixed" / "mixed-000000.tar")], None, "openai", "image",
                     "image,text", None, 4, progress=False)
    assert "retrieval/mixed: 8 samples used, 2 skipped" in capsys.readouterr().out


def test_loader_skip_counts_cover_a_whole_pass(tmp_path: Path) -> None:
    with SizedShardWriter(tmp_path, "c", samples_per_shard=4) as writer:
        for n in range(8):
            writer.write(f"c{n}", {**sample_members(n), **({"png": b"junk"} if n % 4 == 3 else {})})
    loader = build_eval_loader([str(tmp_path / "c-{000000..000001}.tar")], PLAIN, batch_size=3, extra_keys=())
    keys = [k for batch in itertools.islice(loader, 10) for k in batch["__key__"]]
    assert len(keys) == 6 and loader.skip_counts == {"samples": 2, "members": 0, "shards": 0}
