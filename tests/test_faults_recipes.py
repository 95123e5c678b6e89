"""Fault injection, bad recipes and bad command lines: one line that names the key or file, exit code 2,
nothing created on disk; --debug or MMEMBED_DEBUG=1 shows the traceback; bugs keep theirs."""

from __future__ import annotations

from pathlib import Path

import pytest
from fault_support import assert_one_line_error, cli_overrides, mmembed
from train_support import DEMO_RECIPE

from mmembed import cli
from mmembed.config import ConfigError
from mmembed.errors import UserError


def _error_line(capsys: pytest.CaptureFixture[str], argv: list[str], command: str) -> str:
    assert cli.main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"mmembed {command}: error: "), lines
    return lines[0]


@pytest.mark.parametrize(("override", "names"), [
    ("train.keep_last=-1", "train.keep_last"),
    ("train.log_every=0", "train.log_every"),      # was a ZeroDivisionError after the first step
    ("train.steps=abc", "train.steps"),            # was "invalid config at '<root>'"
    ("train.steps=0", "train.steps"),
    ("train.save_every=-1", "train.save_every"),
    ("data.batch_size=0", "data.batch_size"),
    ("data.num_workers=-1", "data.num_workers"),
    ("data.max_consecutive_skips=0", "data.max_consecutive_skips"),
    ("eval.every=-5", "eval.every"),
    ("eval.batch_size=0", "eval.batch_size"),
    ("optim.lr=-1", "optim.lr"),
    ("optim.warmup_steps=-1", "optim.warmup_steps"),
    ("model.embed_dim=0", "model.embed_dim"),
    ("train.stepz=5", "train.stepz"),
    ("train.steps", "key.sub=value"),
])
def test_bad_recipe_value_is_one_line_naming_the_key_and_creates_nothing(
        override: str, names: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    line = _error_line(capsys, ["train", str(DEMO_RECIPE), f"output_dir={run_dir}", override], "train")
    assert names in line
    assert not run_dir.exists(), "a rejected recipe must not create the run folder"


def test_missing_files_are_one_line_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    assert str(missing) in _error_line(capsys, ["train", str(missing)], "train")
    for argv, command in (
        (["eval", str(tmp_path / "norun"), "--task", "retrieval", "--data", "x.tar"], "eval"),
        (["export", str(tmp_path / "norun"), "--format", "safetensors", "--out", str(tmp_path / "o")], "export"),
        (["reinforce", "--verify", str(tmp_path)], "reinforce"),
    ):
        line = _error_line(capsys, argv, command)
        assert str(tmp_path) in line, line


def test_missing_shards_name_them_before_the_run_folder_exists(small_demo: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    argv = [*cli_overrides(small_demo, run_dir), f'data.train.0.urls=["{tmp_path}/typo-000000.tar"]']
    line = _error_line(capsys, argv, "train")
    assert "typo-000000.tar" in line and "do not exist" in line
    assert not run_dir.exists()


def test_debug_flag_and_environment_show_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["train", str(DEMO_RECIPE), f"output_dir={tmp_path}", "train.log_every=0"]
    with pytest.raises(ConfigError, match=r"train\.log_every"):
        cli.main([*argv, "--debug"])
    with pytest.raises(ConfigError, match=r"train\.log_every"):
        cli.main(["--debug", *argv])
    monkeypatch.setenv("MMEMBED_DEBUG", "1")
    with pytest.raises(ConfigError, match=r"train\.log_every"):
        cli.main(argv)


def test_internal_bugs_keep_their_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def buggy(args: object) -> int:
        return 1 // 0

    monkeypatch.setitem(cli.COMMANDS, "train", buggy)
    with pytest.raises(ZeroDivisionError):
        cli.main(["train", str(DEMO_RECIPE)])
    assert not issubclass(ZeroDivisionError, UserError)


def test_a_rank_stopped_by_a_peer_waits_before_exiting(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The rank that failed must get to print its error before a launcher stops it for a peer's exit."""
    from mmembed.collective import PeerFailure

    waits: list[float] = []
    monkeypatch.setattr(cli.time, "sleep", waits.append)
    for error in (UserError("train.steps must be positive"),
                  PeerFailure("rank 0 failed while loading its next batch; rank 1 stops too")):
        def train(args: object, error: Exception = error) -> int:
            raise error

        monkeypatch.setitem(cli.COMMANDS, "train", train)
        assert cli.main(["train", str(DEMO_RECIPE)]) == 2
    assert waits == [0.0, PeerFailure.exit_grace_s] and PeerFailure.exit_grace_s >= 1.0
    assert capsys.readouterr().err.splitlines() == [
        "mmembed train: error: train.steps must be positive",
        "mmembed train: error: rank 0 failed while loading its next batch; rank 1 stops too"]


def test_usage_errors_of_subcommands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _error_line(capsys, ["reinforce", "--verify", str(tmp_path), "--detect", "2"], "reinforce")
    assert "manifest.json" in line  # the folder is checked first; a real one then gets the --detect check
    from mmembed.reinforce.replay_sampling import samples_needed

    with pytest.raises(UserError, match="--detect"):
        samples_needed(100, 2.0, 0.99)


@pytest.mark.slow
def test_real_process_exit_code_and_stderr(tmp_path: Path) -> None:
    """The same contract through a real `python -m mmembed` process: exit 2, one line, no traceback."""
    proc = mmembed(["train", str(DEMO_RECIPE), f"output_dir={tmp_path / 'run'}", "train.log_every=0"])
    assert_one_line_error(proc, "train", "train.log_every")
    debug = mmembed(["train", str(DEMO_RECIPE), f"output_dir={tmp_path / 'run'}", "train.log_every=0", "--debug"])
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr
