"""What `mmembed embed` reads: a folder of files, a CSV / JSONL table of texts, or WebDataset shards, each
split into numbered parts (the unit of resumption). An item is (id, load, about): `load()` returns the decoded
value (PIL image, str, or (waveform, sample_rate)) or raises DecodeError; `about` is what a search hit shows
for it: {"path": file} for a folder's files, {"caption": text} for texts and captioned shard samples, else
{"shard": url}."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from mmembed.data.decode import DecodeError, decode_audio, decode_image, decode_text
from mmembed.errors import MissingFileError


class Item(NamedTuple):
    id: str
    load: Callable[[], Any]
    about: dict[str, str]


# File suffixes (lower case) a folder contributes for each modality; other files are ignored.
SUFFIXES: dict[str, tuple[str, ...]] = {
    "image": (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"),
    "audio": (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif"),
    "text": (".txt",),
}
DECODERS: dict[str, Callable[[bytes, str], Any]] = {
    "image": lambda data, ext: decode_image(data),
    "audio": lambda data, ext: decode_audio(data),
    "text": decode_text,
}
# Shard member extensions tried per modality (first present wins), as the training data uses them.
SHARD_KEYS: dict[str, tuple[str, ...]] = {
    "image": ("jpg", "jpeg", "png", "webp"),
    "audio": ("flac", "wav", "mp3", "ogg"),
    "text": ("txt", "json"),
}


@dataclass(frozen=True)
class Part:
    name: str
    items: Callable[[], Iterator[Item]]
    size: int | None  # None: unknown until read (shards)


def _file_item(path: Path, key: str, modality: str) -> Item:
    return Item(key, lambda: DECODERS[modality](path.read_bytes(), path.suffix.lstrip(".")), {"path": str(path)})


def folder_parts(root: Path, modality: str, part_size: int) -> list[Part]:
    """Every file under `root` with a suffix of `modality`, sorted; ids are paths relative to `root`."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES[modality])
    if not files:
        raise MissingFileError(f"no {modality} files ({', '.join(SUFFIXES[modality])}) under {root}")
    items = [_file_item(p, p.relative_to(root).as_posix(), modality) for p in files]
    return _chunk(items, part_size)


def _rows(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8") as f:
        if path.suffix.lower() == ".jsonl":
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{path}:{n}: invalid JSON line: {err}") from err
        else:
            yield from csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")


def _text_value(row: dict[str, Any], column: str) -> Callable[[], str]:
    def load() -> str:
        value = row.get(column)
        if not isinstance(value, str) or not value.strip():
            raise DecodeError(f"column '{column}' is missing or empty")
        return value.strip()

    return load


def table_parts(path: Path, text_column: str, id_column: str | None, part_size: int) -> list[Part]:
    """Texts from a CSV/TSV/JSONL file; ids from `id_column`, else the 0-based row number."""
    items: list[Item] = []
    for i, row in enumerate(_rows(path)):
        if id_column is not None and id_column not in row:
            raise ValueError(f"{path}: row {i} has no id column '{id_column}'; columns: {sorted(row)}")
        text = row.get(text_column)
        about = {"caption": text.strip()} if isinstance(text, str) else {}
        items.append(Item(str(row[id_column]) if id_column else str(i), _text_value(row, text_column), about))
    if not items:
        raise ValueError(f"{path} holds no rows")
    return _chunk(items, part_size)


def _shard_items(url: str, modality: str) -> Iterator[Item]:
    from mmembed.data.stats import SkipStats
    from mmembed.data.tar_samples import shard_samples

    for sample in shard_samples(url, SkipStats()):
        ext = next((e for e in SHARD_KEYS[modality] if e in sample), None)
        key = f"{sample['__key__']}"
        about = _sample_caption(sample) or {"shard": url}
        if ext is None:
            yield Item(key, _missing(modality, sample), about)
        else:
            yield Item(key, lambda data=sample[ext], ext=ext: DECODERS[modality](data, ext), about)


def _sample_caption(sample: dict[str, Any]) -> dict[str, str] | None:
    ext = next((e for e in SHARD_KEYS["text"] if e in sample), None)
    if ext is None:
        return None
    try:
        return {"caption": decode_text(sample[ext], ext)}
    except DecodeError:
        return None


def _missing(modality: str, sample: dict[str, Any]) -> Callable[[], Any]:
    def load() -> Any:
        members = sorted(k for k in sample if not k.startswith("__"))
        raise DecodeError(f"no {modality} member ({'/'.join(SHARD_KEYS[modality])}); members: {members}")

    return load


def shard_parts(urls: list[str], modality: str) -> list[Part]:
    """One part per shard (ids are the samples' keys, which are unique across a dataset's shards)."""
    return [Part(f"part-{i:06d}", lambda url=url: _shard_items(url, modality), None)
            for i, url in enumerate(urls)]


def _chunk(items: list[Item], part_size: int) -> list[Part]:
    if part_size < 1:
        raise ValueError(f"part_size must be >= 1, got {part_size}")
    chunks = [items[i:i + part_size] for i in range(0, len(items), part_size)]
    return [Part(f"part-{i:06d}", lambda chunk=chunk: iter(chunk), len(chunk)) for i, chunk in enumerate(chunks)]


def resolve_parts(inputs: list[str], modality: str, part_size: int, text_column: str = "text",
                  id_column: str | None = None) -> list[Part]:
    """Dispatch on what `inputs` names: one folder, one table file, or shard URLs / brace patterns."""
    from mmembed.data.sources import expand_urls

    if len(inputs) == 1 and Path(inputs[0]).is_dir():
        return folder_parts(Path(inputs[0]), modality, part_size)
    if len(inputs) == 1 and Path(inputs[0]).suffix.lower() in (".csv", ".tsv", ".jsonl"):
        if modality != "text":
            raise ValueError(f"a table ({inputs[0]}) holds texts; the tower embeds '{modality}'")
        return table_parts(Path(inputs[0]), text_column, id_column, part_size)
    urls = expand_urls(inputs)
    missing = [u for u in urls if "://" not in u and not Path(u).is_file()]
    if missing:
        raise MissingFileError(f"inputs not found (expected a folder, a .csv/.tsv/.jsonl file or .tar shards): "
                                f"{missing[:5]}")
    return shard_parts(urls, modality)
