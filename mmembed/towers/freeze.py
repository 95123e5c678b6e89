"""LiT-style freezing: freeze a whole tower, then re-enable parameters whose names match regexes.

Frozen parts must also behave as frozen: dropout off and BatchNorm statistics fixed. `frozen_submodules`
names the largest submodules whose parameters are all frozen; the model keeps exactly those in eval mode
across `model.train()`, while parameter-free modules (dropout) inside a trainable block keep training.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn


def apply_freeze(tower: nn.Module, freeze: bool, unfreeze: Sequence[str], where: str = "tower") -> list[str]:
    """Set requires_grad per the spec and return the submodule names to keep in eval mode ('' = all).

    Every `unfreeze` regex (re.search over parameter names relative to the tower) must match at least one
    parameter, so a typo cannot silently leave a tower fully frozen.
    """
    if unfreeze and not freeze:
        raise ValueError(f"{where}: 'unfreeze' {list(unfreeze)} only makes sense with 'freeze: true'")
    if not freeze:
        return []
    patterns = []
    for pattern in unfreeze:
        try:
            patterns.append(re.compile(pattern))
        except re.error as err:
            raise ValueError(f"{where}: invalid unfreeze regex '{pattern}': {err}") from err
    matched: set[str] = set()
    for name, param in tower.named_parameters():
        hits = {p.pattern for p in patterns if p.search(name)}
        matched |= hits
        param.requires_grad_(bool(hits))
    unused = [p.pattern for p in patterns if p.pattern not in matched]
    if unused:
        raise ValueError(f"{where}: unfreeze regex(es) {unused} match no parameter of the tower")
    names = frozen_submodules(tower)
    keep_eval(tower, names)
    return names


def frozen_submodules(module: nn.Module) -> list[str]:
    """The maximal submodules that own parameters and have none trainable ('' for the module itself)."""
    found: list[str] = []

    def visit(prefix: str, mod: nn.Module) -> None:
        params = list(mod.parameters())
        if params and not any(p.requires_grad for p in params):
            found.append(prefix)
            return
        for child_name, child in mod.named_children():
            visit(f"{prefix}.{child_name}" if prefix else child_name, child)

    visit("", module)
    return found


def keep_eval(module: nn.Module, names: Sequence[str]) -> None:
    for name in names:
        module.get_submodule(name).eval()
