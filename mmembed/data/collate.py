"""Preprocessed samples -> one dict batch (docs/design.md, "Batches and the data pipeline")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import default_collate


def stack_values(name: str, values: list[Any]) -> Any:
    """Stack one field across samples; tensors, dicts of tensors and numbers all work (default_collate)."""
    try:
        return default_collate(values)
    except (RuntimeError, TypeError) as err:
        shapes = sorted({str(tuple(v.shape)) for v in values if isinstance(v, torch.Tensor)})
        detail = f" (shapes {', '.join(shapes)})" if len(shapes) > 1 else ""
        raise ValueError(f"cannot batch '{name}'{detail}: its preprocessor must return a fixed shape "
                         f"and type per sample ({err})") from err


def collate_samples(samples: Sequence[dict[str, Any]], modalities: Sequence[str],
                    extra_keys: Sequence[str]) -> dict[str, Any]:
    """Modalities stacked on a new batch axis; `index` and extra keys as LongTensors; keys as a list."""
    batch: dict[str, Any] = {m: stack_values(m, [s[m] for s in samples]) for m in modalities}
    batch["index"] = torch.tensor([s["index"] for s in samples], dtype=torch.long)
    for name in extra_keys:
        batch[name] = torch.tensor([s[name] for s in samples], dtype=torch.long)
    batch["__key__"] = [s["__key__"] for s in samples]
    return batch
