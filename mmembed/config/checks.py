"""Range checks for recipe numbers, run in each config dataclass's __post_init__ (so at load time, before a
run creates any folder). Messages name the full recipe key and the accepted range."""

from __future__ import annotations

import math


def at_least(section: str, minimum: float, **values: float | int | None) -> None:
    """Each value must be a finite number >= minimum (None is skipped: it means "not set")."""
    for name, value in values.items():
        if value is None:
            continue
        if not math.isfinite(value) or value < minimum:
            raise ValueError(f"{section}.{name} must be >= {minimum}, got {value}")


def within(section: str, name: str, value: float, low: float, high: float) -> None:
    """low <= value <= high (both finite)."""
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{section}.{name} must lie in [{low}, {high}], got {value}")
