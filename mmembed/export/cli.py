"""Argument parsing and printing for `mmembed export`; the work is done by mmembed.export."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from mmembed.towers.export_spec import FORMATS

EXPORT_FORMATS = FORMATS


def add_export_parser(sub: Any) -> None:
    ex = sub.add_parser("export", help="export a checkpoint (open_clip folder, or per-tower safetensors/ONNX)")
    ex.add_argument("checkpoint", help="run dir, checkpoint dir or model dir")
    ex.add_argument("--format", choices=EXPORT_FORMATS, required=True)
    ex.add_argument("--out", required=True, help="output folder")
    ex.add_argument("--modalities", help="tower formats: comma-separated modalities (default: all)")
    ex.add_argument("--hf-model-id", help="open_clip + hf_text tower: the text model's hub id for text_cfg")
    ex.add_argument("--tolerance", type=float, default=1e-4, help="onnx: max allowed |onnxruntime - torch|")


def run_export(args: argparse.Namespace) -> int:
    from mmembed.checkpoint import load_model

    logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # one INFO line per deduplicated initializer
    model, config = load_model(args.checkpoint)
    if args.format == "open_clip":
        from mmembed.export.open_clip_export import export_open_clip
        from mmembed.export.open_clip_parts import NotExpressibleError, PartOptions

        try:
            result = export_open_clip(model, config, args.out, PartOptions(hf_model_id=args.hf_model_id))
        except NotExpressibleError as err:
            print(f"cannot export {args.checkpoint} as open_clip: {err}")
            return 2
        errors = ", ".join(f"{m} {e:.2e}" for m, e in result.max_abs_error.items())
        print(f"open_clip folder written to {result.path}; load with "
              f"open_clip.create_model_and_transforms('local-dir:{result.path}'); max |Δ| {errors}")
        return 0
    from mmembed.export import export_towers
    from mmembed.export.tower_export import NotExportableError

    modalities = args.modalities.split(",") if args.modalities else None
    try:
        results = export_towers(model, config, args.out, args.format, modalities, tolerance=args.tolerance)
    except NotExportableError as err:
        print(f"cannot export {args.checkpoint} as {args.format}: {err}")
        return 2
    for res in results:
        check = f" (onnxruntime vs PyTorch max abs error {res.max_abs_error:.2e})" \
            if res.max_abs_error is not None else ""
        tokenizer = f"; tokenizer for clients: {res.tokenizer}" if res.tokenizer is not None else ""
        print(f"{res.modality}: {res.path}{check}{tokenizer}")
    return 0
