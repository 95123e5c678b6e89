"""Per-modality export: every tower plus its head as one file (safetensors or ONNX) and a JSON config
(`<modality>.json`) with the input spec, the preprocessing and embed_dim.

ONNX files have a dynamic batch axis (and dynamic time / sequence axes where the tower takes them); the
export runs onnxruntime against the PyTorch module at several shapes and refuses a file whose max error
exceeds the tolerance.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from mmembed.checkpoint import state_to_safetensors
from mmembed.config import ExperimentConfig
from mmembed.errors import UsageError
from mmembed.export.client_tokenizer import write_client_tokenizer
from mmembed.export.embed_tower import EmbedTower
from mmembed.export.hygiene import file_stamps, finish_export
from mmembed.towers.export_spec import ExportSpec, InputSpec

log = logging.getLogger("mmembed.export")

EXPORT_FORMAT = "mmembed-tower"
EXPORT_VERSION = 1
# Beyond this ONNX's 2 GiB protobuf limit is near: weights go to an external data file instead.
_EXTERNAL_DATA_BYTES = 1_500_000_000
# Not "embedding": open_clip text graphs already hold a value of that name and ONNX names must be unique.
OUTPUT_NAME = "unit_embedding"


class ExportCheckError(RuntimeError):
    """The exported file's outputs differ from PyTorch's by more than the tolerance."""


class NotExportableError(ValueError):
    """The tower declares that it cannot be exported to the requested format (the message says why)."""


@dataclass(frozen=True)
class TowerExport:
    modality: str
    path: Path
    # ONNX only: the largest |onnxruntime - PyTorch| over every checked shape.
    max_abs_error: float | None = None
    # Text towers: the tokenizer shipped for clients without mmembed (None when there is none).
    tokenizer: Path | None = None


def config_path(root: Path, modality: str) -> Path:
    return root / f"{modality}.json"


def assert_portable(tree: Any, where: str = "config") -> None:
    """Refuse absolute paths anywhere in an exported config: they name the build machine's disk."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            assert_portable(value, f"{where}.{key}")
    elif isinstance(tree, list | tuple):
        for i, value in enumerate(tree):
            assert_portable(value, f"{where}[{i}]")
    elif isinstance(tree, str) and (os.path.isabs(tree) or tree.startswith("~")):
        raise ValueError(f"{where} = {tree!r} is an absolute path of this machine; exported configs must be "
                         "portable (weights come from the export, not from that path)")


def _tower_meta(kind: ExportSpec, tower: nn.Module, spec: Any, embed_dim: int, modality: str) -> dict[str, Any]:
    return {
        "format": EXPORT_FORMAT, "version": EXPORT_VERSION, "modality": modality, "embed_dim": embed_dim,
        "inputs": [s.to_json() for s in kind.inputs(tower)],
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", embed_dim],
                   "l2_normalized": True},
        "preprocess": kind.preprocess(tower),
        "tower": {"type": spec.tower.type, "args": kind.portable_args(tower, dict(spec.tower.args))},
        "head": {"type": spec.head.type, "args": dict(spec.head.args)},
        "files": {},
    }


def _write_safetensors(kind: ExportSpec, tower: nn.Module, head: nn.Module, root: Path, modality: str,
                       tolerance: float) -> TowerExport:
    path = root / f"{modality}.safetensors"
    save_file(state_to_safetensors(EmbedTower(tower, head, kind.inputs(tower))), str(path))
    return TowerExport(modality, path)


def _dynamic_shapes(specs: list[InputSpec]) -> tuple[dict[int, Any], ...]:
    dims: dict[str, Any] = {}
    # One Dim object per axis name, so inputs sharing "seq" are constrained to the same length.
    for spec in specs:
        for d in spec.shape:
            if isinstance(d, str) and d not in dims:
                dims[d] = torch.export.Dim(d, min=1) if d != "batch" else torch.export.Dim(d)
    return tuple({i: dims[d] for i, d in enumerate(s.shape) if isinstance(d, str)} for s in specs)


def _check_onnx(path: Path, reference: nn.Module, specs: list[InputSpec],
                sizes: Iterable[dict[str, int]]) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for extra in sizes:
        for batch in (1, 3):
            inputs = [s.example({"batch": batch, **extra}) for s in specs]
            got = session.run(None, {s.name: t.numpy() for s, t in zip(specs, inputs, strict=True)})[0]
            with torch.no_grad():
                want = reference(*inputs).numpy()
            if got.shape != want.shape:
                raise ExportCheckError(f"{path.name}: onnxruntime output shape {got.shape} != PyTorch "
                                       f"{want.shape} at batch {batch}, {extra}")
            worst = max(worst, float(abs(got - want).max()))
    return worst


def _write_onnx(kind: ExportSpec, tower: nn.Module, head: nn.Module, root: Path, modality: str,
                tolerance: float) -> TowerExport:
    specs = kind.inputs(tower)
    encoder = kind.onnx_twin(tower) if kind.onnx_twin else tower
    module = EmbedTower(encoder, head, specs).eval()
    sizes = kind.check_sizes(tower)
    # Batch 2 in the example: torch.export specialises axes whose example size is 0 or 1.
    example = tuple(s.example({"batch": 2, **sizes[0]}) for s in specs)
    path = root / f"{modality}.onnx"
    big = sum(p.numel() * p.element_size() for p in module.parameters()) > _EXTERNAL_DATA_BYTES
    torch.onnx.export(module, example, str(path), input_names=[s.name for s in specs],
                      output_names=[OUTPUT_NAME], dynamo=True,
                      # forward(*inputs): the varargs tuple is one argument holding every input.
                      dynamic_shapes=(_dynamic_shapes(specs),),
                      external_data=big, verbose=False)
    error = _check_onnx(path, EmbedTower(tower, head, specs).eval(), specs, sizes)
    log.info("%s: onnxruntime vs PyTorch max abs error %.3g", path.name, error)
    if error > tolerance:
        raise ExportCheckError(f"{path.name}: onnxruntime differs from PyTorch by {error:.3g} "
                               f"(tolerance {tolerance:g})")
    return TowerExport(modality, path, error)


WRITERS: dict[str, Callable[[ExportSpec, nn.Module, nn.Module, Path, str, float], TowerExport]] = {
    "safetensors": _write_safetensors,
    "onnx": _write_onnx,
}


def export_towers(model: nn.Module, config: ExperimentConfig, out: str | Path, fmt: str,
                  modalities: Iterable[str] | None = None, tolerance: float = 1e-4) -> list[TowerExport]:
    """Write `<modality>.<safetensors|onnx>` + `<modality>.json` for each modality (default: all) into
    `out`. Exporting both formats into one folder keeps one JSON listing both files."""
    if fmt not in WRITERS:
        raise UsageError(f"unknown tower export format '{fmt}'; known: {sorted(WRITERS)}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    before = file_stamps(root)
    wanted = list(modalities) if modalities is not None else list(config.model.modalities)
    results = []
    model = model.eval()
    for modality in wanted:
        if modality not in config.model.modalities:
            raise UsageError(f"modality '{modality}' is not in the model; it has "
                             f"{sorted(config.model.modalities)}")
        spec = config.model.modalities[modality]
        tower, head = model.towers[modality], model.heads[modality]
        kind = _export_spec(tower, spec.tower.type, modality, fmt)
        meta = _tower_meta(kind, tower, spec, int(config.model.embed_dim), modality)
        assert_portable(meta, f"{modality}.json")
        with torch.no_grad():
            result = WRITERS[fmt](kind, tower, head, root, modality, tolerance)
        if kind.write_files is not None:
            kind.write_files(tower, root, fmt == "safetensors")
        tokenizer = write_client_tokenizer(kind, tower, root, modality)
        if tokenizer is not None:
            meta["tokenizer"] = tokenizer
            if tokenizer["file"]:
                result = dataclasses.replace(result, tokenizer=root / tokenizer["file"])
        previous = _previous_meta(root, modality)
        meta["files"] = previous.get("files", {}) | {fmt: result.path.name}
        if "onnx_check" in previous and fmt != "onnx":
            meta["onnx_check"] = previous["onnx_check"]
        if result.max_abs_error is not None:
            meta["onnx_check"] = {"max_abs_error": result.max_abs_error, "tolerance": tolerance}
        config_path(root, modality).write_text(json.dumps(meta, indent=2) + "\n")
        results.append(result)
    finish_export(root, before)
    return results


def _export_spec(tower: nn.Module, tower_type: str, modality: str, fmt: str) -> ExportSpec:
    """The tower's own export facts; a format it does not support fails with the reason it declares."""
    spec: ExportSpec = tower.export_spec
    if not spec.supports(fmt):
        raise NotExportableError(f"modality '{modality}': the {tower_type} tower cannot be exported as {fmt}: "
                                 f"{spec.unsupported[fmt]}")
    return spec


def _previous_meta(root: Path, modality: str) -> dict[str, Any]:
    path = config_path(root, modality)
    return dict(json.loads(path.read_text())) if path.is_file() else {}
