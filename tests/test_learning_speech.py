"""benchmarks/learning_speech.py --smoke: every method of the word-level speech experiment trains end to end
on freshly synthesised words (real shards, the real recipes, the Trainer) and lands in the results table."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `benchmarks` is a folder of scripts, importable from the repository root

from benchmarks import learning_speech  # noqa: E402


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(shutil.which("espeak-ng") is None,
                    reason="espeak-ng is not installed (apt-get install espeak-ng), so no speech data")
def test_smoke_runs_every_method_and_writes_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser()
    learning_speech.add_arguments(parser)
    learning_speech.run(parser.parse_args(["--smoke", "--out", str(tmp_path)]))
    runs = json.loads((tmp_path / "results.json").read_text())
    assert [(r["method"], r["seed"]) for r in runs] == [(m, 0) for m in learning_speech.METHODS]
    for run in runs:
        method = learning_speech.METHODS[run["method"]]
        tasks = {task for row in method.rows for task in (row.heard, row.unheard)}
        assert {f"zeroshot/{t}/{k}" for t in tasks for k in ("top1", "top5")} <= set(run["metrics"])
        assert all(0.0 <= v <= 1.0 for v in run["metrics"].values())
        # The run really trained: its log holds the 3 smoke steps.
        steps = [json.loads(line).get("step") for line in
                 (tmp_path / f"{run['method']}_seed0" / "metrics.jsonl").read_text().splitlines()]
        assert max(s for s in steps if s is not None) == 3
    table = (tmp_path / "results.md").read_text()
    assert "Chance: top-1 0.167, top-5 0.833 (6 classes" in table
    assert table.count("| 1 |") == 5  # five rows (the tri-pair scores through both text towers), one seed


def test_pooled_z_against_chance() -> None:
    # 3 seeds x 400 clips at chance 0.01 -> 12 expected correct, sd sqrt(11.88); 30 correct is z ~ 5.2.
    assert learning_speech.pooled_z([0.01, 0.01, 0.01], 400, 0.01) == pytest.approx(0.0)
    assert learning_speech.pooled_z([0.025, 0.025, 0.025], 400, 0.01) == pytest.approx(18 / 11.88**0.5)
