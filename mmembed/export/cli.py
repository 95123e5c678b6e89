"""Argument parsing and printing for `mmembed export`, `mmembed embed` and `mmembed search`; the work is
done by mmembed.export, mmembed.embed and mmembed.search."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

EXPORT_FORMATS = ("open_clip", "safetensors", "onnx")


def add_export_parsers(sub: Any) -> None:
    ex = sub.add_parser("export", help="export a checkpoint (open_clip folder, or per-tower safetensors/ONNX)")
    ex.add_argument("checkpoint", help="run dir, checkpoint dir or model dir")
    ex.add_argument("--format", choices=EXPORT_FORMATS, required=True)
    ex.add_argument("--out", required=True, help="output folder")
    ex.add_argument("--modalities", help="tower formats: comma-separated modalities (default: all)")
    ex.add_argument("--hf-model-id", help="open_clip + hf_text tower: the text model's hub id for text_cfg")
    ex.add_argument("--tolerance", type=float, default=1e-4, help="onnx: max allowed |onnxruntime - torch|")

    em = sub.add_parser("embed", help="embed a folder, a CSV/JSONL of texts or shards with an exported tower")
    em.add_argument("inputs", nargs="+", help="a folder, a .csv/.tsv/.jsonl file, or shard urls")
    em.add_argument("--model", required=True, help="tower export folder (mmembed export --format onnx|...)")
    em.add_argument("--out", required=True, help="output folder (re-run the same command to resume)")
    em.add_argument("--modality", help="which exported tower (default: the only one in --model)")
    em.add_argument("--output-format", choices=["npy", "parquet"], default="npy")
    em.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    em.add_argument("--batch-size", type=int, default=64)
    em.add_argument("--part-size", type=int, default=10000, help="items per resumable part (folders, tables)")
    em.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto")
    em.add_argument("--device", help="torch backend device (default: cuda if available)")
    em.add_argument("--text-column", default="text")
    em.add_argument("--id-column", help="table column holding ids (default: row number)")

    se = sub.add_parser("search", help="top-k retrieval over `mmembed embed` output (needs faiss-cpu)")
    se.add_argument("index", help="an `mmembed embed` output folder")
    se.add_argument("--model", required=True, help="tower export folder holding the query modality")
    se.add_argument("--modality", required=True, help="query modality: text (strings) or image/audio (files)")
    se.add_argument("--query", action="append", required=True, help="a query (repeat for several)")
    se.add_argument("-k", type=int, default=5)


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

    modalities = args.modalities.split(",") if args.modalities else None
    for res in export_towers(model, config, args.out, args.format, modalities, tolerance=args.tolerance):
        check = f" (onnxruntime vs PyTorch max abs error {res.max_abs_error:.2e})" \
            if res.max_abs_error is not None else ""
        print(f"{res.modality}: {res.path}{check}")
    return 0


def run_embed(args: argparse.Namespace) -> int:
    from mmembed.embed import embed

    summary = embed(args.model, args.inputs, args.out, modality=args.modality, fmt=args.output_format,
                    dtype=args.dtype, batch_size=args.batch_size, part_size=args.part_size,
                    backend=args.backend, device=args.device, text_column=args.text_column,
                    id_column=args.id_column)
    print(f"embedded {summary.embedded} items into {summary.output}"
          + (f"; resumed past {summary.skipped_parts} finished parts" if summary.skipped_parts else ""))
    if summary.failed:
        print(f"{summary.failed} items could not be embedded; see {Path(args.out) / 'errors.jsonl'}")
    return 0


def run_search(args: argparse.Namespace) -> int:
    from mmembed.search import search

    for query, hits in zip(args.query, search(args.index, args.model, args.modality, args.query, args.k),
                           strict=True):
        print(f"query: {query}")
        for rank, hit in enumerate(hits, 1):
            print(f"  {rank:>2}. {hit.score:+.4f}  {hit.id}")
    return 0
