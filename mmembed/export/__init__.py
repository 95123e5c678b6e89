"""Exporting trained models: open_clip `local-dir:` folders (image-text) and per-modality tower files
(safetensors / ONNX with a JSON config), plus the small loaders that read them back."""

from mmembed.export.loader import LoadedTower, OnnxTower, load_tower, read_export_config
from mmembed.export.tower_export import ExportCheckError, TowerExport, export_towers

__all__ = [
    "ExportCheckError",
    "LoadedTower",
    "OnnxTower",
    "TowerExport",
    "export_towers",
    "load_tower",
    "read_export_config",
]
