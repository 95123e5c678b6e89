"""Name -> builder registries. Every pluggable component (tower, head, loss, teacher, ...) lives in one.

A registry refuses duplicate names, so two modules can never silently shadow each other, and each entry
carries the typed config dataclass that its recipe arguments are validated against.

An entry can also be *declared* before its module is imported (`declare(name, module, extra=...)`): the
module is imported on first use. That keeps `import mmembed` free of optional dependencies (a Hugging Face
tower needs `transformers`, which only the `hf` extra installs); a missing one fails with an error naming
the extra to install.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from mmembed.config.validate import ConfigError, structured_from_dict

T = TypeVar("T")


class MissingDependencyError(ImportError):
    """A registered component needs an optional dependency that is not installed; says which extra to install."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    builder: Callable[..., T]
    config_cls: type | None


@dataclass(frozen=True)
class Declared:
    """Where a not-yet-imported entry is registered, and the extra that installs its optional dependencies."""

    module: str
    extra: str | None = None


class Registry(Generic[T]):
    """A named collection of builders. `build(name, args)` validates `args` against the entry's config."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._declared: dict[str, Declared] = {}

    def register(self, name: str, config_cls: type | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(builder: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise KeyError(f"{self.kind} '{name}' is already registered by {self._entries[name].builder}")
            self._entries[name] = Entry(name, builder, config_cls)
            return builder

        return decorator

    def declare(self, name: str, module: str, extra: str | None = None) -> None:
        """Promise that importing `module` registers `name`; the import happens on first use."""
        if name in self._declared or name in self._entries:
            raise KeyError(f"{self.kind} '{name}' is already registered or declared")
        self._declared[name] = Declared(module, extra)

    def declared_module(self, name: str) -> str | None:
        """The module declared to register `name` (None for entries registered directly)."""
        declared = self._declared.get(name)
        return declared.module if declared else None

    def names(self) -> list[str]:
        return sorted(set(self._entries) | set(self._declared))

    def get(self, name: str) -> Entry[T]:
        if name not in self._entries and name in self._declared:
            self._import(name, self._declared[name])
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} '{name}'; registered: {', '.join(self.names())}")
        return self._entries[name]

    def _import(self, name: str, declared: Declared) -> None:
        try:
            importlib.import_module(declared.module)
        except ModuleNotFoundError as err:
            missing = (err.name or "").split(".")[0]
            if declared.extra is None or not missing or missing == "mmembed":
                raise
            raise MissingDependencyError(
                f"{self.kind} '{name}' needs '{missing}', which is not installed: "
                f"pip install 'mmembed[{declared.extra}]'") from err
        if name not in self._entries:
            raise KeyError(f"{self.kind} '{name}': module {declared.module} was declared to register it, "
                           "but does not")

    def make_config(self, name: str, args: Mapping[str, Any] | None, where: str = "") -> Any:
        entry = self.get(name)
        if entry.config_cls is None:
            if args:
                raise ConfigError(f"{where or self.kind}: {self.kind} '{name}' takes no args, got {sorted(args)}")
            return None
        return structured_from_dict(entry.config_cls, dict(args or {}), where or f"{self.kind}.{name}")

    def build(self, name: str, args: Mapping[str, Any] | None = None, *, where: str = "", **extra: Any) -> T:
        entry = self.get(name)
        config = self.make_config(name, args, where)
        return entry.builder(config, **extra) if entry.config_cls is not None else entry.builder(**extra)

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self._declared
