"""Fault injection, checkpoints and run folders: a fresh run never eats another run's checkpoints, retention
never deletes LATEST's checkpoint, damaged or non-finite checkpoints are refused naming the file, and
`--resume latest` falls back to the newest intact checkpoint and then resumes exactly."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from fault_support import (
    checkpoint,
    latest,
    overwrite_middle,
    rewrite_checksums,
    tiny_config,
    truncate_half,
)
from safetensors.torch import load_file, save_file

from mmembed import cli
from mmembed.errors import RunFolderError, UserError
from mmembed.train import Trainer


def weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint(run_dir, step) / "model" / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


@pytest.fixture(scope="module")
def trained(small_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-step run with checkpoints at steps 2 and 4 (keep_last 0: all kept). Tests work on copies."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    Trainer(tiny_config(small_demo, run_dir)).fit()
    return run_dir


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def test_checkpoint_metadata_lists_a_checksum_of_every_file(trained: Path) -> None:
    folder = checkpoint(trained, 4)
    meta = json.loads((folder / "trainer.json").read_text())
    on_disk = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert sorted(meta["files"]) == [name for name in on_disk if name != "trainer.json"]
    assert all(len(record["sha256"]) == 64 and record["bytes"] > 0 for record in meta["files"].values())


def test_keep_last_zero_keeps_every_checkpoint(trained: Path) -> None:
    assert sorted(p.name for p in (trained / "checkpoints").glob("step_*")) == ["step_00000002", "step_00000004"]
    assert latest(trained) == "step_00000004"


def test_fresh_run_into_a_run_folder_is_refused_and_nothing_is_deleted(
        run: Path, small_demo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = {p: p.stat().st_size for p in run.rglob("*") if p.is_file()}
    with pytest.raises(RunFolderError, match=r"--resume latest.*output_dir.*--overwrite"):
        Trainer(tiny_config(small_demo, run, steps=2))
    assert {p: p.stat().st_size for p in run.rglob("*") if p.is_file()} == before
    # The command line says the same in one line.
    from fault_support import cli_overrides

    assert cli.main([*cli_overrides(small_demo, run, steps=2)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    # --overwrite is the explicit request: the old run's checkpoints and logs go, the new run's stay.
    (run / "notes.txt").write_text("the user's own file")
    Trainer(tiny_config(small_demo, run, steps=2, **{"train.save_every": 0}), overwrite=True).fit()
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_00000002"]
    assert latest(run) == "step_00000002" and (run / "notes.txt").is_file()
    with pytest.raises(UserError, match="contradict"):
        Trainer(tiny_config(small_demo, run), resume="latest", overwrite=True)


def test_retention_never_deletes_the_checkpoint_latest_names(run: Path, small_demo: Path) -> None:
    """Resumed from step 2 with checkpoints 2 and 4 on disk, keep_last 1: the new step 3 must survive."""
    config = tiny_config(small_demo, run, steps=3, **{"train.keep_last": 1})
    Trainer(config, resume=str(checkpoint(run, 2))).fit()
    assert latest(run) == "step_00000003"
    assert [p.name for p in (run / "checkpoints").glob("step_*")] == ["step_00000003"]


def test_bit_rot_in_latest_falls_back_and_resumes_exactly(run: Path, trained: Path, small_demo: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    overwrite_middle(checkpoint(run, 4) / "model" / "model.safetensors")
    caplog.set_level(logging.WARNING, logger="mmembed.train")
    trainer = Trainer(tiny_config(small_demo, run, steps=4), resume="latest")
    assert trainer.state.step == 2
    warning = next(r.getMessage() for r in caplog.records if "skipping checkpoint" in r.getMessage())
    assert "step_00000004" in warning and "model.safetensors" in warning and "changed" in warning
    trainer.fit()
    assert_same_weights(weights(run, 4), weights(trained, 4))


def test_truncated_file_in_latest_is_named_and_skipped(run: Path, small_demo: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    truncate_half(checkpoint(run, 4) / "optimizer.pt")
    caplog.set_level(logging.WARNING, logger="mmembed.train")
    assert Trainer(tiny_config(small_demo, run), resume="latest").state.step == 2
    assert any("optimizer.pt" in r.getMessage() and "truncated" in r.getMessage() for r in caplog.records)


def test_explicit_damaged_checkpoint_is_refused_naming_the_file(run: Path, small_demo: Path) -> None:
    overwrite_middle(checkpoint(run, 4) / "rank0.pt")
    with pytest.raises(UserError, match=r"cannot resume from .*step_00000004.*rank0\.pt"):
        Trainer(tiny_config(small_demo, run), resume=str(checkpoint(run, 4)))


def test_non_finite_weights_are_refused_even_with_matching_checksums(run: Path, small_demo: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    path = checkpoint(run, 4) / "model" / "model.safetensors"
    state = load_file(str(path))
    name = next(n for n, t in state.items() if t.is_floating_point())  # not a BatchNorm step counter
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, str(path))
    rewrite_checksums(checkpoint(run, 4))
    caplog.set_level(logging.WARNING, logger="mmembed.train")
    assert Trainer(tiny_config(small_demo, run), resume="latest").state.step == 2
    assert any("NaN or infinite" in r.getMessage() and name in r.getMessage() for r in caplog.records)


def test_latest_naming_a_deleted_checkpoint_falls_back(run: Path, small_demo: Path) -> None:
    shutil.rmtree(checkpoint(run, 4))
    assert Trainer(tiny_config(small_demo, run), resume="latest").state.step == 2


def test_half_written_checkpoint_of_a_killed_save_is_ignored(run: Path, small_demo: Path) -> None:
    partial = run / "checkpoints" / ".step_00000006.tmp"
    shutil.copytree(checkpoint(run, 4), partial)
    (partial / "trainer.json").unlink()  # killed before the metadata, i.e. before the commit point
    truncate_half(partial / "optimizer.pt")
    Trainer(tiny_config(small_demo, run, steps=6), resume="latest").fit()
    assert latest(run) == "step_00000006" and not partial.exists()


def test_no_intact_checkpoint_stops_instead_of_starting_over(run: Path, small_demo: Path) -> None:
    for step in (2, 4):
        truncate_half(checkpoint(run, step) / "model" / "model.safetensors")
    with pytest.raises(UserError, match=r"no usable checkpoint.*step_00000004.*step_00000002"):
        Trainer(tiny_config(small_demo, run), resume="latest")


@pytest.mark.parametrize("command", ["eval", "export"])
def test_eval_and_export_name_a_truncated_weights_file(run: Path, tmp_path: Path, command: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    standalone = tmp_path / "model_copy"
    shutil.copytree(checkpoint(run, 4) / "model", standalone)
    for target in (run, standalone):  # inside a checkpoint (checksums) and a bare model folder (parser)
        weights_file = (checkpoint(run, 4) / "model" if target == run else standalone) / "model.safetensors"
        truncate_half(weights_file)
        argv = {"eval": ["eval", str(target), "--task", "retrieval", "--data", "x.tar"],
                "export": ["export", str(target), "--format", "safetensors", "--out", str(tmp_path / "out")]}[command]
        assert cli.main(argv) == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith(f"mmembed {command}: error: ") and str(weights_file) in line, line
        assert "truncated" in line


def test_changing_data_workers_on_resume_is_refused_both_ways(small_demo: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    Trainer(tiny_config(small_demo, run, steps=2, **{"data.num_workers": 2})).fit()
    for workers in (1, 4):
        with pytest.raises(UserError, match=rf"data\.num_workers=2.*has {workers}"):
            Trainer(tiny_config(small_demo, run, steps=4, **{"data.num_workers": workers}), resume="latest")


def test_checkpoint_files_are_readable_as_the_umask_allows(small_demo: Path, tmp_path: Path) -> None:
    for umask, file_mode in ((0o022, 0o644), (0o027, 0o640)):
        old = os.umask(umask)
        try:
            run = tmp_path / f"run{umask:o}"
            Trainer(tiny_config(small_demo, run, steps=1)).fit()
        finally:
            os.umask(old)
        files = [p for p in checkpoint(run, 1).rglob("*") if p.is_file()]
        assert {"model.safetensors", "objective.safetensors", "optimizer.pt", "rank0.pt"} <= {p.name for p in files}
        assert {p.name: p.stat().st_mode & 0o777 for p in files} == {p.name: file_mode for p in files}


class _Payload:
    """A pickle that runs code when unpickled: it would create `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_a_checkpoint_pickle_is_never_executed(run: Path, small_demo: Path, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """A hostile optimizer.pt (with its checksum rewritten to match) is refused unexecuted, like bit rot."""
    marker = tmp_path / "pwned"
    torch.save({"state": {}, "param_groups": [], "payload": _Payload(marker)}, checkpoint(run, 4) / "optimizer.pt")
    rewrite_checksums(checkpoint(run, 4))
    caplog.set_level(logging.WARNING, logger="mmembed.train")
    assert Trainer(tiny_config(small_demo, run), resume="latest").state.step == 2
    assert not marker.exists()
    assert any("optimizer.pt" in r.getMessage() and "unreadable" in r.getMessage() for r in caplog.records)


def test_resuming_with_another_world_size_is_refused(run: Path, small_demo: Path) -> None:
    meta_path = checkpoint(run, 4) / "trainer.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "world_size": 2}))
    with pytest.raises(UserError, match=r"written by 2 processes.*got 1"):
        Trainer(tiny_config(small_demo, run), resume="latest")


@pytest.mark.slow
def test_two_process_resume_falls_back_together(small_demo: Path, tmp_path: Path) -> None:
    """accelerate launch, 2 processes: LATEST's weights damaged; both ranks skip it, resume from the older
    checkpoint and finish (the main process verifies, all ranks agree)."""
    import subprocess
    import sys

    from fault_support import cli_overrides
    from train_support import REPO

    run = tmp_path / "run"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(REPO / "launch/cpu_2proc.yaml"), "--main_process_port", "29549", "-m", "mmembed"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def train(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([*launch, *cli_overrides(small_demo, run, steps=4), *extra], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=600, check=False)

    first = train()
    assert first.returncode == 0, first.stderr[-4000:]
    overwrite_middle(checkpoint(run, 4) / "model" / "model.safetensors")
    resumed = train("train.steps=5", "--resume", "latest")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "skipping checkpoint" in resumed.stderr and "model.safetensors" in resumed.stderr
    assert resumed.stderr.count("step_00000002 at step 2") == 2  # "resumed from ...", once per rank
    assert latest(run) == "step_00000005"
