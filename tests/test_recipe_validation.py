"""Recipes are validated when they load: component args against their typed configs, errors naming the recipe
path, and derived loss sizes filled in from the run (model.embed_dim, sizes.json, the reinforced manifest)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmembed.config import ConfigError, ExperimentConfig, structured_from_dict
from mmembed.recipe import complete_recipe, load_recipe
from mmembed.reinforced_format.dataset_files import FORMAT

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "recipes" / "demo.yaml"
TEXT = {"type": "open_clip_text", "args": {"text_cfg": {"context_length": 8, "width": 16, "heads": 2, "layers": 1},
                                           "embed_dim": 16}}


@pytest.mark.parametrize(("override", "message"), [
    ("model.modalities.audio.tower.args.n_mel=40", r"'model\.modalities\.audio\.tower\.args\.n_mel'.*'n_mels'"),
    ("model.pairs.0.args.tile=3", r"'model\.pairs\[0\]\.args\.tile'.*'tile_size'"),
    ("model.modalities.image.head.args.widht=3", r"model\.modalities\.image\.head"),
    ("model.modalities.image.tower.type=vit_nope", r"model\.modalities\.image\.tower\.type: unknown tower"),
    ("model.pairs.1.loss=nope", r"model\.pairs\[1\]\.loss: unknown loss 'nope'"),
])
def test_component_errors_name_the_recipe_path(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_recipe(DEMO, [override])


def _tree(loss: str, args: dict, data: dict) -> ExperimentConfig:
    return structured_from_dict(ExperimentConfig, {
        "model": {"embed_dim": 16, "modalities": {"text": {"tower": TEXT, "head": {"type": "identity"}},
                                                  "caption": {"tower": TEXT, "head": {"type": "identity"}}},
                  "pairs": [{"a": "text", "b": "caption", "loss": loss, "args": args}]},
        "data": data})


def _sized_data(folder: Path) -> dict:
    (folder / "sizes.json").write_text(json.dumps({"a.tar": 10, "b.tar": 5}))
    return {"train": [{"urls": [str(folder / "a.tar")]}, {"urls": [str(folder / "b.tar")]}]}


def test_tempnet_and_isogclr_sizes_are_derived(tmp_path: Path) -> None:
    data = _sized_data(tmp_path)
    tempnet = complete_recipe(_tree("tempnet", {"dropout": 0.0}, data)).model.pairs[0].args
    assert tempnet["embed_dim"] == 16 and tempnet["num_samples"] == 15
    assert complete_recipe(_tree("isogclr", {}, data)).model.pairs[0].args["num_samples"] == 15
    # A larger table than the data is harmless (indices stay in range); a smaller one is refused.
    assert complete_recipe(_tree("isogclr", {"num_samples": 20}, data)).model.pairs[0].args["num_samples"] == 20
    with pytest.raises(ConfigError, match=r"model\.pairs\[0\]\.args\.num_samples = 10 disagrees .* gives 15"):
        complete_recipe(_tree("isogclr", {"num_samples": 10}, data))
    with pytest.raises(ConfigError, match=r"args\.embed_dim = 32 disagrees with model\.embed_dim"):
        complete_recipe(_tree("tempnet", {"embed_dim": 32}, data))


def test_underivable_size_must_be_set(tmp_path: Path) -> None:
    data = {"train": [{"urls": [str(tmp_path / "a.tar")]}]}  # no sizes.json
    with pytest.raises(ConfigError, match=r"args\.num_samples: not set, and it cannot be derived.*sizes\.json"):
        complete_recipe(_tree("isogclr", {}, data))
    assert complete_recipe(_tree("isogclr", {"num_samples": 7}, data)).model.pairs[0].args["num_samples"] == 7


def test_distill_teachers_come_from_the_manifest(tmp_path: Path) -> None:
    teachers = [{"name": "t1", "dim": 4, "scale": 50.0}, {"name": "t2", "dim": 3, "scale": 20.0}]
    (tmp_path / "manifest.json").write_text(json.dumps({"format": FORMAT, "teachers": teachers}))
    data = {"train": [{"urls": [str(tmp_path / "000000.tar")]}], "reinforced": {"enabled": True}}
    args = complete_recipe(_tree("distill", {"lam": 0.5}, data)).model.pairs[0].args
    assert args["teacher_dims"] == [4, 3] and args["teacher_scales"] == [50.0, 20.0]
    own_scales = complete_recipe(_tree("distill", {"teacher_scales": [70.0, 60.0]}, data)).model.pairs[0].args
    assert own_scales["teacher_scales"] == [70.0, 60.0] and own_scales["teacher_dims"] == [4, 3]
    with pytest.raises(ConfigError, match=r"teacher_dims = \[768, 768\] disagrees .*manifest\.json"):
        complete_recipe(_tree("distill", {"teacher_dims": [768, 768]}, data))
    with pytest.raises(ConfigError, match="teacher_dims: not set, and it cannot be derived"):
        complete_recipe(_tree("distill", {}, {**data, "reinforced": {"enabled": False}}))


def test_complete_recipe_leaves_its_input_alone(tmp_path: Path) -> None:
    config = _tree("isogclr", {}, _sized_data(tmp_path))
    complete_recipe(config)
    assert config.model.pairs[0].args == {}
