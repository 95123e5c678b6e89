"""make_shards (image folder + CSV, audio folder + JSONL) and the sized shard writer."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import webdataset as wds
from PIL import Image
from test_data_support import char_tokens, decode_tokens, fixed_audio, to_tensor, write_numbered_shards

from data_tools.make_shards import CaptionRecord, main, make_shards, read_captions
from data_tools.shard_writer import SizedShardWriter, reshard
from mmembed.data import build_eval_loader, count_samples, read_sizes


def _image_folder(root: Path) -> list[dict[str, str]]:
    root.mkdir()
    rows = []
    for n in range(5):
        name = f"img{n}.{'png' if n % 2 else 'jpeg'}"
        Image.new("RGB", (8, 8), (40 * n, 0, 0)).save(root / name)
        rows.append({"path": name, "text": f"picture {n}", "label": str(n % 2)})
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    rows += [{"path": "gone.png", "text": "missing file", "label": "0"},
             {"path": "notes.txt", "text": "wrong kind", "label": "0"},
             {"path": "broken.png", "text": "corrupt", "label": "0"}]
    return rows


def test_image_folder_with_csv(tmp_path):
    rows = _image_folder(tmp_path / "images")
    table = tmp_path / "captions.csv"
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    records = read_captions(table, file_column="path", caption_column="text", label_column="label")
    report = make_shards(records, tmp_path / "images", tmp_path / "out", modality="image", prefix="img",
                         samples_per_shard=2, verify=True, progress=False)
    assert report.written == 5 and len(report.shards.shards) == 3
    assert dict(report.skipped).keys() == {"gone.png", "notes.txt", "broken.png"}
    assert "not found" in dict(report.skipped)["gone.png"]
    assert "unsupported extension" in dict(report.skipped)["notes.txt"]
    assert count_samples(report.shards.pattern) == 5
    batches = list(build_eval_loader([report.shards.pattern], {"image": to_tensor, "text": char_tokens},
                                     batch_size=4, extra_keys=("cls",)))
    texts = [decode_tokens(t) for b in batches for t in b["text"]]
    assert texts == [f"picture {n}" for n in range(5)]
    reds = [round(float(img[0].mean()) * 255) for b in batches for img in b["image"]]
    assert all(abs(red - 40 * n) <= 3 for n, red in enumerate(reds))  # jpeg is lossy
    assert [int(c) for b in batches for c in b["cls"]] == [n % 2 for n in range(5)]
    assert [int(i) for b in batches for i in b["index"]] == list(range(5))


def test_audio_folder_with_jsonl_via_cli(tmp_path, capsys):
    root = tmp_path / "clips"
    root.mkdir()
    lines = []
    for n, fmt in enumerate(["flac", "wav", "ogg"]):
        sf.write(root / f"clip{n}.{fmt}", np.full(800, 0.1 * (n + 1), dtype=np.float32), 8000)
        lines.append({"file": f"clip{n}.{fmt}", "caption": f"sound {n}"})
    lines.append({"file": "clip9.flac", "caption": "absent"})
    table = tmp_path / "captions.jsonl"
    table.write_text("".join(json.dumps(line) + "\n" for line in lines))
    main(["audio", "--root", str(root), "--captions", str(table), "--out", str(tmp_path / "out"),
          "--prefix", "snd", "--samples-per-shard", "10"])
    printed = capsys.readouterr().out
    assert "skipped clip9.flac: file not found" in printed and "wrote 3 samples in 1 shards" in printed
    (batch,) = build_eval_loader([str(tmp_path / "out" / "snd-000000.tar")],
                                 {"audio": fixed_audio, "text": char_tokens}, batch_size=8, extra_keys=())
    assert [decode_tokens(t) for t in batch["text"]] == ["sound 0", "sound 1", "sound 2"]
    torch.testing.assert_close(batch["audio"][:, 10], torch.tensor([0.1, 0.2, 0.3]), atol=2e-2, rtol=0)


def test_caption_table_errors_name_the_field(tmp_path):
    table = tmp_path / "c.jsonl"
    table.write_text(json.dumps({"file": "a.png", "caption": "x", "cls": "seven"}) + "\n")
    with pytest.raises(KeyError, match=r"no field.*'text'"):
        read_captions(table, caption_column="text")
    with pytest.raises(ValueError, match="not an integer"):
        read_captions(table, label_column="cls")
    with pytest.raises(ValueError, match=r"\.csv"):
        read_captions(tmp_path / "c.parquet")


def test_writer_sizes_json_and_rewrites(tmp_path):
    first = write_numbered_shards(tmp_path, "x", list(range(7)), per_shard=3)
    write_numbered_shards(tmp_path, "y", list(range(2)), per_shard=3)
    assert read_sizes(tmp_path) == {"x-000000.tar": 3, "x-000001.tar": 3, "x-000002.tar": 1,
                                    "y-000000.tar": 2}
    assert first.pattern == str(tmp_path / "x-{000000..000002}.tar")
    # A rerun replaces x's entries and keeps y's.
    smaller = write_numbered_shards(tmp_path, "x", list(range(4)), per_shard=4)
    assert read_sizes(tmp_path) == {"x-000000.tar": 4, "y-000000.tar": 2}
    assert smaller.pattern == str(tmp_path / "x-000000.tar")
    with SizedShardWriter(tmp_path, "z", samples_per_shard=2) as writer:
        with pytest.raises(ValueError, match=r"'a\.b'"):
            writer.write("a.b", {"txt": "dotted keys split samples"})
        writer.write("ab", {"txt": "fine"})
    assert read_sizes(tmp_path)["z-000000.tar"] == 1


def test_reshard_assigns_fresh_dense_indices(tmp_path):
    a = write_numbered_shards(tmp_path / "a", "a", list(range(5)), per_shard=5)
    b = write_numbered_shards(tmp_path / "b", "b", list(range(100, 104)), per_shard=5)
    result = reshard([a.pattern, b.pattern], tmp_path / "merged", "m", samples_per_shard=4, progress=False)
    assert result.num_samples == 9 and len(result.shards) == 3
    (batch,) = build_eval_loader([result.pattern], {"text": char_tokens}, batch_size=16, extra_keys=())
    assert batch["index"].tolist() == list(range(9))
    assert [decode_tokens(t) for t in batch["text"]][-1] == "caption 103"


def test_image_bytes_are_stored_unchanged(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(buffer, format="JPEG", quality=50)
    (root / "p.jpg").write_bytes(buffer.getvalue())
    report = make_shards([CaptionRecord("p.jpg", "c")], root, tmp_path / "o", modality="image",
                         progress=False)
    (sample,) = list(wds.WebDataset(report.shards.pattern, shardshuffle=False))
    assert sample["jpg"] == buffer.getvalue() and sample["txt"] == b"c" and sample["idx"] == b"0"
