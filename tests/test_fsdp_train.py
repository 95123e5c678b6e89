"""FSDP2 end to end with real `accelerate launch` processes (2 gloo ranks on the CPU, launch/fsdp_node.yaml):
an FSDP step equals a DDP step, a killed FSDP run resumes bit for bit, and a sharded checkpoint's
consolidated model is what eval and export load."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fsdp_step_script import STEP_RECIPE
from safetensors.torch import load_file
from train_support import DEMO_RECIPE, REPO, TRAINABLE_TEXT, run_cli, tiny_overrides

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def launch(config: str, port: int, args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "launch" / config),
           "--num_processes", "2", "--main_process_port", str(port), *args]
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout, check=False)


def step_results(tmp_path: Path, label: str, config: str, port: int, *overrides: str) -> list[dict]:
    (tmp_path / "step_recipe.yaml").write_text(STEP_RECIPE)
    done = launch(config, port, [str(REPO / "tests" / "fsdp_step_script.py"), str(tmp_path), label, *overrides])
    assert done.returncode == 0, done.stderr[-4000:]
    return [torch.load(tmp_path / f"{label}-rank{r}.pt") for r in (0, 1)]


def assert_close_states(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], atol: float) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=atol, msg=name)


def test_fsdp_step_equals_ddp_step(tmp_path: Path) -> None:
    """Two trainer steps (plain, then GradCache over 2 micro-batches) with an image, a text and a frozen MiniLM
    tower, distill + iSogCLR + TempNet, gradient clipping active: FSDP2 gives DDP's losses, the same gradients
    as the optimizer receives them (averaged over ranks, clipped), the same updated weights and loss state.
    Tolerances: float reordering measured at ~1e-8 on the weights; a gradient left unaveraged on one parameter
    (the logit scale) is off by ~1e-1 relative."""
    ddp = step_results(tmp_path, "ddp", "cpu_2proc.yaml", 29561)
    fsdp = step_results(tmp_path, "fsdp", "fsdp_node.yaml", 29563)
    assert not ddp[0]["sharded"] and fsdp[0]["sharded"]
    for rank in (0, 1):
        assert fsdp[rank]["losses"] == pytest.approx(ddp[rank]["losses"], rel=1e-6, abs=1e-6)
        assert fsdp[rank]["terms"] == pytest.approx(ddp[rank]["terms"], rel=1e-5, abs=1e-6)
        for got, expected in zip(fsdp[rank]["grads"], ddp[rank]["grads"], strict=True):
            assert got.keys() == expected.keys()
            for name in expected:
                scale = float(expected[name].abs().max())
                torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5 * scale, msg=name)
        assert_close_states(fsdp[rank]["model"], ddp[rank]["model"], atol=2e-6)
        assert_close_states(fsdp[rank]["objective"], ddp[rank]["objective"], atol=2e-6)
    clipped = [sum(float(g.float().pow(2).sum()) for g in step.values()) ** 0.5 for step in ddp[0]["grads"]]
    assert clipped == pytest.approx([0.05, 0.05], rel=1e-3), "the test must run with clipping active"
    # The loss state (iSogCLR tables, TempNet nets: outside DDP and FSDP) is the same on both ranks.
    for run in (ddp, fsdp):
        assert_close_states(run[1]["objective"], run[0]["objective"], atol=0)
    moved = ddp[0]["model"]["logit_scales.image__text"]
    assert moved != pytest.approx(torch.log(torch.tensor(1 / 0.07)).item(), abs=1e-5), "the logit scale never trained"


def test_fsdp_bf16_step_stays_close_to_ddp_bf16(tmp_path: Path) -> None:
    """bf16: FSDP gathers the blocks' weights in bf16 and reduces gradients in fp32, autocast as under DDP."""
    ddp = step_results(tmp_path, "ddp16", "cpu_2proc.yaml", 29565, "train.precision=bf16")
    fsdp = step_results(tmp_path, "fsdp16", "fsdp_node.yaml", 29567, "train.precision=bf16")
    for rank in (0, 1):
        assert fsdp[rank]["losses"] == pytest.approx(ddp[rank]["losses"], rel=2e-2)
        assert all(v.dtype == torch.float32 for v in fsdp[rank]["model"].values() if v.is_floating_point())


def _demo_args(data: Path, run_dir: Path, steps: int) -> list[str]:
    return [str(DEMO_RECIPE), *tiny_overrides(data, run_dir, steps=steps, **{
        "train.save_every": 3, "train.keep_last": 5, "data.batch_size": 8, "eval.zeroshot": "[]",
        "eval.retrieval": "[]"}), TRAINABLE_TEXT]  # open_clip text: the export test needs no HF model id


def _train_sh(args: list[str], port: int) -> tuple[list[str], dict[str, str]]:
    """launch/train.sh with SHARDING=fsdp, 2 processes (the script adds --resume latest)."""
    env = {**ENV, "SHARDING": "fsdp", "NPROC": "2", "MASTER_PORT": str(port)}
    return ["bash", str(REPO / "launch" / "train.sh"), *args], env


def _wait_for(proc: subprocess.Popen, path: Path, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.is_file():
            return
        if proc.poll() is not None:
            raise AssertionError(f"run exited early with {proc.returncode}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"no {path} within {timeout}s")


@pytest.fixture(scope="module")
def fsdp_runs(small_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An uninterrupted 2-process FSDP run (launch/train.sh, SHARDING=fsdp) and one killed by SIGKILL after its
    step-3 checkpoint and resumed with the same command, as a pre-empted SLURM job would be."""
    root = tmp_path_factory.mktemp("fsdp_runs")
    straight, killed = root / "straight", root / "killed"
    cmd, env = _train_sh(_demo_args(small_demo, straight, steps=9), 29571)
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "sharding: FSDP2 over 2 rank(s)" in done.stderr
    cmd, env = _train_sh(_demo_args(small_demo, killed, steps=9), 29573)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    _wait_for(proc, killed / "checkpoints" / "step_00000003" / "trainer.json", timeout=600)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "checkpoints" / "step_00000009").exists(), "killed too late to test resume"
    resumed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert resumed.stderr.count("resumed from") == 2, resumed.stderr[-3000:]
    return straight, killed


def _checkpoint(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step_{step:08d}"


def test_killed_fsdp_run_resumes_bit_exact(fsdp_runs: tuple[Path, Path]) -> None:
    straight, killed = fsdp_runs
    shards = [f"shards/{kind}-rank{r}-of-2.safetensors" for kind in ("model", "optim") for r in (0, 1)]
    for name in ("model/model.safetensors", "objective.safetensors", *shards):
        expected = load_file(str(_checkpoint(straight, 9) / name))
        got = load_file(str(_checkpoint(killed, 9) / name))
        assert expected.keys() == got.keys(), name
        for key in expected:
            assert torch.equal(got[key], expected[key]), f"{name}: {key}"
    for name in ("rank0.pt", "rank1.pt", "scheduler.pt"):
        expected = torch.load(_checkpoint(straight, 9) / name, weights_only=True)
        got = torch.load(_checkpoint(killed, 9) / name, weights_only=True)
        assert repr(got) == repr(expected), name


def test_sharded_checkpoint_layout_and_checksums(fsdp_runs: tuple[Path, Path]) -> None:
    """Each rank's shards, no full optimizer copy, every file in trainer.json; only the final one has model/."""
    straight, _ = fsdp_runs
    middle, final = _checkpoint(straight, 6), _checkpoint(straight, 9)
    meta = json.loads((middle / "trainer.json").read_text())
    assert meta["layout"] == "fsdp2-sharded" and meta["world_size"] == 2
    on_disk = sorted(p.relative_to(middle).as_posix() for p in middle.rglob("*") if p.is_file())
    assert sorted(meta["files"]) == [n for n in on_disk if n != "trainer.json"]
    assert {"shards/model-rank0-of-2.safetensors", "shards/model-rank1-of-2.safetensors",
            "shards/optim-rank1-of-2.safetensors", "shards/optim-groups.json", "shards/config.yaml"} <= set(on_disk)
    assert not (middle / "model").exists() and not (middle / "optimizer.pt").exists()
    assert (final / "model" / "model.safetensors").is_file()


def test_consolidate_then_eval_and_export(fsdp_runs: tuple[Path, Path], small_demo: Path, tmp_path: Path) -> None:
    """`mmembed consolidate` of a middle checkpoint writes model/ into it (checksummed); eval and the open_clip
    export (which checks open_clip's embeddings against mmembed's) then load it; before, eval says to
    consolidate."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(fsdp_runs[0], run)
    shutil.rmtree(_checkpoint(run, 9))
    (run / "checkpoints" / "LATEST").write_text("step_00000006")
    val = sorted(str(p) for p in (small_demo / "val").glob("*.tar"))
    before = run_cli(["eval", str(run), "--task", "retrieval", "--data", *val])
    assert before.returncode == 2 and "mmembed consolidate" in before.stderr.splitlines()[-1]
    done = run_cli(["consolidate", str(run)])
    assert done.returncode == 0, done.stderr[-3000:]
    middle = _checkpoint(run, 6)
    assert "model/model.safetensors" in json.loads((middle / "trainer.json").read_text())["files"]
    evaluated = run_cli(["eval", str(run), "--task", "retrieval", "--data", *val])
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "image_to_text_R@1" in evaluated.stdout
    exported = run_cli(["export", str(run), "--format", "open_clip", "--out", str(tmp_path / "oc")])
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (tmp_path / "oc" / "open_clip_model.safetensors").is_file()
    # The stitched weights are the trained ones: the final checkpoint's model/, written by training itself,
    # equals a standalone consolidation of the same checkpoint.
    out = tmp_path / "standalone"
    assert run_cli(["consolidate", str(_checkpoint(fsdp_runs[0], 9)), "--out", str(out)]).returncode == 0
    a, b = load_file(str(out / "model.safetensors")), load_file(str(_checkpoint(fsdp_runs[0], 9) / "model" /
                                                                    "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ddp_run_refuses_a_sharded_checkpoint(fsdp_runs: tuple[Path, Path], tmp_path: Path, small_demo: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(fsdp_runs[0], run)
    refused = launch("cpu_2proc.yaml", 29575, ["-m", "mmembed", "train", *_demo_args(small_demo, run, 10),
                                               "--resume", "latest"])
    assert refused.returncode != 0, refused.stderr[-3000:]
    # Each rank refuses on its own, before any collective; the first to exit makes the launcher stop the other,
    # which may not have printed yet, so one or two lines (never a traceback), each naming the layout.
    lines = re.findall(r"mmembed train: error: [^\n]*", refused.stderr)
    assert 1 <= len(lines) <= 2 and all("sharded (train.sharding: fsdp)" in line for line in lines), lines
    assert "Traceback" not in refused.stderr.split("mmembed train: error: ")[0], refused.stderr[-3000:]


def test_damaged_shard_of_one_rank_falls_back_on_both(fsdp_runs: tuple[Path, Path], tmp_path: Path,
                                                      small_demo: Path) -> None:
    """Rank 1's optimizer shard in LATEST is damaged: rank 1 finds it (each rank verifies the files it reads),
    both ranks skip that checkpoint and resume from the one before."""
    import shutil

    from fault_support import overwrite_middle

    run = tmp_path / "run"
    shutil.copytree(fsdp_runs[0], run)
    overwrite_middle(_checkpoint(run, 9) / "shards" / "optim-rank1-of-2.safetensors")
    cmd, env = _train_sh(_demo_args(small_demo, run, steps=10), 29577)
    resumed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "skipping checkpoint" in resumed.stderr and "optim-rank1-of-2.safetensors" in resumed.stderr
    assert resumed.stderr.count("step_00000006 at step 6") == 2  # "resumed from ...", once per rank
    assert (run / "checkpoints" / "LATEST").read_text().strip() == "step_00000010"
