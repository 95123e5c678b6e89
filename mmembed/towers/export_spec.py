"""What exporting needs to know about a tower type, declared by the tower class itself as `export_spec`.

Like timm's per-model `default_cfgs`, the facts live next to the tower: its input tensors (names, dtypes,
shapes with dynamic axes), its inference preprocessing as plain JSON, how to strip build-machine paths from
its recipe arguments, an ONNX-friendly twin when its graph needs one, files it needs besides the weights,
how it maps onto an open_clip slot, a text tower's tokenizer for clients without mmembed, and, for every
format it cannot be exported to (or a tokenizer it cannot ship), why. mmembed.export reads these; a
registry-wide test exports every tower to every format or checks the declared reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmembed.towers.open_clip_slots import OpenClipPart, PartOptions
from mmembed.types import LinearMap, TowerInput

# The formats of `mmembed export --format`.
FORMATS = ("open_clip", "safetensors", "onnx")
# Key of `ExportSpec.unsupported` for a text tower that ships no tokenizer with its per-tower export.
CLIENT_TOKENIZER = "tokenizer"


@dataclass(frozen=True)
class ClientTokenizer:
    """A text tower's tokenizer for clients without mmembed: a `tokenizers`-library tokenizer as JSON (with
    padding and truncation set, so `encode_batch` gives the model's input shapes) and, per model input, the
    `tokenizers.Encoding` field that feeds it ("ids", "attention_mask")."""

    json: str
    inputs: Mapping[str, str]


@dataclass(frozen=True)
class InputSpec:
    """One input tensor of an exported tower; string dims are dynamic axes ("batch", "time", "seq")."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    def example(self, sizes: Mapping[str, int]) -> torch.Tensor:
        """A random tensor of this spec with the dynamic axes set from `sizes`."""
        shape = [sizes[d] if isinstance(d, str) else d for d in self.shape]
        if self.dtype == "float32":
            return torch.randn(shape)
        # Token ids: small ids are valid for every vocabulary; an all-ones mask keeps every token.
        if self.name == "attention_mask":
            return torch.ones(shape, dtype=torch.int64)
        return torch.randint(1, 100, shape, dtype=torch.int64)


def pack_inputs(specs: list[InputSpec], tensors: tuple[torch.Tensor, ...]) -> TowerInput:
    """Positional tensors (ONNX inputs) -> the TowerInput `tower.encode` takes."""
    if len(specs) == 1:
        return tensors[0]
    return {spec.name: t for spec, t in zip(specs, tensors, strict=True)}


def keep_args(tower: nn.Module, args: dict[str, Any]) -> dict[str, Any]:
    return dict(args)


def without(*keys: str, **fixed: Any) -> Callable[[nn.Module, dict[str, Any]], dict[str, Any]]:
    """portable_args that drops `keys` (local weight paths: the export carries the weights) and sets `fixed`."""

    def portable(tower: nn.Module, args: dict[str, Any]) -> dict[str, Any]:
        return {**{k: v for k, v in args.items() if k not in keys}, **fixed}

    return portable


OpenClipPartFn = Callable[[nn.Module, LinearMap, PartOptions], OpenClipPart]


@dataclass(frozen=True)
class ExportSpec:
    """A tower type's export facts. Per-tower files (safetensors, ONNX) need `inputs` and `preprocess`;
    open_clip needs `open_clip`. Every format a tower does not support is named in `unsupported` with the
    reason, which the exporter prints; declaring neither is an error."""

    inputs: Callable[[nn.Module], list[InputSpec]] | None = None
    preprocess: Callable[[nn.Module], dict[str, Any]] | None = None
    # Recipe args -> args that rebuild the same architecture on another machine.
    portable_args: Callable[[nn.Module, dict[str, Any]], dict[str, Any]] = keep_args
    # Tower -> a module computing the same features whose graph exports to ONNX (None: the tower itself).
    onnx_twin: Callable[[nn.Module], nn.Module] | None = None
    # Writes files the export needs besides the weights (a tokenizer) into the export folder; the flag says
    # whether the tower must be rebuildable from them in PyTorch (True) or only preprocess (False).
    write_files: Callable[[nn.Module, Path, bool], None] | None = None
    # Exported args -> args for this machine (relative paths resolved against the export folder).
    local_args: Callable[[dict[str, Any], Path], dict[str, Any]] = lambda args, root: args
    # Sizes of the non-batch dynamic axes the ONNX check runs at (one export check per entry).
    check_sizes: Callable[[nn.Module], list[dict[str, int]]] = lambda tower: [{}]
    # The tower (+ its head as a linear map) as an open_clip CustomTextCLIP slot ("visual" or "text").
    open_clip: OpenClipPartFn | None = None
    open_clip_slot: str | None = None
    # Text towers: the tokenizer shipped with per-tower exports, so clients tokenize without mmembed; raises
    # NotExpressibleError (with the reason) for a configuration the tokenizers library cannot express.
    client_tokenizer: Callable[[nn.Module], ClientTokenizer] | None = None
    # format (or CLIENT_TOKENIZER) -> why this tower type cannot be exported to it (or ships no tokenizer).
    unsupported: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.unsupported) - {*FORMATS, CLIENT_TOKENIZER}
        if unknown:
            raise ValueError(f"export spec: unsupported names {sorted(unknown)}; known: {[*FORMATS, CLIENT_TOKENIZER]}")
        if CLIENT_TOKENIZER in self.unsupported and (self.client_tokenizer is not None
                                                     or not str(self.unsupported[CLIENT_TOKENIZER]).strip()):
            raise ValueError("export spec: a tokenizer is declared unsupported while one is given, or without a "
                             "reason")
        for fmt in FORMATS:
            if fmt in self.unsupported and not str(self.unsupported[fmt]).strip():
                raise ValueError(f"export spec: format '{fmt}' is declared unsupported without a reason")
            if fmt not in self.unsupported and not self._capable(fmt):
                raise ValueError(f"export spec: format '{fmt}' is neither supported nor declared unsupported "
                                 "with a reason")
        if (self.open_clip is None) != (self.open_clip_slot is None):
            raise ValueError("export spec: open_clip and open_clip_slot go together")

    def _capable(self, fmt: str) -> bool:
        if fmt == "open_clip":
            return self.open_clip is not None
        return self.inputs is not None and self.preprocess is not None

    def supports(self, fmt: str) -> bool:
        return fmt not in self.unsupported and self._capable(fmt)

    def declares_client_tokenizer(self) -> bool:
        """What a text tower's spec must do: give a tokenizer for clients, or the reason it has none."""
        return self.client_tokenizer is not None or CLIENT_TOKENIZER in self.unsupported


# -- facts several towers share ----------------------------------------------------------------------------
def image_inputs(tower: nn.Module) -> list[InputSpec]:
    size = tower.image_size
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    channels = int(getattr(getattr(tower, "model", None), "in_chans", 3) or 3)
    return [InputSpec("image", "float32", ("batch", channels, h, w))]


def waveform_inputs(tower: nn.Module) -> list[InputSpec]:
    return [InputSpec("waveform", "float32", ("batch", "time"))]


def waveform_preprocess(tower: nn.Module) -> dict[str, Any]:
    return {"kind": "waveform", "sample_rate": int(tower.sample_rate), "clip_samples": int(tower.clip_samples)}


def waveform_check_sizes(tower: nn.Module) -> list[dict[str, int]]:
    # Shorter than, equal to and longer than the clip: the pad, pass-through and centre-crop paths.
    n = int(tower.clip_samples)
    return [{"time": n // 2 + 3}, {"time": n}, {"time": n + n // 2 + 1}]


NO_AUDIO_SLOT = "open_clip models are image-text: an audio tower has no slot in them"
