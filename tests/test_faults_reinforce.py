"""Fault injection, reinforced data: embeddings changed after the build with the checksums rewritten to match
pass the checksum check; `--verify --detect` replays enough random samples to catch them with a stated
probability, and that probability is the true one (exact formula and simulation)."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
from reinforce_support import make_plain_shards, reinforce_config, teacher, tiny_clip

from mmembed import cli
from mmembed.reinforce.builder import run_reinforce
from mmembed.reinforce.replay_sampling import ReplayPlan, miss_probability, samples_needed
from mmembed.reinforce.shard_io import sha256_file
from mmembed.reinforce.verify import verify_dataset
from mmembed.reinforced_format.codec import decode_array, encode_array


def test_samples_needed_meets_the_stated_guarantee_with_the_fewest_samples() -> None:
    assert samples_needed(10**6, 0.01, 0.99) == 459  # ~ ln(0.01) / ln(0.99): independent of the size
    assert samples_needed(100, 0.01, 0.99) == 99     # one bad sample in 100: only a near-full pass finds it
    for total, fraction, confidence in ((1000, 0.01, 0.99), (200, 0.05, 0.9), (37, 0.2, 0.999)):
        n = samples_needed(total, fraction, confidence)
        corrupted = max(1, int(np.ceil(fraction * total)))
        assert miss_probability(total, corrupted, n) <= 1 - confidence < miss_probability(total, corrupted, n - 1)


def test_detection_probability_matches_a_simulation() -> None:
    """Corrupt 10 of 200 samples at random, draw plans with fresh seeds: the hit rate is the stated one."""
    plan_size = samples_needed(200, 0.05, 0.9)
    stated = 1 - miss_probability(200, 10, plan_size)
    rng = random.Random(0)
    trials = 4000
    hits = sum(bool(ReplayPlan.build(200, count=plan_size, fraction=0.05, seed=rng.randrange(2**62)).indices
                    & set(rng.sample(range(200), 10))) for _ in range(trials))
    sd = (stated * (1 - stated) / trials) ** 0.5
    assert stated >= 0.9 and abs(hits / trials - stated) < 4 * sd + 1e-9, (hits / trials, stated)


def _tamper(out: Path, shard_name: str, keys: set[str]) -> None:
    """Shift the stored image embeddings of `keys`, then rewrite the shard's checksum in the manifest."""
    shard = out / shard_name
    members = []
    with tarfile.open(shard) as tar:
        for info in tar.getmembers():
            data = tar.extractfile(info).read()
            key, _, ext = info.name.partition(".")
            if key in keys and ext == "image_emb":
                array, codec = decode_array(data)
                data = encode_array(array + 0.3, codec)
            members.append((info.name, data))
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"][shard_name].update(sha256=sha256_file(shard), bytes=shard.stat().st_size)
    (out / "manifest.json").write_text(json.dumps(manifest))


def test_rewritten_embeddings_pass_checksums_but_not_detect_mode(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    inputs = make_plain_shards(tmp_path / "plain", 12, 4)
    out = tmp_path / "out"
    assert run_reinforce(reinforce_config(inputs, out, [teacher("a", tiny_clip(tmp_path / "t", 0))]), progress=False)
    _tamper(out, "plain-000001.tar", {"s00005", "s00006"})
    checksums_only = verify_dataset(out, replay=0)
    assert checksums_only.ok, "the rewritten checksums hide the change from everything but a replay"
    report = verify_dataset(out, replay=None, detect=0.1, confidence=0.99, seed=0)
    assert report.plan is not None and len(report.plan.indices) == samples_needed(12, 0.1, 0.99)
    assert not report.ok and any("s00005" in e or "s00006" in e for e in report.errors)
    assert cli.main(["reinforce", "--verify", str(out), "--detect", "0.1", "--seed", "3"]) == 1
    printed = capsys.readouterr().out
    assert "FAILED" in printed and "seed 3" in printed and "caught with probability >= 100.00%" in printed
