"""Strict dataclass construction from plain dicts (recipes, overrides, registry args).

OmegaConf does the type coercion; this module adds what it lacks: an unknown key fails with an error
naming the full key path, the valid keys at that level and the closest match.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, TypeVar

from omegaconf import OmegaConf

from mmembed.errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A recipe or override that does not fit the schema."""


def _dataclass_type(annotation: Any) -> type | None:
    """The dataclass inside an annotation such as `Foo`, `Foo | None` or `Optional[Foo]`."""
    if dataclasses.is_dataclass(annotation):
        return annotation  # type: ignore[return-value]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(annotation) if dataclasses.is_dataclass(a)]
        return found[0] if len(found) == 1 else None
    return None


def _value_dataclass(annotation: Any) -> tuple[str, type] | None:
    """('dict'|'list', D) when the annotation is dict[str, D] or list[D] with D a dataclass."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]):
        return "dict", args[1]
    if origin is list and len(args) == 1 and dataclasses.is_dataclass(args[0]):
        return "list", args[0]
    return None


def check_keys(cls: type, data: Any, where: str) -> None:
    """Raise ConfigError on the first key in `data` that `cls` (recursively) does not define."""
    if not isinstance(data, dict):
        return
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{path}'.{hint} Valid keys at '{where or '<root>'}': "
                              f"{', '.join(valid)}")
        annotation = hints[key]
        nested = _dataclass_type(annotation)
        if nested is not None:
            check_keys(nested, value, path)
            continue
        container = _value_dataclass(annotation)
        if container and container[0] == "dict" and isinstance(value, dict):
            for name, item in value.items():
                check_keys(container[1], item, f"{path}.{name}")
        elif container and container[0] == "list" and isinstance(value, list):
            for i, item in enumerate(value):
                check_keys(container[1], item, f"{path}[{i}]")


def structured_from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build a `cls` instance from `data`, with strict keys and OmegaConf type checking."""
    check_keys(cls, data, where)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), data)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except Exception as err:  # OmegaConf raises many types; re-raise as one readable error.
        raise ConfigError(_describe(err, where)) from err


def _describe(err: Exception, where: str) -> str:
    """One line naming the offending key: OmegaConf's `full_key`, else the key in a __post_init__ message."""
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    key = getattr(err, "full_key", None)
    if key:
        key = f"{where}.{key}" if where else key
        return f"invalid value for '{key}': {message}. Fix it in the recipe or with {key}=VALUE"
    # Dataclass checks (__post_init__) raise ValueError whose message starts with the key they check.
    return f"invalid config at '{where}': {message}" if where else f"invalid recipe: {message}"
