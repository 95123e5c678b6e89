"""Recipe loading: typed values, overrides, and errors that name the bad key and the valid ones."""

from pathlib import Path

import pytest

from mmembed.config import ConfigError, load_recipe
from mmembed.registry import Registry

RECIPE = """
name: t
model:
  embed_dim: 8
  modalities:
    image: {tower: {type: timm_image, args: {model_name: resnet18}}}
  pairs:
    - {a: image, b: text, loss: infonce}
optim: {lr: 1.0e-3}
"""


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE)
    return path


def test_values_and_overrides_are_typed(recipe: Path) -> None:
    cfg = load_recipe(recipe, ["optim.lr=2e-3", "model.pairs.0.weight=0.5", "train.steps=7",
                               "optim.betas=[0.9,0.95]"])
    assert cfg.optim.lr == pytest.approx(2e-3)
    assert cfg.model.pairs[0].weight == 0.5
    assert cfg.train.steps == 7 and isinstance(cfg.train.steps, int)
    assert cfg.optim.betas == [0.9, 0.95]
    assert cfg.model.modalities["image"].tower.args == {"model_name": "resnet18"}


@pytest.mark.parametrize(
    ("override", "path", "suggestion", "valid"),
    [
        ("optim.lrr=1", "optim.lrr", "lr", "weight_decay"),
        ("model.modalities.image.tower.typo=1", "model.modalities.image.tower.typo", "type", "freeze"),
        ("model.pairs.0.los=x", "model.pairs[0].los", "loss", "weight"),
        ("trian.steps=3", "trian", "train", "optim"),
    ],
)
def test_misspelled_key_names_key_and_valid_keys(recipe: Path, override: str, path: str, suggestion: str,
                                                 valid: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_recipe(recipe, [override])
    message = str(err.value)
    assert f"'{path}'" in message
    assert f"Did you mean '{suggestion}'" in message
    assert valid in message


def test_misspelled_key_in_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  stesp: 3\n")
    with pytest.raises(ConfigError, match=r"'train\.stesp'.*Did you mean 'steps'"):
        load_recipe(path)


def test_bad_value_type_and_choice(recipe: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.steps"):
        load_recipe(recipe, ["train.steps=abc"])
    with pytest.raises(ConfigError, match="precision"):
        load_recipe(recipe, ["train.precision=fp8"])


def test_registry_refuses_duplicates_and_validates_args() -> None:
    from dataclasses import dataclass

    @dataclass
    class Args:
        width: int = 4

    reg: Registry[object] = Registry("thing")
    reg.register("a", Args)(lambda cfg: cfg.width)
    with pytest.raises(KeyError, match="already registered"):
        reg.register("a", Args)(lambda cfg: cfg)
    assert reg.build("a", {"width": 9}) == 9
    with pytest.raises(ConfigError, match=r"'thing\.a\.widht'.*Did you mean 'width'"):
        reg.build("a", {"widht": 9})
    with pytest.raises(KeyError, match="registered: a"):
        reg.get("b")


def test_unquoted_yaml_no_means_full_precision(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  precision: no\n")
    assert load_recipe(path).train.precision == "no"
    assert load_recipe(path, ["train.precision=fp32"]).train.precision == "no"
