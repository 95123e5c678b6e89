"""Which modalities each data source provides and which recipe pairs it trains (docs/design.md,
"Multi-source training").

A source provides the model modalities it names in `modalities` (default: all of them) and trains the recipe
pairs it names in `pairs` (default: every pair whose two sides it provides). An input alias (text_syn ->
text) is provided with its base modality. `check_sources` refuses, naming them, a source that trains no pair,
a pair no source with weight > 0 trains, and names that cannot serve as metric keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mmembed.config.data import ShardSource
from mmembed.config.schema import ExperimentConfig
from mmembed.config.validate import ConfigError

NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class SourcePlan:
    """A source as the run uses it: its name, weight, modalities and the indices of the pairs it trains."""

    name: str
    weight: float
    modalities: tuple[str, ...]
    pairs: tuple[int, ...]


def source_name(source: ShardSource, index: int) -> str:
    return source.name or f"source{index}"


def source_modalities(source: ShardSource, model_modalities: list[str]) -> tuple[str, ...]:
    """The source's declared modalities (in its own order), or every model modality."""
    if source.modalities is None:
        return tuple(model_modalities)
    return tuple(dict.fromkeys(m for m in source.modalities if m in model_modalities))


def _where(index: int, source: ShardSource) -> str:
    return f"data.train[{index}] ('{source_name(source, index)}')"


def _pair_label(config: ExperimentConfig, i: int) -> str:
    pair = config.model.pairs[i]
    return f"{pair.a},{pair.b}"


def _base(config: ExperimentConfig, name: str) -> str:
    return config.model.input_aliases.get(name, name)


def _provided_pairs(config: ExperimentConfig, modalities: tuple[str, ...]) -> list[int]:
    return [i for i, p in enumerate(config.model.pairs)
            if _base(config, p.a) in modalities and _base(config, p.b) in modalities]


def _check_modalities(config: ExperimentConfig, index: int, source: ShardSource) -> None:
    known = list(config.model.modalities)
    for name in source.modalities or []:
        if name not in known:
            alias = (f" ('{name}' is an input alias: it is provided with '{_base(config, name)}')"
                     if name in config.model.input_aliases else "")
            raise ConfigError(f"{_where(index, source)}.modalities names '{name}', which is not a model modality"
                              f"{alias}; model.modalities: {', '.join(known)}")
    if source.modalities is not None and not source.modalities:
        raise ConfigError(f"{_where(index, source)}.modalities is empty; name the modalities its samples hold")


def _chosen_pairs(config: ExperimentConfig, index: int, source: ShardSource, modalities: tuple[str, ...]) -> list[int]:
    provided = _provided_pairs(config, modalities)
    if source.pairs is None:
        return provided
    chosen: list[int] = []
    labels = [_pair_label(config, i) for i in range(len(config.model.pairs))]
    for entry in source.pairs:
        sides = [part.strip() for part in entry.split(",")]
        matches = [i for i, p in enumerate(config.model.pairs) if len(sides) == 2 and {p.a, p.b} == set(sides)]
        if not matches:
            raise ConfigError(f"{_where(index, source)}.pairs names '{entry}', which is not a recipe pair; write "
                              f"'a,b' as in model.pairs: {', '.join(labels)}")
        lacking = [i for i in matches if i not in provided]
        if lacking:
            raise ConfigError(f"{_where(index, source)}.pairs names '{entry}', but the source provides only "
                              f"[{', '.join(modalities)}]; add the missing modality to its modalities or drop "
                              "the pair")
        chosen += [i for i in matches if i not in chosen]
    return sorted(chosen)


def source_plans(config: ExperimentConfig) -> list[SourcePlan]:
    """Every data.train source resolved against the model, validated (ConfigError names the key)."""
    plans: list[SourcePlan] = []
    labels = ", ".join(_pair_label(config, i) for i in range(len(config.model.pairs))) or "none"
    for index, source in enumerate(config.data.train):
        name = source_name(source, index)
        if not NAME.match(name):
            raise ConfigError(f"data.train[{index}].name '{name}' may only hold letters, digits, '_' and '-' "
                              "(it names the source's metrics and checkpoint entries)")
        _check_modalities(config, index, source)
        modalities = source_modalities(source, list(config.model.modalities))
        pairs = _chosen_pairs(config, index, source, modalities)
        if not pairs:
            raise ConfigError(f"{_where(index, source)} provides [{', '.join(modalities)}] and trains none of "
                              f"the recipe pairs ({labels}): a pair needs both its modalities in one source; "
                              "add a modality to the source or remove it")
        plans.append(SourcePlan(name, float(source.weight), modalities, tuple(pairs)))
    names = [plan.name for plan in plans]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"data.train source names must be unique, repeated: {repeated}")
    return plans


def check_sources(config: ExperimentConfig) -> list[SourcePlan]:
    """`source_plans`, plus: every recipe pair is trained by at least one source with weight > 0."""
    plans = source_plans(config)
    if not plans:
        return plans
    for i, pair in enumerate(config.model.pairs):
        if not any(i in plan.pairs and plan.weight > 0 for plan in plans):
            offered = "; ".join(f"'{p.name}' (weight {p.weight:g}) provides [{', '.join(p.modalities)}]"
                                for p in plans)
            raise ConfigError(f"model.pairs[{i}] ({pair.a}, {pair.b}) is trained by no data source with weight > 0"
                              f" ({offered}); add a source with modalities [{_base(config, pair.a)}, "
                              f"{_base(config, pair.b)}] or remove the pair")
    return plans


def trains_every_pair_everywhere(plans: list[SourcePlan], config: ExperimentConfig) -> bool:
    """True when every source provides every model modality and trains every pair: each step then uses
    every parameter, as a single-source run does."""
    every_pair = tuple(range(len(config.model.pairs)))
    every_modality = set(config.model.modalities)
    return all(p.pairs == every_pair and set(p.modalities) == every_modality for p in plans)
