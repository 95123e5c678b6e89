"""PNG plots: training curves from metrics.jsonl, a zero-shot confusion matrix, learned temperatures.

Figures are built with `matplotlib.figure.Figure` (Agg canvas) rather than pyplot, so plotting never needs a
display and never switches the global backend of a process that imported us (e.g. a notebook).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

Series = dict[str, tuple[np.ndarray, np.ndarray]]

# Above these sizes per-class labels and per-cell counts become unreadable, so they are dropped.
MAX_TICK_LABELS = 60
MAX_ANNOTATED_CLASSES = 20


def _numeric(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    # The trainer writes non-finite values as strings ("nan", "inf") because JSON has no literal for them.
    if isinstance(value, str) and value.strip().lower() in {"nan", "inf", "-inf", "+inf"}:
        return float(value)
    return None


def read_metrics_jsonl(path: Path) -> Series:
    """{metric: (steps, values)} sorted by step; for a step logged twice the later line wins."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file not found: {path}")
    lines = path.read_text().splitlines()
    table: dict[str, dict[int, float]] = defaultdict(dict)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):  # a run killed mid-write leaves a partial last line
                break
            raise ValueError(f"{path}:{number} is not valid JSON: {err}") from err
        if not isinstance(record, dict) or "step" not in record:
            raise ValueError(f"{path}:{number} has no 'step' field")
        step = int(record["step"])
        for key, raw in record.items():
            value = _numeric(raw)
            if key != "step" and value is not None:
                # A resumed run re-logs steps after its checkpoint; the newer values supersede the old ones.
                table[key][step] = value
    return {key: (np.array(sorted(v)), np.array([v[s] for s in sorted(v)])) for key, v in table.items()}


def _group(name: str) -> tuple[str, str]:
    """"logit_scale/image__text" -> panel "logit_scale", line "image__text"; "loss" -> ("loss", "loss")."""
    panel, _, line = name.rpartition("/")
    return (panel, line) if panel else (name, name)


def plot_training_curves(metrics_jsonl: Path, out_png: Path) -> Path:
    """A grid with one panel per metric group (the name up to its last "/"), step on the x axis."""
    series = read_metrics_jsonl(metrics_jsonl)
    if not series:
        raise ValueError(f"{metrics_jsonl} holds no numeric metrics to plot")
    panels: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = defaultdict(list)
    for name, (steps, values) in series.items():
        panel, line = _group(name)
        panels[panel].append((line, steps, values))
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(5.0 * ncols, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (panel, lines) in zip(axes, panels.items()):
        for line, steps, values in lines:
            # Eval metrics are logged every few thousand steps: markers keep sparse points visible.
            ax.plot(steps, values, label=line, marker="o" if len(steps) <= 30 else None, markersize=3)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=7)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    return _save(fig, out_png)


def plot_confusion_matrix(cm: np.ndarray, classnames: list[str], out_png: Path) -> Path:
    """Row-normalised confusion matrix (row = true class, column = prediction); counts shown when small."""
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square [C, C], got shape {cm.shape}")
    if len(classnames) != cm.shape[0]:
        raise ValueError(f"{len(classnames)} class names for a {cm.shape[0]}-class confusion matrix")
    support = cm.sum(axis=1, keepdims=True)
    rates = np.divide(cm, support, out=np.zeros(cm.shape, dtype=float), where=support > 0)
    n = cm.shape[0]
    size = min(4.0 + 0.3 * n, 30.0)
    fig = Figure(figsize=(size + 1.5, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="fraction of true class")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= MAX_TICK_LABELS:
        ax.set_xticks(range(n), classnames, rotation=90, fontsize=7)
        ax.set_yticks(range(n), classnames, fontsize=7)
    if n <= MAX_ANNOTATED_CLASSES:
        for i, j in zip(*np.nonzero(cm)):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black")
    return _save(fig, out_png)


def plot_temperature_histogram(
    taus: dict[str, np.ndarray], counts: np.ndarray | None, out_png: Path
) -> Path:
    """Histogram of learned per-sample temperatures per anchor; with `counts`, tau against visit count."""
    if not taus:
        raise ValueError("no temperatures to plot")
    arrays = {name: np.asarray(tau, dtype=float).reshape(-1) for name, tau in taus.items()}
    if counts is not None:
        counts = np.asarray(counts).reshape(-1)
        for name, tau in arrays.items():
            if tau.shape != counts.shape:
                raise ValueError(f"temperatures '{name}' have {tau.size} entries "
                                 f"but counts have {counts.size}")
    fig = Figure(figsize=(11.0 if counts is not None else 5.5, 4.0), layout="constrained")
    axes = fig.subplots(1, 2 if counts is not None else 1, squeeze=False).ravel()
    for i, (name, tau) in enumerate(arrays.items()):
        axes[0].hist(tau, bins=50, alpha=0.6, color=f"C{i}", label=f"{name} (mean {tau.mean():.4g})")
    axes[0].set_xlabel("temperature τ")
    axes[0].set_ylabel("samples")
    axes[0].legend(fontsize=8)
    if counts is not None:
        visits, slot = np.unique(counts, return_inverse=True)
        for i, (name, tau) in enumerate(arrays.items()):
            axes[1].scatter(counts, tau, s=4, alpha=0.3, color=f"C{i}", label=name)
            mean_tau = np.bincount(slot, weights=tau) / np.bincount(slot)
            axes[1].plot(visits, mean_tau, marker="o", markersize=3, color=f"C{i}", label=f"{name}: mean")
        axes[1].set_xlabel("times the sample was visited")
        axes[1].set_ylabel("temperature τ")
        axes[1].legend(fontsize=8)
    return _save(fig, out_png)


def _save(fig: Figure, out_png: Path) -> Path:
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    return out_png
