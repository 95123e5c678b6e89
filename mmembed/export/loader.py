"""Loading an exported tower: `load_tower` (PyTorch, from the safetensors export) and `OnnxTower`
(onnxruntime). Both need only the export folder; neither touches the trainer, the losses or accelerate."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from mmembed.errors import MissingFileError
from mmembed.export.client_tokenizer import TOKENIZER_SUFFIX
from mmembed.export.embed_tower import EmbedTower
from mmembed.export.preprocess import build_preprocessor
from mmembed.export.tower_export import EXPORT_FORMAT, config_path
from mmembed.towers.base import export_spec_of
from mmembed.towers.export_spec import InputSpec
from mmembed.types import Preprocessor


def read_export_config(root: str | Path, modality: str) -> dict[str, Any]:
    path = config_path(Path(root), modality)
    if not path.is_file():
        found = sorted(p.stem for p in Path(root).glob("*.json") if not p.name.endswith(TOKENIZER_SUFFIX))
        raise MissingFileError(f"no export of modality '{modality}' in {root} (no {path.name}); "
                                f"exported modalities there: {found}")
    meta = json.loads(path.read_text())
    if meta.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path} is not an mmembed tower export (format {meta.get('format')!r})")
    return meta


def input_specs(meta: dict[str, Any]) -> list[InputSpec]:
    return [InputSpec(i["name"], i["dtype"], tuple(i["shape"])) for i in meta["inputs"]]


@dataclass
class LoadedTower:
    """`module(*inputs)` -> unit embeddings [B, embed_dim]; `preprocess` maps one raw item (PIL image,
    str, or (waveform, sample_rate)) to that module's per-sample input."""

    module: EmbedTower
    preprocess: Preprocessor
    config: dict[str, Any]


def load_tower(root: str | Path, modality: str, device: str | torch.device = "cpu") -> LoadedTower:
    """Rebuild `modality`'s tower + head from a safetensors export in `root` and load its weights."""
    from mmembed.config.model import HeadSpec, TowerSpec
    from mmembed.heads import build_head
    from mmembed.towers import build_tower

    root = Path(root)
    meta = read_export_config(root, modality)
    file = meta["files"].get("safetensors")
    if file is None:
        raise MissingFileError(f"{root} holds no safetensors export of '{modality}' (files: {meta['files']}); "
                                "load an ONNX export with mmembed.export.OnnxTower")
    spec = export_spec_of(meta["tower"]["type"])
    args = spec.local_args(dict(meta["tower"]["args"]), root)
    tower = build_tower(TowerSpec(type=meta["tower"]["type"], args=args), where=f"{modality} export")
    head = build_head(HeadSpec(type=meta["head"]["type"], args=meta["head"]["args"]), tower.output_dim,
                      int(meta["embed_dim"]))
    module = EmbedTower(tower, head, input_specs(meta))
    module.load_state_dict(load_file(str(root / file)), strict=True)
    return LoadedTower(module.to(device).eval(), build_preprocessor(meta["preprocess"], root), meta)


class OnnxTower:
    """An ONNX export run by onnxruntime (CUDA when available): `tower(*arrays)` -> embeddings."""

    def __init__(self, root: str | Path, modality: str, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        root = Path(root)
        self.config = read_export_config(root, modality)
        file = self.config["files"].get("onnx")
        if file is None:
            raise MissingFileError(f"{root} holds no ONNX export of '{modality}' "
                                    f"(files: {self.config['files']})")
        available = ort.get_available_providers()
        chosen = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(str(root / file), providers=chosen)
        self.specs = input_specs(self.config)
        self.preprocess = build_preprocessor(self.config["preprocess"], root)

    def __call__(self, *inputs: np.ndarray | torch.Tensor) -> np.ndarray:
        feed = {}
        for spec, value in zip(self.specs, inputs, strict=True):
            array = value.cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            feed[spec.name] = array.astype(spec.dtype, copy=False)
        return self.session.run(None, feed)[0]
