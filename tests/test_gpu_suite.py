"""benchmarks/gpu_suite.sh: the CPU smoke run (`--cpu --tiny`) produces every row, and the parts the GPU
numbers rest on (batch probe, FLOP count, peak table) are right."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import suite_probe  # noqa: E402
import train_step  # noqa: E402
from suite_rows import TINY_MODEL, TINY_MODEL_NAME  # noqa: E402


def test_probe_doubles_until_a_batch_does_not_fit_or_the_cap() -> None:
    limit = 100

    def verdict(size: int) -> str:
        return suite_probe.FITS if size <= limit else "out of memory"

    assert suite_probe.probe_batch(verdict, 8, 1024) == (64, {8: "fits", 16: "fits", 32: "fits", 64: "fits",
                                                              128: "out of memory"})
    assert suite_probe.probe_batch(verdict, 8, 32)[0] == 32
    assert suite_probe.probe_batch(verdict, 256, 1024) == (None, {256: "out of memory"})


@pytest.mark.parametrize(("name", "tflops"), [
    ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H100 NVL", 835), ("NVIDIA H200", 989),
    ("NVIDIA GH200 480GB", 989), ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA A100-PCIE-40GB", 312),
    ("NVIDIA L4", 121), ("NVIDIA L40S", 362), ("NVIDIA A10", 125),
    ("NVIDIA A10G", None), ("NVIDIA L40", None), ("NVIDIA GeForce RTX 4090", None), ("CPU (2 threads)", None),
])
def test_bf16_peaks_are_known_only_for_listed_devices(name: str, tflops: float | None) -> None:
    assert suite_probe.bf16_peak_flops(name) == (None if tflops is None else tflops * 1e12)


def _transformer_macs(tokens: int, width: int, layers: int) -> int:
    # qkv (3 d²) + output projection (d²) + MLP (2 x 4 d²) per token, and QKᵀ plus AV (2 N² d) per layer.
    return layers * (12 * tokens * width * width + 2 * tokens * tokens * width)


def test_step_flops_match_the_transformer_formula(tmp_path: Path) -> None:
    """The MFU numerator: counted FLOPs of forward + backward = 3 x 2 x the towers' multiply-adds."""
    config = tmp_path / f"{TINY_MODEL_NAME}.json"
    config.write_text(json.dumps(TINY_MODEL))
    args = Namespace(model="", model_config=config, batch_size=4, steps=1, log_every=1, workers=0,
                     precision="no", compile=False)
    job = suite_probe.StepModel(train_step.mmembed_recipe(args, tmp_path), suite_probe.torch.device("cpu"))
    batch = 16
    flops = suite_probe.count_step_flops(job, job.batch(batch))
    vision, text, dim = TINY_MODEL["vision_cfg"], TINY_MODEL["text_cfg"], TINY_MODEL["embed_dim"]
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    per_sample = (_transformer_macs(patches + 1, vision["width"], vision["layers"]) + vision["width"] * dim
                  + _transformer_macs(text["context_length"], text["width"], text["layers"]) + text["width"] * dim)
    patch_embedding = patches * 3 * vision["patch_size"] ** 2 * vision["width"]  # no gradient for the pixels
    loss = 2 * batch * batch * dim  # forward logits; their backward has 2 matmuls each
    expected = 2 * (3 * per_sample * batch + 2 * patch_embedding * batch + 3 * loss)
    assert flops == pytest.approx(expected, rel=0.02)


ROW_NAMES = ("train_eager", "train_compile", "mfu", "demo_data_wait", "fsdp2_smoke")


@pytest.mark.slow
def test_cpu_tiny_suite_writes_every_row(tmp_path: Path) -> None:
    out = tmp_path / "suite.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_suite.sh"), "--cpu", "--tiny", "--out", str(out),
                           "--budget-s", "1500"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1800, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {row["name"]: row for row in report["rows"]}
    losses = [f"loss_{kind}_B{b}" for b in report["settings"]["loss_sizes"] for kind in ("memory", "time")]
    assert sorted(rows) == sorted([*ROW_NAMES, *losses])
    for name, row in rows.items():
        assert row["label"] in proc.stdout  # the printed table has every row
        assert row["status"] == "ok", row
        if name != "mfu":
            assert math.isfinite(row["value"]) and row["value"] > 0, row
    assert rows["mfu"]["value"] is None and "unknown peak" in rows["mfu"]["note"]  # no peak for a CPU
    mfu = rows["mfu"]["details"]
    assert mfu["flops_per_step"] > 0 and set(mfu["achieved_flops_per_s"]) >= {"open_clip", "mmembed",
                                                                               "mmembed_compile"}
    train = rows["train_compile"]["details"]
    assert train["batch"] == 8 and train["probe"]["tried"] == {"4": "fits", "8": "fits"}
    assert 0 <= rows["demo_data_wait"]["value"] < 1
    fsdp = rows["fsdp2_smoke"]["details"]  # the run really sharded, trained and wrote both checkpoint forms
    assert fsdp["sharding"].startswith("FSDP2 over 1 rank(s)") and "sharded: image (" in fsdp["sharding"]
    assert len(fsdp["losses"]) == 3 and all(math.isfinite(v) for v in fsdp["losses"])
    assert fsdp["checkpoint"] == "checkpoints/step_00000006"
    assert report["machine"]["device"] == "cpu" and report["mode"] == "tiny"
