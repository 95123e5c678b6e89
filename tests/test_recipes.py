"""Every recipe in recipes/ loads against its schema, says how to run it, and its model builds offline."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from mmembed.cli import build_parser
from mmembed.config import ExperimentConfig, ShardSource, load_recipe
from mmembed.config.load import load_structured
from mmembed.config.reinforce import ReinforceConfig
from mmembed.recipe import complete_recipe
from mmembed.reinforced_format.dataset_files import FORMAT

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
BUILD_RECIPES = [r for r in RECIPES if not r.name.startswith("reinforce_")]
# Built on the meta device: the same modules and shapes, without 2-4 GB of random weights and a minute of init.
META_BUILD = {"clip_vit_l14_fsdp", "clip_vit_h14_fsdp"}


def test_recipes_exist() -> None:
    names = {r.stem for r in RECIPES}
    assert {"demo", "clip_vit_b32_webdataset", "speech_cwcl", "speech_infonce", "mobileclip_s0_reinforced"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_loads_and_documents_its_command(recipe: Path) -> None:
    if recipe.name.startswith("reinforce_"):
        load_structured(ReinforceConfig, recipe)
        assert "mmembed reinforce" in recipe.read_text()
    else:
        load_recipe(recipe)
        header = recipe.read_text().split("\nname:")[0]
        assert "mmembed train" in header or "launch/" in header, "the header must give the command to run it"


@pytest.mark.parametrize("recipe", BUILD_RECIPES, ids=lambda p: p.stem)
def test_recipe_model_builds_without_network(recipe: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from mmembed.model import build_model
    from mmembed.train.objective import Objective

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = complete_recipe(with_stand_in_data(load_recipe(recipe), tmp_path))
    with torch.device("meta") if recipe.stem in META_BUILD else nullcontext():
        model = build_model(cfg.model)
    Objective(cfg.model.pairs)
    assert set(model.modalities) == set(cfg.model.modalities)


def with_stand_in_data(cfg: ExperimentConfig, folder: Path) -> ExperimentConfig:
    """Recipes for user data point at placeholders; derived loss sizes need the data's sizes.json (and a
    reinforced set's manifest), so the build test gives them a stand-in folder with those files."""
    (folder / "sizes.json").write_text(json.dumps({"000000.tar": 100}))
    if cfg.data.reinforced.enabled:
        teacher = {"name": "t", "kind": "open_clip", "args": {}, "dim": 768, "scale": 100.0, "sha256": "0"}
        (folder / "manifest.json").write_text(json.dumps({"format": FORMAT, "teachers": [teacher, teacher]}))
    cfg.data.train = [ShardSource(urls=[str(folder / "000000.tar")])]
    return cfg


def test_cli_surface_is_frozen() -> None:
    """Experiment settings belong in recipes: adding a flag to a subcommand must be a deliberate change here."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    flags = {name: sorted(opt for action in p._actions for opt in action.option_strings if opt != "-h")
             for name, p in sub.choices.items()}
    assert flags["train"] == ["--debug", "--help", "--overwrite", "--resume"]
    assert all("--debug" in options for options in flags.values()), flags
    assert set(flags) == {"train", "eval", "export", "embed", "search", "reinforce", "consolidate"}
    assert all(len(options) <= 16 for options in flags.values()), flags
