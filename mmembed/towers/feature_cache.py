"""Feature cache for a frozen tower: each distinct input row (e.g. one caption's token ids) is encoded once.

A frozen tower maps the same input to the same features at every step, so after the first pass over the
data (captions repeat across epochs, and a spoken-word vocabulary repeats within one) its cost drops to a
table lookup. The cache is bounded (least recently used entries go first), lives outside the state dict
(never saved in checkpoints) and must be cleared whenever the tower's weights change; MultiModalModel does
that after `load_state_dict`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch

from mmembed.types import TowerInput


def row_keys(inputs: TowerInput) -> list[bytes]:
    """One key per batch row: the row's bytes (every tensor of a dict input, in key order) plus its
    dtype and shape, so inputs that differ in any way never share an entry."""
    tensors = [inputs] if isinstance(inputs, torch.Tensor) else [inputs[k] for k in sorted(inputs)]
    if not tensors or any(not isinstance(t, torch.Tensor) or t.ndim == 0 for t in tensors):
        raise ValueError("feature cache: inputs must be a batched tensor or a dict of batched tensors")
    sizes = {t.shape[0] for t in tensors}
    if len(sizes) != 1:
        raise ValueError(f"feature cache: input tensors disagree on the batch size: {sorted(sizes)}")
    header = repr([(str(t.dtype), tuple(t.shape[1:])) for t in tensors]).encode()
    host = [t.detach().cpu().contiguous().numpy() for t in tensors]
    return [header + b"".join(a[i].tobytes() for a in host) for i in range(sizes.pop())]


def select_rows(inputs: TowerInput, rows: list[int]) -> TowerInput:
    if isinstance(inputs, torch.Tensor):
        return inputs[torch.tensor(rows, device=inputs.device)]
    return {k: v[torch.tensor(rows, device=v.device)] for k, v in inputs.items()}


class FeatureCache:
    """LRU map: input-row key -> detached float32 feature row. `hits`/`misses` count rows, not batches."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"feature cache size must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._store: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def clear(self) -> None:
        """Drop every entry (the counters are kept: they describe the whole run)."""
        self._store.clear()

    @torch.compiler.disable  # host-side bookkeeping; the frozen tower it wraps runs eagerly
    def encode(self, encode_fn: Callable[[TowerInput], torch.Tensor], inputs: TowerInput) -> torch.Tensor:
        """Features [B, D] float32 of `inputs`: cached rows are looked up, the rest encoded (each distinct
        row once, even when it repeats within the batch) and stored."""
        keys = row_keys(inputs)
        missing: dict[bytes, int] = {}
        for row, key in enumerate(keys):
            if key in self._store:
                self._store.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
                missing.setdefault(key, row)
        fresh: dict[bytes, torch.Tensor] = {}
        if missing:
            features = encode_fn(select_rows(inputs, list(missing.values()))).detach().float()
            # Own copies: a row view would keep its whole batch's storage alive after the others are evicted.
            fresh = {key: row.clone() for key, row in zip(missing, features)}
        device = next(iter(inputs.values())).device if isinstance(inputs, dict) else inputs.device
        # Entries stay on the device they were computed on; `.to` is a no-op unless the model has moved.
        out = torch.stack([(fresh[k] if k in fresh else self._store[k]).to(device) for k in keys])
        for key, value in fresh.items():
            self._store[key] = value
        while len(self._store) > self.max_entries:
            self._store.popitem(last=False)
        return out
