"""Argument parsing and printing for `mmembed embed` and `mmembed search`; the work is done by
mmembed.embed.runner and mmembed.embed.search."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_embed_parsers(sub: Any) -> None:
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
    from mmembed.embed.search import search

    for query, hits in zip(args.query, search(args.index, args.model, args.modality, args.query, args.k),
                           strict=True):
        print(f"query: {query}")
        for rank, hit in enumerate(hits, 1):
            print(f"  {rank:>2}. {hit.score:+.4f}  {hit.id}  {hit.describe()}".rstrip())
    return 0
