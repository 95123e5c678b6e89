"""A training recipe, complete: the schema (mmembed.config), every component's `args` checked against that
component's registered config with errors naming the recipe path (`model.modalities.audio.tower.args.n_mel`),
and the sizes a loss derives from the run filled in rather than copied by hand.

A loss names its derived fields (`PairLoss.derived_args`); `DERIVED` says where each comes from. A derived
field the recipe leaves out is filled in; one it sets must agree with the run (num_samples may exceed the
data, never fall short of it; teacher_scales may differ from the teachers' own: that is a training choice).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mmembed.config import ExperimentConfig
from mmembed.config import load_recipe as load_schema
from mmembed.config.sources import check_sources, source_name
from mmembed.config.validate import ConfigError
from mmembed.data.sources import expand_urls, source_num_samples
from mmembed.heads import HEADS
from mmembed.losses import LOSSES
from mmembed.reinforced_format.dataset_files import load_manifest, teacher_layout
from mmembed.towers import TOWERS


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read a training recipe with `key.sub=value` overrides, validate every part and fill derived sizes."""
    return complete_recipe(load_schema(path, overrides))


def complete_recipe(config: ExperimentConfig) -> ExperimentConfig:
    """A copy of `config` with derived loss args filled in and every component's args validated."""
    config = copy.deepcopy(config)
    check_sources(config)
    _check_source_sizes(config)
    for i, pair in enumerate(config.model.pairs):
        _fill_derived(config, pair.loss, pair.args, f"model.pairs[{i}].args")
    check_components(config)
    return config


def _check_source_sizes(config: ExperimentConfig) -> None:
    """With several sources, a per-sample state table is indexed by offset + idx, the offset being the sizes of
    the sources before it (mmembed.data.mixing): every source's size must then be known."""
    if len(config.data.train) < 2:
        return
    for i, pair in enumerate(config.model.pairs):
        if pair.loss not in LOSSES or "num_samples" not in getattr(LOSSES.get(pair.loss).builder, "derived_args", ()):
            continue
        for j, source in enumerate(config.data.train):
            try:
                source_num_samples(source)
            except (OSError, KeyError, ValueError) as err:
                raise ConfigError(f"model.pairs[{i}] ({pair.loss}) keeps per-sample state indexed across sources, "
                                  f"and the size of data.train[{j}] ('{source_name(source, j)}') is unknown ({err});"
                                  f" set data.train[{j}].num_samples") from err


def check_components(config: ExperimentConfig) -> None:
    """Each tower, head and loss `args` against its registered config (unknown keys, types, ranges)."""
    for modality, mcfg in config.model.modalities.items():
        where = f"model.modalities.{modality}"
        _check(TOWERS, mcfg.tower.type, mcfg.tower.args, f"{where}.tower")
        _check(HEADS, mcfg.head.type, mcfg.head.args, f"{where}.head")
    for i, pair in enumerate(config.model.pairs):
        _check(LOSSES, pair.loss, pair.args, f"model.pairs[{i}]", type_key="loss")


def _check(registry: Any, name: str, args: dict[str, Any], where: str, type_key: str = "type") -> None:
    if name not in registry:
        raise ConfigError(f"{where}.{type_key}: unknown {registry.kind} '{name}'; registered: "
                          f"{', '.join(registry.names())}")
    registry.make_config(name, args, f"{where}.args")


# -- derived sizes -----------------------------------------------------------------------------------------
def _embed_dim(config: ExperimentConfig) -> int:
    return int(config.model.embed_dim)


def _num_samples(config: ExperimentConfig) -> int:
    """The training data's size, from each source's num_samples or the sizes.json next to its shards."""
    if not config.data.train:
        raise ValueError("data.train lists no shard sources")
    return sum(source_num_samples(source) for source in config.data.train)


def _manifest(config: ExperimentConfig) -> dict[str, Any]:
    """The reinforced-set manifest next to the training shards (every source must share its teachers)."""
    if not config.data.reinforced.enabled:
        raise ValueError("teacher sizes come from a reinforced dataset, and data.reinforced.enabled is false")
    layouts = []
    for source in config.data.train:
        folder = os.path.dirname(expand_urls(source.urls)[0]) or "."
        layouts.append((folder, load_manifest(folder)))
    if len({str(teacher_layout(m)) for _, m in layouts}) > 1:
        raise ValueError(f"the reinforced sources {[f for f, _ in layouts]} were built with different teachers")
    return layouts[0][1]


def _teacher_dims(config: ExperimentConfig) -> list[int]:
    return teacher_layout(_manifest(config))[0]


def _teacher_scales(config: ExperimentConfig) -> list[float]:
    return teacher_layout(_manifest(config))[1]


def _at_least(given: Any, derived: Any) -> bool:
    return int(given) >= int(derived)


def _equal(given: Any, derived: Any) -> bool:
    return list(given) == list(derived) if isinstance(derived, list) else given == derived


def _any(given: Any, derived: Any) -> bool:
    return True


# field -> (where its value comes from, a description for errors, whether a recipe's own value is acceptable).
DERIVED: dict[str, tuple[Callable[[ExperimentConfig], Any], str, Callable[[Any, Any], bool]]] = {
    "embed_dim": (_embed_dim, "model.embed_dim", _equal),
    "num_samples": (_num_samples, "the training data's size (data.train num_samples or sizes.json)", _at_least),
    "teacher_dims": (_teacher_dims, "the reinforced set's teachers (manifest.json)", _equal),
    "teacher_scales": (_teacher_scales, "the reinforced set's teachers (manifest.json)", _any),
}


def _fill_derived(config: ExperimentConfig, loss: str, args: dict[str, Any], where: str) -> None:
    if loss not in LOSSES:
        return  # check_components reports the unknown name
    for name in getattr(LOSSES.get(loss).builder, "derived_args", ()):
        source, what, acceptable = DERIVED[name]
        try:
            derived = source(config)
        except (OSError, KeyError, ValueError) as err:
            if name in args:
                continue  # the recipe's own value stands when the run cannot tell
            raise ConfigError(f"{where}.{name}: not set, and it cannot be derived from {what}: {err}; "
                              f"set it in the recipe") from err
        if name not in args:
            args[name] = derived
        elif not acceptable(args[name], derived):
            raise ConfigError(f"{where}.{name} = {args[name]} disagrees with {what}, which gives {derived}; "
                              "leave it out and it is filled in")
