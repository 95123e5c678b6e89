"""Reinforced learning efficiency (MobileCLIP's claim): a student distilled for N steps from a reinforced
set against the same student trained plainly for N, 2N and 4N steps.

    python benchmarks/learning.py reinforced              # docs/results.md, section "Reinforced training"
    python benchmarks/learning.py reinforced --smoke

1. Teacher: recipes/demo.yaml's image-text model (frozen MiniLM text, so it brings language structure the
   student lacks) trained `--teacher-steps` steps, several times the student's budget. Its own zero-shot
   numbers are reported.
2. `mmembed reinforce` on the demo's training shards: K = 5 stored augmentations per image, crops of 0.9-1.0
   of the image (the crops the plain student gets fresh) and nothing else: captions name colour, position
   and size, and colour operations, rotations or smaller crops change what the caption says (measured in
   docs/results.md). The teacher's image embedding of each and its caption embedding, fp16; the teacher's
   own learned logit scale as its KD scale c (MobileCLIP's convention). The build time is reported.
3. Student: the demo's image tower with a small text transformer trained from scratch (both towers train,
   as in MobileCLIP). Plain InfoNCE on the original shards for N, 2N and 4N steps; `distill` (λ = 1, the
   setting docs/losses.md gives for small data) on the reinforced shards for N steps; and, as the control
   that separates the teacher from the stored augmentations, the same loss at λ = 0 (ground truth only)
   on the same reinforced shards for N steps. Same seeds throughout.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import time
from pathlib import Path
from typing import Any

from benchmarks.learning_common import (
    DataVariant,
    Tree,
    cell,
    demo_tree,
    ensure_data,
    image_text_only,
    machine_line,
    markdown_table,
    on_data,
    save_json,
    train_run,
)
from benchmarks.learning_losses import SCRATCH_TEXT

METRICS = {"zeroshot/image_heldout/top1": "held-out top-1", "zeroshot/image_all/top1": "generalised top-1",
           "retrieval/val_image_text/image_to_text_R@5": "image→text R@5",
           "retrieval/val_image_text/text_to_image_R@5": "text→image R@5"}
AUGMENT = {"num_augs": 5, "scale": [0.9, 1.0], "flip_prob": 0.0, "randaug_num_ops": 0}
# (label, run folder, steps in units of N, training data): "plain" trains InfoNCE on the original shards;
# "distill" the distill loss at --lam on the reinforced shards; "control" the same loss at λ = 0 on them.
STUDENTS: tuple[tuple[str, str, int, str], ...] = (
    ("plain N", "plain_N", 1, "plain"), ("reinforced N", "reinforced_N", 1, "distill"),
    ("reinforced N, no teacher (λ = 0)", "reinforced_N_no_teacher", 1, "control"),
    ("plain 2N", "plain_2N", 2, "plain"), ("plain 4N", "plain_4N", 4, "plain"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--student-steps", type=int, default=100, help="N")
    parser.add_argument("--teacher-steps", type=int, default=1200)
    parser.add_argument("--lam", type=float, default=1.0, help="distill λ (1: KD only)")


def student_tree(data_dir: Path, steps: int) -> Tree:
    tree = on_data(image_text_only(demo_tree()), data_dir)
    tree["model"]["modalities"]["text"] = copy.deepcopy(SCRATCH_TEXT)
    tree["train"]["steps"] = steps
    tree["optim"]["warmup_steps"] = min(tree["optim"]["warmup_steps"], max(1, steps // 5))
    return tree


def teacher_tree(data_dir: Path, steps: int) -> Tree:
    tree = on_data(image_text_only(demo_tree()), data_dir)
    tree["train"]["steps"] = steps
    tree["optim"]["warmup_steps"] = min(tree["optim"]["warmup_steps"], max(1, steps // 5))
    return tree


def build_reinforced(teacher_run: Path, data_dir: Path, out: Path, scale: float) -> dict[str, Any]:
    """`mmembed reinforce` with the teacher; returns build seconds and the verify report's verdict."""
    import shutil

    from mmembed.config.reinforce import ReinforceConfig
    from mmembed.config.validate import structured_from_dict
    from mmembed.reinforce.builder import run_reinforce
    from mmembed.reinforce.verify import verify_dataset

    if out.exists():
        shutil.rmtree(out)
    cfg = structured_from_dict(ReinforceConfig, {
        "name": "bench_reinforce", "input": [str(s) for s in sorted((data_dir / "train").glob("train-*.tar"))],
        "output_dir": str(out), "modality": "image", "storage": "fp16", "seed": 0, "batch_size": 64,
        "teachers": [{"name": "teacher", "kind": "mmembed", "args": {"checkpoint": str(teacher_run)},
                      "scale": scale}],
        "augment": AUGMENT})
    start = time.perf_counter()
    if not run_reinforce(cfg, progress=False):
        raise RuntimeError(f"mmembed reinforce did not complete every shard of {out}")
    seconds = time.perf_counter() - start
    report = verify_dataset(out, replay=4)
    return {"build_seconds": seconds, "verify_ok": report.ok, "max_replay_error": report.max_replay_error}


def reinforced_student(tree: Tree, reinforced: Path, dim: int, scale: float, lam: float) -> Tree:
    tree = copy.deepcopy(tree)
    tree["data"]["train"] = [{"urls": [str(s) for s in sorted(reinforced.glob("train-*.tar"))]}]
    tree["data"]["reinforced"] = {"enabled": True, "captions": "real"}
    tree["model"]["pairs"] = [{"a": "image", "b": "text", "loss": "distill",
                               "args": {"lam": lam, "teacher_dims": [dim], "teacher_scales": [scale]}}]
    return tree


def _teacher_scale_and_dim(run_dir: Path) -> tuple[float, int]:
    from mmembed.checkpoint import load_model

    model, config = load_model(run_dir)
    return float(model.logit_scale("image", "text").detach()), config.model.embed_dim


def run(args: argparse.Namespace) -> dict[str, Any]:
    smoke = args.smoke
    variant = DataVariant("demo_scatter_smoke", train_samples=96, val_samples=48) if smoke else \
        DataVariant("demo_scatter")
    n = 3 if smoke else args.student_steps
    teacher_steps = 4 if smoke else args.teacher_steps
    seeds = args.seeds[:1] if smoke else args.seeds
    data_dir = ensure_data(variant, args.out / "data")
    out = args.out / "reinforced"
    start_machine = machine_line()

    teacher_dir = out / "teacher"
    tree = teacher_tree(data_dir, teacher_steps)
    if smoke:
        tree["data"]["batch_size"] = 16
    teacher = train_run(tree, teacher_dir, seed=0, reuse=args.reuse)
    scale, dim = _teacher_scale_and_dim(teacher_dir)
    build_file = out / "build.json"
    build = json.loads(build_file.read_text()) if build_file.is_file() else {}
    # The set built from this very teacher with these augmentations; otherwise build it (and retrain the
    # students that read it).
    build_reused = args.reuse and bool(teacher.extra.get("reused")) and build.get("augment") == AUGMENT
    if not build_reused:
        build = {**build_reinforced(teacher_dir, data_dir, out / "shards", scale), "augment": AUGMENT}
        save_json(build_file, build)
    print(f"[reinforced] teacher {teacher.metrics}; scale {scale:.1f}; build {build}", flush=True)

    runs = []
    for seed in seeds:
        for label, folder, multiple, kind in STUDENTS:
            steps = multiple * n
            tree = student_tree(data_dir, steps)
            if smoke:
                tree["data"]["batch_size"] = 16
            if kind != "plain":
                lam = args.lam if kind == "distill" else 0.0
                tree = reinforced_student(tree, out / "shards", dim, scale, lam)
            reuse = args.reuse and (kind == "plain" or build_reused)
            result = train_run(tree, out / "runs" / f"{folder}_s{seed}", seed, reuse=reuse)
            runs.append({"label": label, "steps": steps, **vars(result)})
            print(f"[reinforced] {label} seed {seed}: {result.metrics.get('zeroshot/image_heldout/top1')}",
                  flush=True)
    report = {"settings": {"seeds": seeds, "N": n, "teacher_steps": teacher_steps, "lam": args.lam,
                           "augment": AUGMENT, "teacher_scale": scale},
              "teacher": vars(teacher), "build": build, "runs": runs, "chance": _chance(data_dir),
              "machine_start": start_machine, "machine_end": machine_line()}
    save_json(out / "results.json", report)
    text = tables(report)
    (out / "results.md").write_text(text)
    print(text)
    return report


def _chance(data_dir: Path) -> dict[str, float]:
    from benchmarks.learning_losses import chance

    odds = chance(data_dir)
    return {"zeroshot/image_heldout/top1": odds["image_heldout"], "zeroshot/image_all/top1": odds["image_all"],
            **{k: odds["R@5"] for k in METRICS if "R@5" in k}}


def tables(report: dict[str, Any]) -> str:
    odds = report["chance"]
    header = ["model", "steps", *(f"{label} (chance {odds[k]:.3f})" for k, label in METRICS.items()), "run s"]
    teacher = report["teacher"]
    rows = [["teacher (frozen MiniLM text)", str(report["settings"]["teacher_steps"]),
             *(f"{teacher['metrics'][k]:.3f}" for k in METRICS), f"{teacher['seconds']:.0f}"]]
    for label in dict.fromkeys(r["label"] for r in report["runs"]):
        mine = [r for r in report["runs"] if r["label"] == label]
        rows.append([f"student, {label}", str(mine[0]["steps"]), *(cell([r["metrics"][k] for r in mine])
                                                                  for k in METRICS),
                     cell([r["seconds"] for r in mine], 0)])
    seeds = ", ".join(map(str, report["settings"]["seeds"]))
    build = report["build"]
    return (f"Students: mean ± sd over seeds {seeds}. Reinforced set built in {build['build_seconds']:.0f} s "
            f"(verify ok: {build['verify_ok']}, max replay error {build['max_replay_error']:.1e}); "
            f"teacher KD scale c = {report['settings']['teacher_scale']:.1f} (its learned logit scale).\n\n"
            + markdown_table(header, rows) + "\n\n" + verdict(report) + "\n")


def verdict(report: dict[str, Any]) -> str:
    """Where reinforced-N falls on the plain curve: the plain step count it matches, by interpolating
    held-out top-1 linearly in log(steps) between N, 2N and 4N."""
    key = "zeroshot/image_heldout/top1"
    mean = {label: sum(r["metrics"][key] for r in rs) / len(rs) for label in dict.fromkeys(r["label"] for r in
            report["runs"]) if (rs := [r for r in report["runs"] if r["label"] == label])}
    n = report["settings"]["N"]
    curve = [(n, mean["plain N"]), (2 * n, mean["plain 2N"]), (4 * n, mean["plain 4N"])]
    target = mean["reinforced N"]
    equivalent = None
    for (s0, v0), (s1, v1) in itertools.pairwise(curve):
        if min(v0, v1) <= target <= max(v0, v1) and v1 != v0:
            equivalent = math.exp(math.log(s0) + (target - v0) / (v1 - v0) * (math.log(s1) - math.log(s0)))
            break
    if equivalent is None:
        where = "above plain 4N" if target > max(v for _, v in curve) else "below plain N" if target < curve[0][1] \
            else "not on a monotone stretch of the plain curve"
        return f"Held-out top-1 of reinforced N = {target:.3f}: {where}."
    return (f"Held-out top-1 of reinforced N = {target:.3f}, which plain training reaches at about "
            f"{equivalent / n:.1f} N (log-linear interpolation of the plain means); target: ≥ 3 N.")
