"""Reinforced training evidence on the demo data (docs/reinforced.md), measured in one run on this machine.

    python -m data_tools.make_demo_data --out data/demo          # once
    python benchmarks/reinforced_step.py all                     # teacher, build, students, step times, storage

Sub-commands (`all` runs them in order):
- `teacher`: train a larger image-text teacher with mmembed on the demo data (runs/reinforce_demo_teacher);
- `build`: `mmembed reinforce recipes/reinforce_demo.yaml` with that teacher (data/demo/reinforced);
- `students`: the same small student trained for the same steps with plain CLIP and from the reinforced set;
  zero-shot accuracy of both on the held-out colour-shape combinations;
- `step`: per-step time (data loading included, one process, num_workers=0) of plain CLIP, reinforced
  (stored teacher embeddings) and online distillation (the teacher run in the loop), same student and batch,
  rounds interleaved so the shared CPU's load hits all three alike;
- `storage`: bytes per sample of each codec next to DataCompDR's fp32 layout, and the KD-loss change that
  fp16 / int8 storage causes on the stored demo embeddings.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmembed.config import ExperimentConfig, structured_from_dict  # noqa: E402
from mmembed.config.load import load_structured  # noqa: E402
from mmembed.config.reinforce import ReinforceConfig  # noqa: E402

TEACHER_RUN = REPO / "runs/reinforce_demo_teacher"
REINFORCED = REPO / "data/demo/reinforced"
RESULTS = REPO / "runs/reinforced_benchmark.json"
TEACHER_WIDTH, STUDENT_WIDTH = 128, 64
TEACHER_LAYERS, STUDENT_LAYERS = 2, 1


def _vision(width: int, layers: int) -> dict[str, Any]:
    return {"type": "open_clip_vision", "args": {
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": width, "layers": layers, "head_width": 32},
        "embed_dim": 64, "aug_cfg": {"scale": [0.8, 1.0]}}}


def _text(width: int, layers: int) -> dict[str, Any]:
    return {"type": "open_clip_text", "args": {
        "text_cfg": {"context_length": 16, "width": width, "heads": 4, "layers": layers}, "embed_dim": 64}}


def experiment(name: str, width: int, layers: int, steps: int, pair: dict[str, Any],
               reinforced: bool = False) -> ExperimentConfig:
    """demo.yaml reduced to image-text, with the given tower size, pair loss and data."""
    tree = OmegaConf.to_container(OmegaConf.load(REPO / "recipes/demo.yaml"), resolve=True)
    tree["name"], tree["output_dir"] = name, str(REPO / "runs" / name)
    tree["model"]["modalities"] = {"image": {"tower": _vision(width, layers), "head": {"type": "identity"}},
                                   "text": {"tower": _text(width, layers), "head": {"type": "identity"}}}
    tree["model"]["pairs"] = [{"a": "image", "b": "text", **pair}]
    tree["eval"]["zeroshot"] = [t for t in tree["eval"]["zeroshot"] if t["modality"] == "image"]
    tree["eval"]["every"] = 0
    tree["train"].update(steps=steps, save_every=0, log_every=25)
    tree["optim"]["warmup_steps"] = min(30, steps // 5)
    if reinforced:
        tree["data"]["train"] = [{"urls": [str(REINFORCED / "train-{000000..000007}.tar")]}]
        tree["data"]["reinforced"] = {"enabled": True, "captions": "real"}
    return structured_from_dict(ExperimentConfig, tree)


def _distill_pair(dim: int = 64, lam: float = 1.0) -> dict[str, Any]:
    return {"loss": "distill", "args": {"lam": lam, "teacher_dims": [dim], "teacher_scales": [100.0]}}


def train(config: ExperimentConfig) -> dict[str, float]:
    from mmembed.train import Trainer

    return Trainer(config, overwrite=True).fit().final_metrics  # a re-run replaces its own runs


def cmd_teacher(args: argparse.Namespace) -> dict[str, Any]:
    config = experiment("reinforce_demo_teacher", TEACHER_WIDTH, TEACHER_LAYERS, args.teacher_steps,
                        {"loss": "infonce"})
    return {"teacher": train(config)}


def cmd_build(args: argparse.Namespace) -> dict[str, Any]:
    from mmembed.reinforce.builder import run_reinforce
    from mmembed.reinforce.verify import verify_dataset

    cfg = load_structured(ReinforceConfig, REPO / "recipes/reinforce_demo.yaml",
                          [f"output_dir={REINFORCED}", f"teachers.0.args.checkpoint={TEACHER_RUN}"])
    start = time.perf_counter()
    assert run_reinforce(cfg, progress=True)
    elapsed = time.perf_counter() - start
    report = verify_dataset(REINFORCED, replay=4)
    print(report.summary())
    return {"build_seconds": elapsed, "verify_ok": report.ok, "verify_max_replay_error": report.max_replay_error}


def cmd_students(args: argparse.Namespace) -> dict[str, Any]:
    plain = train(experiment("reinforce_demo_student_plain", STUDENT_WIDTH, STUDENT_LAYERS, args.student_steps,
                             {"loss": "infonce"}))
    reinforced = train(experiment("reinforce_demo_student_reinforced", STUDENT_WIDTH, STUDENT_LAYERS,
                                  args.student_steps, _distill_pair(), reinforced=True))
    return {"student_plain": plain, "student_reinforced": reinforced}


def _step_runner(mode: str, batch_size: int):  # type: ignore[no-untyped-def]
    """A closure running one optimisation step of `mode` (data loading included)."""
    from mmembed.checkpoint import load_model
    from mmembed.data import build_train_loader
    from mmembed.model import build_model
    from mmembed.train.objective import Objective

    config = experiment(f"step_{mode}", STUDENT_WIDTH, STUDENT_LAYERS, 1, _distill_pair() if mode != "plain" else
                        {"loss": "infonce"}, reinforced=mode == "reinforced")
    config.data.num_workers, config.data.batch_size = 0, batch_size
    torch.manual_seed(0)
    model = build_model(config.model)
    objective = Objective(config.model.pairs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = iter(build_train_loader(config.data, model.preprocessors(True), batch_size=batch_size, seed=0))
    teacher = load_model(TEACHER_RUN)[0].eval() if mode == "online" else None

    def step() -> None:
        batch = next(batches)
        if teacher is not None:  # online distillation: the teacher encodes this very batch
            with torch.no_grad():
                batch["teacher"] = {"image": teacher.encode("image", batch["image"]),
                                    "text": teacher.encode("text", batch["text"])}
        out = model(batch)
        loss, _ = objective(model, out.embeddings, out.features, batch, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def cmd_step(args: argparse.Namespace) -> dict[str, Any]:
    modes = ("plain", "reinforced", "online")
    runners = {m: _step_runner(m, args.batch_size) for m in modes}
    times: dict[str, list[float]] = {m: [] for m in modes}
    for m in modes:  # warm-up
        for _ in range(3):
            runners[m]()
    for _ in range(args.rounds):
        for m in modes:
            for _ in range(args.steps_per_round):
                start = time.perf_counter()
                runners[m]()
                times[m].append(time.perf_counter() - start)
    median = {m: statistics.median(v) for m, v in times.items()}
    return {"step_seconds_median": median, "batch_size": args.batch_size, "steps_measured": len(times["plain"]),
            "reinforced_over_plain": median["reinforced"] / median["plain"],
            "online_over_plain": median["online"] / median["plain"], "torch_threads": torch.get_num_threads()}


def _kd_delta(image: torch.Tensor, text: torch.Tensor, codec: str, groups: list[int]) -> float:
    from mmembed.losses.functional import distill_kd
    from mmembed.reinforced_format.codec import decode_array, encode_array

    def stored(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(torch.from_numpy(decode_array(encode_array(x.numpy(), codec, groups))[0]), dim=1)

    gen = torch.Generator().manual_seed(0)
    student = [F.normalize(torch.randn(image.shape[0], 64, generator=gen), dim=1) for _ in range(2)]
    scale = torch.tensor(30.0)
    ref = distill_kd(*student, scale, [F.normalize(image, dim=1)], [F.normalize(text, dim=1)], [100.0])
    return abs(float(distill_kd(*student, scale, [stored(image)], [stored(text)], [100.0]) - ref))


def cmd_storage(args: argparse.Namespace) -> dict[str, Any]:
    from mmembed.data.stats import SkipStats
    from mmembed.data.tar_samples import shard_samples
    from mmembed.reinforce.builder import run_reinforce
    from mmembed.reinforced_format.codec import decode_array, payload_bytes

    # The reference must be unquantised: rebuild the first demo shard with fp32 storage.
    reference = REPO / "data/demo/reinforced_fp32"
    cfg = load_structured(ReinforceConfig, REPO / "recipes/reinforce_demo.yaml", [
        f"output_dir={reference}", f"teachers.0.args.checkpoint={TEACHER_RUN}", "storage=fp32",
        f"input=[{REPO}/data/demo/train/train-000000.tar]"])
    assert run_reinforce(cfg, progress=False)
    manifest = json.loads((reference / "manifest.json").read_text())
    k, dim = manifest["augment"]["num_augs"], manifest["embedding_dim"]
    raws = list(shard_samples(str(reference / "train-000000.tar"), SkipStats()))
    image = torch.stack([torch.from_numpy(decode_array(r["image_emb"])[0][0]) for r in raws])
    text = torch.stack([torch.from_numpy(decode_array(r["text_emb"])[0][0]) for r in raws])
    layouts = {"demo (K=5, 0 syn, ΣD=64)": (k, 1, dim, 1),
               "DataCompDR-12M (K=30, 5 syn, ΣD=1536)": (30, 6, 1536, 2),
               "DataCompDR-1B (K=10, 5 syn, ΣD=1536)": (10, 6, 1536, 2)}
    table = {}
    for name, (augs, rows, width, teachers) in layouts.items():
        fp32_raw = 4 * (augs + rows) * width  # DataCompDR stores float32 arrays
        table[name] = {"datacompdr_fp32": fp32_raw, **{
            c: payload_bytes(augs, width, c, teachers) + payload_bytes(rows, width, c, teachers)
            for c in ("fp32", "fp16", "int8")}}
    deltas = {}
    for codec in ("fp16", "int8"):
        worst = 0.0
        for start in range(0, image.shape[0] - 63, 64):  # batches of 64 stored samples
            worst = max(worst, _kd_delta(image[start:start + 64], text[start:start + 64], codec, [dim]))
        deltas[codec] = worst
    return {"bytes_per_sample": table, "kd_abs_change_vs_fp32_max_over_batches": deltas,
            "kd_batches": image.shape[0] // 64, "teacher_dim": dim}


COMMANDS = {"teacher": cmd_teacher, "build": cmd_build, "students": cmd_students, "step": cmd_step,
            "storage": cmd_storage}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=[*COMMANDS, "all"])
    parser.add_argument("--teacher-steps", type=int, default=150)
    parser.add_argument("--student-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps-per-round", type=int, default=8)
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for name in COMMANDS if args.command == "all" else [args.command]:
        results[name] = COMMANDS[name](args)
        print(json.dumps({name: results[name]}, indent=1, default=str))
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(copy.deepcopy(results), indent=1, default=str))


if __name__ == "__main__":
    main()
