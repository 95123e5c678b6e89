"""clip_benchmark on an mmembed export (docs/export.md): demo shards converted to clip_benchmark's wds layout,
the documented command run end to end on a trained demo run's open_clip export, and its acc1 equal to
`mmembed eval` on the same data and templates."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from train_support import DEMO_RECIPE, REPO, TRAINABLE_TEXT, run_cli, tiny_overrides

from data_tools.clip_benchmark_run import accuracy_needs_fix, topk_accuracy
from data_tools.clip_benchmark_wds import convert, format_templates
from mmembed.eval import resolve_templates, run_eval_command
from mmembed.eval.cli import TASK_CONFIGS, EvalRequest
from mmembed.eval.evaluate import run_tasks
from mmembed.eval.templates import render


def _val_shards(demo: Path) -> list[str]:
    return sorted(str(p) for p in (demo / "val").glob("*.tar"))


def test_converter_writes_clip_benchmarks_layout(small_demo: Path, tmp_path: Path) -> None:
    shards = _val_shards(small_demo)
    done = convert(shards, small_demo / "classnames.txt", tmp_path / "cb", samples_per_shard=40)
    classnames = (small_demo / "classnames.txt").read_text().split("\n")[:-1]
    assert (tmp_path / "cb" / "classnames.txt").read_text().splitlines() == classnames
    assert (tmp_path / "cb" / "dataset_type.txt").read_text().strip() == "classification"
    nshards = int((tmp_path / "cb" / "test" / "nshards.txt").read_text())
    assert nshards == done.num_shards == -(-done.num_samples // 40) and not done.skipped
    # Every sample: the original image bytes and its label, under clip_benchmark's member names.
    source = {s["__key__"]: s for url in shards for s in wds.WebDataset(url, shardshuffle=False)}
    written = [s for i in range(nshards) for s in wds.WebDataset(str(tmp_path / "cb" / "test" / f"{i}.tar"),
                                                                  shardshuffle=False)]
    assert len(written) == len(source) == done.num_samples
    for sample in written:
        assert sample["png"] == source[sample["__key__"]]["png"]
        assert int(sample["cls"]) == int(source[sample["__key__"]]["cls"])
    prompts = (tmp_path / "cb" / "zeroshot_classification_templates.txt").read_text().splitlines()
    names = ["red circle", "x {y}"]
    assert [[p.format(c=n) for p in prompts] for n in names] == \
        [[render(t, n) for t in resolve_templates("openai")] for n in names]


def test_templates_keep_literal_braces_and_skipped_samples_are_counted(tmp_path: Path) -> None:
    assert format_templates("a {} in {braces}") == ["a {c} in {{braces}}"]
    with pytest.raises(ValueError, match="no slot here"):
        format_templates(str(_write(tmp_path / "t.txt", "a {} fine\nno slot here\n")))
    image = io.BytesIO()
    Image.new("RGB", (8, 8)).save(image, format="PNG")
    with wds.TarWriter(str(tmp_path / "in.tar"), encoder=False) as sink:
        sink.write({"__key__": "a", "png": image.getvalue(), "cls": b"1"})
        sink.write({"__key__": "b", "cls": b"0"})                      # no image
        sink.write({"__key__": "c", "png": image.getvalue()})          # no label
    _write(tmp_path / "names.txt", "zero\none\n")
    done = convert(str(tmp_path / "in.tar"), tmp_path / "names.txt", tmp_path / "out", templates="a {}")
    assert (done.num_samples, done.skipped) == (1, ["b", "c"])
    with wds.TarWriter(str(tmp_path / "bad.tar"), encoder=False) as sink:
        sink.write({"__key__": "d", "png": image.getvalue(), "cls": b"7"})
    with pytest.raises(ValueError, match="sample d has cls=7, outside the 2 class names"):
        convert(str(tmp_path / "bad.tar"), tmp_path / "names.txt", tmp_path / "out2", templates="a {}")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_topk_accuracy_and_the_numpy_crash_it_avoids() -> None:
    rng = np.random.default_rng(0)
    logits, target = torch.tensor(rng.standard_normal((50, 7))), torch.tensor(rng.integers(0, 7, 50))
    for k, got in zip((1, 3, 5), topk_accuracy(logits, target, topk=(1, 3, 5)), strict=True):
        ranks = (logits > logits[torch.arange(50), target][:, None]).sum(1)
        assert got == pytest.approx(float((ranks < k).float().mean()))
    if tuple(int(x) for x in np.__version__.split(".")[:2]) >= (2, 4):
        # The upstream bug this works around; a clip_benchmark release that fixes it fails this line, and
        # data_tools/clip_benchmark_run.py can then go.
        assert accuracy_needs_fix()


@pytest.mark.slow
def test_documented_clip_benchmark_command_equals_mmembed_eval(small_demo: Path, tmp_path: Path) -> None:
    pytest.importorskip("clip_benchmark")
    run_dir = tmp_path / "run"
    # Two steps: predictions still spread over several classes (checked below), so equal accuracy means the
    # two tools agree sample by sample, not merely on one constant guess.
    # The open_clip text transformer: an hf_text tower's export would need a Hugging Face model id.
    done = run_cli(["train", str(DEMO_RECIPE), *tiny_overrides(small_demo, run_dir, steps=2), TRAINABLE_TEXT])
    assert done.returncode == 0, done.stderr[-3000:]
    export = tmp_path / "open_clip"
    assert run_cli(["export", str(run_dir), "--format", "open_clip", "--out", str(export)]).returncode == 0
    shards, classnames = _val_shards(small_demo), small_demo / "classnames.txt"
    convert(shards, classnames, tmp_path / "demo_clip_benchmark")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "data_tools.clip_benchmark_run", "eval", "--model_type", "open_clip",
               "--model", f"local-dir:{export}", "--pretrained", "none", "--dataset", "wds/demo",
               "--dataset_root", str(tmp_path / "demo_clip_benchmark"), "--task", "zeroshot_classification",
               "--num_workers", "1", "--no_amp", "--output", str(tmp_path / "result.json")]
    bench = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert bench.returncode == 0, bench.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())["metrics"]

    ours = run_eval_command(run_dir, "zeroshot", shards, classnames, "openai", "image", "image,text", None, 64,
                            device="cpu", progress=False)
    assert result["acc1"] == ours["zeroshot/val/top1"]
    assert result["mean_per_class_recall"] == pytest.approx(ours["zeroshot/val/mean_per_class_recall"], abs=1e-12)
    from mmembed.checkpoint import load_model

    model, _ = load_model(run_dir)
    request = EvalRequest(shards, classnames, "openai", "image", "image,text", 64)
    confusion = run_tasks(model, TASK_CONFIGS["zeroshot"](request), device="cpu", progress=False)[0].confusion
    assert (confusion.sum(0) > 0).sum() >= 2, f"the model predicts one class only: {confusion.tolist()}"

