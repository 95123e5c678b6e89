"""The reinforced-dataset builder: stored records replay the teacher's pixels, verify, append, kill+resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from reinforce_support import make_plain_shards, reinforce_config, teacher, tiny_clip, tiny_coca

from mmembed.data.stats import SkipStats
from mmembed.data.tar_samples import shard_samples
from mmembed.reinforce.builder import ReinforceBuilder, run_reinforce
from mmembed.reinforce.sample_build import stored_augs, stored_syn
from mmembed.reinforce.teacher_embeddings import teacher_image_inputs
from mmembed.reinforce.verify import verify_dataset
from mmembed.reinforced_format.codec import decode_array

REPO = Path(__file__).resolve().parents[1]


def _samples(directory: Path) -> list[dict]:
    stats = SkipStats()
    return [raw for shard in sorted(directory.glob("*.tar")) for raw in shard_samples(str(shard), stats)]


def test_stored_records_replay_the_exact_teacher_pixels(tmp_path):
    inputs = make_plain_shards(tmp_path / "plain", 6, 3)
    t1, t2 = tiny_clip(tmp_path / "t1", 0), tiny_clip(tmp_path / "t2", 1, embed_dim=16, size=40)
    cfg = reinforce_config(inputs, tmp_path / "out", [teacher("a", t1), teacher("b", t2, 70.0)], storage="fp32",
                           captioner={"args": {"model_name": tiny_coca(tmp_path / "coca")}, "num_captions": 2,
                                      "max_length": 8, "min_length": 2})
    builder = ReinforceBuilder(cfg, progress=False)
    seen: dict[str, list[torch.Tensor]] = {"a": [], "b": []}
    for t in builder.teachers:  # record what each teacher is really fed, then run it unchanged
        original = t.encode_images
        t.encode_images = lambda pixels, t=t, original=original: (seen[t.name].append(pixels), original(pixels))[1]
    assert builder.run()
    raws = _samples(tmp_path / "out")
    assert len(raws) == 6
    for t in builder.teachers:
        from mmembed.data.decode import decode_image

        replayed = torch.cat([teacher_image_inputs(t, [decode_image(r["png"])], [stored_augs(r, "image")])
                              for r in raws])
        assert torch.equal(torch.cat(seen[t.name]), replayed)
    first = raws[0]
    emb, codec = decode_array(first["image_emb"])
    assert codec == "fp32" and emb.shape == (3, 24 + 16)
    text, _ = decode_array(first["text_emb"])
    assert text.shape == (1 + len(stored_syn(first)), 40)
    teachers = json.loads((tmp_path / "out" / "teachers.json").read_text())["teachers"]
    assert [(t["name"], t["dim"], t["scale"]) for t in teachers] == [("a", 24, 100.0), ("b", 16, 70.0)]
    report = verify_dataset(tmp_path / "out", replay=6)
    assert report.ok, report.summary()
    assert report.replayed == 6 and report.max_replay_error < 1e-5


def test_verify_catches_tampering_and_missing_manifest(tmp_path):
    inputs = make_plain_shards(tmp_path / "plain", 4, 2)
    cfg = reinforce_config(inputs, tmp_path / "out", [teacher("a", tiny_clip(tmp_path / "t", 0))])
    assert run_reinforce(cfg, progress=False)
    assert verify_dataset(tmp_path / "out").ok
    shard = tmp_path / "out" / "plain-000001.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    report = verify_dataset(tmp_path / "out")
    assert not report.ok and "plain-000001.tar" in report.summary()
    (tmp_path / "out" / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="unfinished"):
        verify_dataset(tmp_path / "out")


def test_append_teacher_equals_fresh_build(tmp_path):
    inputs = make_plain_shards(tmp_path / "plain", 5, 3)
    a, b = teacher("a", tiny_clip(tmp_path / "ta", 0)), teacher("b", tiny_clip(tmp_path / "tb", 1, embed_dim=16))
    assert run_reinforce(reinforce_config(inputs, tmp_path / "grown", [a]), progress=False)
    before = _samples(tmp_path / "grown")
    assert run_reinforce(reinforce_config(inputs, tmp_path / "grown", [a, b]), progress=False)
    assert run_reinforce(reinforce_config(inputs, tmp_path / "fresh", [a, b]), progress=False)
    grown = json.loads((tmp_path / "grown" / "manifest.json").read_text())
    fresh = json.loads((tmp_path / "fresh" / "manifest.json").read_text())
    assert grown == fresh
    after = _samples(tmp_path / "grown")
    old, _ = decode_array(before[0]["image_emb"])
    new, _ = decode_array(after[0]["image_emb"])
    assert new.shape == (3, 40) and np.array_equal(new[:, :24], old)
    with pytest.raises(ValueError, match="not a prefix"):
        run_reinforce(reinforce_config(inputs, tmp_path / "grown", [b, a]), progress=False)


def _recipe(coca: str, inputs: str, out: Path, teachers: list[dict]) -> Path:
    tree = {"input": [inputs], "output_dir": str(out), "teachers": teachers, "batch_size": 2,
            "augment": {"num_augs": 4}, "storage": "int8",
            "captioner": {"args": {"model_name": coca}, "num_captions": 2,
                          "max_length": 8, "min_length": 2}}
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(tree))
    return path


def _launch(recipe: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "mmembed", "reinforce", str(recipe), "--no-progress"], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_killed_build_resumes_to_the_same_dataset(tmp_path):
    inputs = make_plain_shards(tmp_path / "plain", 48, 4)
    teachers = [teacher("a", tiny_clip(tmp_path / "ta", 0)), teacher("b", tiny_clip(tmp_path / "tb", 1))]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    coca = tiny_coca(tmp_path / "coca")
    recipe = _recipe(coca, inputs, killed, teachers)
    proc = _launch(recipe)
    deadline = time.time() + 120
    while len(list(killed.glob("*.done.json"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # no cleanup: whatever is half-written stays on disk
    proc.wait()
    done = len(list(killed.glob("*.done.json")))
    assert 2 <= done < 12 and not (killed / "manifest.json").exists()
    for path in (recipe, _recipe(coca, inputs, whole, teachers)):
        proc = _launch(path)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out.decode()[-3000:]
    assert json.loads((killed / "manifest.json").read_text()) == json.loads((whole / "manifest.json").read_text())
    keys = [raw["__key__"] for raw in _samples(killed)]
    assert sorted(keys) == [f"s{i:05d}" for i in range(48)]
    assert not list(killed.glob(".*.tmp"))
    result = subprocess.run([sys.executable, "-m", "mmembed", "reinforce", "--verify", str(killed)], cwd=REPO,
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0 and ": OK:" in result.stdout, result.stdout + result.stderr


def test_ranks_split_shards_and_the_last_one_writes_the_manifest(tmp_path, monkeypatch):
    inputs = make_plain_shards(tmp_path / "plain", 6, 2)
    cfg = reinforce_config(inputs, tmp_path / "out", [teacher("a", tiny_clip(tmp_path / "t", 0))])
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert not run_reinforce(cfg, progress=False)  # rank 1 alone: shard 1 only, no manifest yet
    assert sorted(p.name for p in (tmp_path / "out").glob("*.done.json")) == ["plain-000001.tar.done.json"]
    monkeypatch.setenv("RANK", "0")
    assert run_reinforce(cfg, progress=False)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["num_samples"] == 6 and len(manifest["shards"]) == 3
