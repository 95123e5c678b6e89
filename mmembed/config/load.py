"""Load a recipe file plus `key.sub=value` overrides into an ExperimentConfig."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from omegaconf import OmegaConf

from mmembed.config.schema import ExperimentConfig
from mmembed.config.validate import ConfigError, structured_from_dict

T = TypeVar("T")


def _parse_value(raw: str) -> object:
    # OmegaConf's grammar parses numbers (incl. 1e-3), bools, null and [lists] the way YAML users expect.
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([f"value={raw}"]))["value"]
    except Exception as err:  # yaml and OmegaConf grammar errors
        raise ConfigError(f"cannot parse override value {raw!r}: {err}. Quote strings that contain YAML "
                          "syntax, e.g. data.train.0.urls='[\"shards/{000000..000009}.tar\"]'") from err


def _apply_override(tree: dict, item: str) -> None:
    """Set `key.sub=value` in the raw recipe tree; integer parts index lists (pairs.0.weight=2)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form key.sub=value")
    key, raw = item.split("=", 1)
    *parents, leaf = key.split(".")
    node: dict | list = tree
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(leaf)] = _parse_value(raw)
    else:
        node[leaf] = _parse_value(raw)


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read `path` (YAML), apply overrides, and validate against ExperimentConfig (unknown keys fail)."""
    return load_structured(ExperimentConfig, path, overrides)


def load_structured(cls: type[T], path: str | Path, overrides: Sequence[str] = ()) -> T:
    """Read a YAML recipe, apply `key.sub=value` overrides, validate against `cls` (unknown keys fail)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    tree = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"recipe {path} must be a mapping at the top level")
    for item in overrides:
        _apply_override(tree, item)
    return structured_from_dict(cls, _resolved(tree, path))


def _resolved(tree: dict, path: Path) -> dict:
    """Interpolations (`${paths.data}`, `${oc.env:VAR,default}`) resolved after the overrides, so that an
    override of a root reaches every value built from it (mmembed.config.paths)."""
    try:
        return OmegaConf.to_container(OmegaConf.create(tree), resolve=True)
    except Exception as err:  # omegaconf's interpolation and grammar errors carry the key
        key = getattr(err, "full_key", None)
        where = f" at '{key}'" if key else ""
        raise ConfigError(f"recipe {path}{where}: {getattr(err, 'msg', err)}. Interpolations read other keys "
                          "(${paths.data}) or environment variables (${oc.env:NAME,default})") from err


def recipe_to_yaml(config: ExperimentConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))
