"""Recipe roots (`paths.data`, `paths.runs`) and progress output for logs that are not terminals."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from mmembed.config import load_recipe
from mmembed.config.validate import ConfigError
from mmembed.progress import LineProgress, progress, progress_mode

REPO = Path(__file__).resolve().parents[1]


def _paths_of(cfg) -> list[str]:
    urls = [u for source in cfg.data.train for u in source.urls]
    for task in [*cfg.eval.zeroshot, *cfg.eval.retrieval]:
        urls += list(task.urls)
        urls += [task.classnames] if getattr(task, "classnames", None) else []
    return urls


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_writes_its_paths_against_the_roots(recipe: Path) -> None:
    text = recipe.read_text()
    assert "paths:" in text and "${paths." in text, f"{recipe.name} hard-codes its roots"


def test_one_override_of_the_data_root_moves_every_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MMEMBED_DATA", raising=False)
    cfg = load_recipe(REPO / "recipes/trimodal_bind.yaml", ["paths.data=/mnt/disk", "paths.runs=/scratch/runs"])
    paths = _paths_of(cfg)
    assert len(paths) >= 5 and all(p.startswith("/mnt/disk/demo/") for p in paths), paths
    assert cfg.output_dir == "/scratch/runs/trimodal_bind" and cfg.paths.data == "/mnt/disk"


def test_the_environment_sets_the_roots_and_an_override_still_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMEMBED_DATA", "/env/data")
    monkeypatch.setenv("MMEMBED_RUNS", "/env/runs")
    cfg = load_recipe(REPO / "recipes/demo.yaml")
    assert all(p.startswith("/env/data/demo/") for p in _paths_of(cfg)) and cfg.output_dir.startswith("/env/runs/")
    cfg = load_recipe(REPO / "recipes/demo.yaml", ["paths.data=/cli"])
    assert all(p.startswith("/cli/demo/") for p in _paths_of(cfg))


def test_an_interpolation_of_a_missing_key_names_it(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("output_dir: ${paths.nowhere}/run\n")
    with pytest.raises(ConfigError, match=r"output_dir.*paths\.nowhere"):
        load_recipe(recipe)


def test_without_a_terminal_progress_is_whole_lines_at_an_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MMEMBED_PROGRESS", raising=False)
    assert progress_mode(io.StringIO()) == "lines"
    out = io.StringIO()
    bar = LineProgress(total=10, desc="train", unit="step", interval=0.0, file=out)
    bar.set_postfix(loss="1.2345")
    for _ in range(10):
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 11  # ten updates and the closing line
    assert "train" in lines[-1] and "10/10" in lines[-1] and "100%" in lines[-1] and "loss=1.2345" in lines[-1]
    quiet = io.StringIO()
    slow = LineProgress(total=10, interval=3600.0, file=quiet)
    for _ in range(5):
        slow.update(1)
    assert quiet.getvalue() == ""  # nothing until the interval passes ...
    slow.close()
    assert "5/10" in quiet.getvalue()  # ... and the last state at the end


def test_the_environment_chooses_the_display(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMEMBED_PROGRESS", "bar")
    assert not isinstance(progress(total=3, disable=True), LineProgress)
    monkeypatch.setenv("MMEMBED_PROGRESS", "lines")
    assert isinstance(progress(total=3), LineProgress)
