"""Convert a folder of images or audio files plus a caption table into sized WebDataset shards.

    python -m data_tools.make_shards image --root photos/ --captions captions.csv --out data/photos \\
        --prefix train --samples-per-shard 1000
    python -m data_tools.make_shards audio --root clips/ --captions captions.jsonl --out data/clips

The caption table is CSV/TSV (header row) or JSON Lines; `--file-column` (default "file", relative to
--root) and `--caption-column` (default "caption") name its fields, `--label-column` optionally adds an
integer `cls`. Media bytes are stored unchanged under their extension (jpeg -> jpg); the caption goes to
`txt`. Rows whose file is missing, has an unsupported extension or (with --verify) does not decode are
reported and skipped.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_tools.shard_writer import ShardSet, SizedShardWriter
from data_tools.tool_args import add_shard_output, tool_parser
from mmembed.data.decode import DecodeError, decode_audio, decode_image
from mmembed.progress import progress as progress_bar


@dataclass(frozen=True)
class CaptionRecord:
    file: str
    caption: str
    label: int | None = None


@dataclass(frozen=True)
class MediaKind:
    """Accepted file extensions (mapped to the member extension stored) and a decoder for --verify."""

    extensions: dict[str, str]
    verify: Callable[[bytes], Any]


MEDIA_KINDS: dict[str, MediaKind] = {
    "image": MediaKind({"jpg": "jpg", "jpeg": "jpg", "png": "png", "webp": "webp"}, decode_image),
    "audio": MediaKind({"flac": "flac", "wav": "wav", "ogg": "ogg", "mp3": "mp3"}, decode_audio),
}


@dataclass
class ShardReport:
    shards: ShardSet
    written: int
    # (file, reason) for every row that was skipped.
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _read_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ","))
    if suffix in (".jsonl", ".ndjson"):
        lines = path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    raise ValueError(f"caption table {path} must be .csv, .tsv, .jsonl or .ndjson")


def read_captions(path: str | Path, *, file_column: str = "file", caption_column: str = "caption",
                  label_column: str | None = None) -> list[CaptionRecord]:
    """Caption records from a CSV/TSV (with a header) or JSON Lines file."""
    path = Path(path)
    rows = _read_rows(path)
    wanted = [c for c in (file_column, caption_column, label_column) if c]
    for number, row in enumerate(rows, start=1):
        missing = [c for c in wanted if c not in row]
        if missing:
            raise KeyError(f"{path} row {number} has no field {missing}; fields: {sorted(row)}")
    records = []
    for number, row in enumerate(rows, start=1):
        label = row[label_column] if label_column else None
        if label is not None and not str(label).strip().lstrip("-").isdigit():
            raise ValueError(f"{path} row {number}: label {label_column}={label!r} is not an integer")
        records.append(CaptionRecord(str(row[file_column]), str(row[caption_column]),
                                     int(label) if label is not None else None))
    return records


def _sample_members(record: CaptionRecord, root: Path, kind: MediaKind,
                    verify: bool) -> dict[str, bytes | str]:
    """The members of one sample; raises ValueError with the reason when the row must be skipped."""
    path = root / record.file
    ext = kind.extensions.get(path.suffix.lower().lstrip("."))
    if ext is None:
        raise ValueError(f"unsupported extension (accepted: {sorted(kind.extensions)})")
    if not path.is_file():
        raise ValueError("file not found")
    if not record.caption.strip():
        raise ValueError("empty caption")
    data = path.read_bytes()
    if verify:
        try:
            kind.verify(data)
        except DecodeError as err:
            raise ValueError(str(err)) from err
    members: dict[str, bytes | str] = {ext: data, "txt": record.caption.strip()}
    if record.label is not None:
        members["cls"] = str(record.label)
    return members


def make_shards(records: Sequence[CaptionRecord], root: str | Path, out_dir: str | Path, *, modality: str,
                prefix: str = "shard", samples_per_shard: int = 1000, verify: bool = False,
                progress: bool = True) -> ShardReport:
    """Write one sample per usable record (key = its row number) into OUT/PREFIX-%06d.tar + sizes.json."""
    if modality not in MEDIA_KINDS:
        raise ValueError(f"unknown modality {modality!r}; choose from {sorted(MEDIA_KINDS)}")
    kind, root = MEDIA_KINDS[modality], Path(root)
    skipped: list[tuple[str, str]] = []
    with SizedShardWriter(out_dir, prefix, samples_per_shard=samples_per_shard) as writer:
        bar = progress_bar(total=len(records), desc=f"{modality} -> {prefix}", unit="sample", disable=not progress)
        for row, record in enumerate(records):
            bar.update(1)
            try:
                members = _sample_members(record, root, kind, verify)
            except ValueError as err:
                skipped.append((record.file, str(err)))
                bar.set_postfix(skipped=len(skipped))
                continue
            writer.write(f"{prefix}{row:09d}", members)
        bar.close()
    shards = writer.close()
    return ShardReport(shards, shards.num_samples, skipped)


def main(argv: list[str] | None = None) -> None:
    parser = tool_parser("make_shards", __doc__)
    parser.add_argument("modality", choices=sorted(MEDIA_KINDS))
    parser.add_argument("--root", type=Path, required=True, help="folder the file column is relative to")
    parser.add_argument("--captions", type=Path, required=True, help="CSV/TSV or JSONL caption table")
    add_shard_output(parser, default_out=None, samples_per_shard=1000, out_help="output shard directory")
    parser.add_argument("--prefix", default="shard")
    parser.add_argument("--file-column", default="file")
    parser.add_argument("--caption-column", default="caption")
    parser.add_argument("--label-column", default=None, help="optional integer label column, stored as cls")
    parser.add_argument("--verify", action="store_true", help="decode every file and skip unreadable ones")
    args = parser.parse_args(argv)
    records = read_captions(args.captions, file_column=args.file_column, caption_column=args.caption_column,
                            label_column=args.label_column)
    report = make_shards(records, args.root, args.out, modality=args.modality, prefix=args.prefix,
                         samples_per_shard=args.samples_per_shard, verify=args.verify)
    for file, reason in report.skipped:
        print(f"skipped {file}: {reason}")
    print(f"wrote {report.written} samples in {len(report.shards.shards)} shards: {report.shards.pattern}"
          f" (skipped {len(report.skipped)} of {len(records)} rows)")


if __name__ == "__main__":
    main()
