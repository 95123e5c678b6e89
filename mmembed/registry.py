"""Name -> builder registries. Every pluggable component (tower, head, loss, data stage) lives in one.

A registry refuses duplicate names, so two modules can never silently shadow each other, and each entry
carries the typed config dataclass that its recipe arguments are validated against.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from mmembed.config.validate import structured_from_dict

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    builder: Callable[..., T]
    config_cls: type | None


class Registry(Generic[T]):
    """A named collection of builders. `build(name, args)` validates `args` against the entry's config."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, config_cls: type | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(builder: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise KeyError(f"{self.kind} '{name}' is already registered by {self._entries[name].builder}")
            self._entries[name] = Entry(name, builder, config_cls)
            return builder

        return decorator

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> Entry[T]:
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} '{name}'; registered: {', '.join(self.names())}")
        return self._entries[name]

    def make_config(self, name: str, args: Mapping[str, Any] | None, where: str = "") -> Any:
        entry = self.get(name)
        if entry.config_cls is None:
            if args:
                raise ValueError(f"{self.kind} '{name}' takes no args, got {sorted(args)}")
            return None
        return structured_from_dict(entry.config_cls, dict(args or {}), where or f"{self.kind}.{name}")

    def build(self, name: str, args: Mapping[str, Any] | None = None, **extra: Any) -> T:
        entry = self.get(name)
        config = self.make_config(name, args)
        return entry.builder(config, **extra) if entry.config_cls is not None else entry.builder(**extra)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
