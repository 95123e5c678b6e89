"""benchmarks/learning.py: the smoke run CI makes (every experiment end to end, a few steps on tiny data),
and the pieces its tables are built from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.learning_common import cell, demo_tree, image_text_only, mean_sd, on_data  # noqa: E402
from benchmarks.learning_reinforced import verdict  # noqa: E402


def test_cells_are_mean_and_sample_sd() -> None:
    assert mean_sd([0.5, 0.7, 0.6]) == pytest.approx((0.6, 0.1))
    assert cell([0.5, 0.7, 0.6]) == "0.600 ± 0.100" and cell([0.5]) == "0.500"


def test_recipe_is_rewritten_to_the_variant_data(tmp_path: Path) -> None:
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
        (tmp_path / split / f"{split}-000000.tar").touch()
    tree = on_data(image_text_only(demo_tree()), tmp_path)
    assert set(tree["model"]["modalities"]) == {"image", "text"}
    assert tree["data"]["train"] == [{"urls": [str(tmp_path / "train" / "train-000000.tar")]}]
    tasks = [*tree["eval"]["zeroshot"], *tree["eval"]["retrieval"]]
    assert tasks and all(t["urls"] == [str(tmp_path / "val" / "val-000000.tar")] for t in tasks)
    assert all(t["classnames"].startswith(str(tmp_path)) for t in tree["eval"]["zeroshot"])
    assert not any("audio" in (t.get("modality"), t.get("a"), t.get("b")) for t in tasks)


def _report(plain: list[float], reinforced: float) -> dict:
    runs = [{"label": label, "metrics": {"zeroshot/image_heldout/top1": value}}
            for label, value in zip(("plain N", "plain 2N", "plain 4N"), plain)]
    return {"settings": {"N": 100}, "runs": [*runs, {"label": "reinforced N",
                                                      "metrics": {"zeroshot/image_heldout/top1": reinforced}}]}


def test_verdict_places_reinforced_on_the_plain_curve() -> None:
    # Plain: 0.4 at N, 0.5 at 2N, 0.6 at 4N; 0.55 lies halfway between 2N and 4N in log steps: 2^1.5 N.
    assert "about 2.8 N" in verdict(_report([0.4, 0.5, 0.6], 0.55))
    assert "above plain 4N" in verdict(_report([0.4, 0.5, 0.6], 0.7))
    assert "below plain N" in verdict(_report([0.4, 0.5, 0.6], 0.3))


def test_speech_is_dispatched_with_its_own_options(tmp_path: Path) -> None:
    from benchmarks import learning, learning_speech

    modules = learning.experiment_modules()
    assert modules["speech"] is learning_speech
    args = learning.build_parser(modules).parse_args(["speech", "--smoke", "--out", str(tmp_path)])
    # learning_speech's own options, its defaults where it has its own (one thread per run).
    assert args.methods == list(learning_speech.METHODS) and args.threads == 1 and args.out == tmp_path


def _smoke(experiment: str, out: Path) -> None:
    cmd = [sys.executable, str(REPO / "benchmarks" / "learning.py"), experiment, "--smoke", "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.mark.slow
def test_smoke_run_of_the_loss_and_reinforced_experiments(tmp_path: Path) -> None:
    """End to end on tiny data (the speech experiment has its own smoke test, tests/test_learning_speech.py)."""
    out = tmp_path / "bench"
    _smoke("losses", out)
    losses = json.loads((out / "losses" / "results.json").read_text())
    cells = {(r["variant"], r["method"]) for r in losses["runs"]}
    # Smoke: every method on the clean data, every other variant once.
    assert cells == {*(("clean", m) for m in ("infonce", "siglip", "isogclr", "tempnet", "lit", "cwcl")),
                     ("noisy", "infonce"), ("block", "infonce")}
    table = (out / "losses" / "results.md").read_text()
    assert "held-out top-1 (chance 0.125)" in table and "generalised top-1 (chance 0.033)" in table
    _smoke("reinforced", out)
    reinforced = json.loads((out / "reinforced" / "results.json").read_text())
    assert reinforced["build"]["verify_ok"] is True
    assert {r["label"] for r in reinforced["runs"]} == {"plain N", "reinforced N", "reinforced N, no teacher (λ = 0)",
                                                       "plain 2N", "plain 4N"}
    assert "teacher (frozen MiniLM text)" in (out / "reinforced" / "results.md").read_text()


def test_reuse_keeps_only_a_finished_run_of_the_same_steps_losses_and_seed(tmp_path: Path) -> None:
    import yaml

    from benchmarks.learning_common import finished_run

    tree = {"seed": 0, "train": {"steps": 100}, "data": {"batch_size": 64},
            "model": {"pairs": [{"a": "image", "b": "text", "loss": "infonce"}]}}
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({**tree, "model": {"pairs": [
        {"a": "image", "b": "text", "loss": "infonce", "weight": 1.0, "args": {}}]}}))
    (run / "metrics.jsonl").write_text('{"step": 20, "samples_per_s": 128.0}\n{"step": 40, "samples_per_s": 64.0}\n')
    assert finished_run(run, tree, 0) is None  # not finished: no final metrics
    (run / "final_metrics.json").write_text('{"zeroshot/image_heldout/top1": 0.5}')
    done = finished_run(run, tree, 0)
    assert done is not None and done.metrics == {"zeroshot/image_heldout/top1": 0.5} and done.step_seconds == 1.0
    assert finished_run(run, tree, 1) is None
    assert finished_run(run, {**tree, "train": {"steps": 200}}, 0) is None
    other = {**tree, "model": {"pairs": [{"a": "image", "b": "text", "loss": "distill"}]}}
    assert finished_run(run, other, 0) is None
    other_args = {**tree, "model": {"pairs": [{"a": "image", "b": "text", "loss": "infonce", "args": {"x": 1}}]}}
    assert finished_run(run, other_args, 0) is None  # e.g. distill at another λ
