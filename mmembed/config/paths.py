"""Roots that the paths of a recipe are written against (`${paths.data}/demo/train/...`).

A recipe names its data and output roots once; every shard list, class-name file and output folder is an
OmegaConf interpolation of them. Pointing a recipe at another disk is then one override (`paths.data=/mnt/x`)
or one environment variable (the shipped recipes default to `${oc.env:MMEMBED_DATA,data}` and
`${oc.env:MMEMBED_RUNS,runs}`), instead of one list-indexed override per source and evaluation task.
Interpolations are resolved after the overrides, so an override of a root reaches every path built from it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PathsConfig:
    data: str = "data"  # where data sets live (shards, class names)
    runs: str = "runs"  # where run folders are created
