"""Speech, word level: does a trainable byte-level text tower place spoken words it never heard, where the
frozen MiniLM anchor cannot?

    .venv/bin/python benchmarks/learning_speech.py                 # data (once) + 4 methods x 3 seeds
    .venv/bin/python benchmarks/learning_speech.py --smoke         # tiny data and runs, well under a minute

(`benchmarks/learning.py speech` dispatches here: this module exposes `add_arguments` and `run`.)

Methods, each one recipe (recipes/speech_words_*.yaml), identical except for the text side and the loss:
  cwcl     frozen MiniLM + CWCL           infonce   frozen MiniLM + InfoNCE
  bytes    trainable byte_text + InfoNCE  tripair   audio-MiniLM and audio-byte_text (InfoNCE each), scored
                                                    through each text tower
Each is trained once per seed (the seed sets the initialisation and the data order) on
data_tools.make_speech_words (900 train words) and scored zero-shot on 100 heard words (new recordings) and
100 words never heard. OUT/results.json holds every run; OUT/results.md the table (mean ± sample sd over
seeds, chance beside it, and a binomial z of the pooled unheard top-1 against chance).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: `benchmarks` importable

from benchmarks.run_metrics import evaluations  # noqa: E402


@dataclass(frozen=True)
class Row:
    """One line of the table: a method's zero-shot tasks on heard and on unheard words."""

    label: str
    heard: str
    unheard: str


@dataclass(frozen=True)
class Method:
    recipe: str
    rows: tuple[Row, ...]


METHODS: dict[str, Method] = {
    "cwcl": Method("speech_words_cwcl", (Row("frozen MiniLM + CWCL", "heard_words", "unheard_words"),)),
    "infonce": Method("speech_words_infonce", (Row("frozen MiniLM + InfoNCE", "heard_words", "unheard_words"),)),
    "bytes": Method("speech_words_bytes", (Row("trainable byte_text + InfoNCE", "heard_words", "unheard_words"),)),
    "tripair": Method("speech_words_tripair", (
        Row("tri-pair, scored through MiniLM", "heard_words_minilm", "unheard_words_minilm"),
        Row("tri-pair, scored through byte_text", "heard_words_chars", "unheard_words_chars"))),
}
# Tiny data and runs for --smoke (and its test): every method end to end, nothing measured.
SMOKE_DATA = {"train_words": 24, "eval_words": 6, "train_clips_per_word": 2, "eval_clips_per_word": 2,
              "samples_per_shard": 24}
SMOKE_OVERRIDES = ["train.steps=3", "data.batch_size=12", "data.shuffle_buffer=12", "optim.warmup_steps=1",
                   "train.log_every=1", "eval.batch_size=64"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=Path("data/speech_words"),
                        help="data_tools.make_speech_words output; built with the defaults when missing")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_learning_speech"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the recipes' own)")
    parser.add_argument("--eval-every", type=int, default=100, help="also evaluate every N steps (0: only at the end)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, one process each")
    # On a busy 2-core machine two OpenMP threads per process spin against other jobs (docs/audio.md).
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per run")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny data (under OUT/data) and 3-step runs of every method, one seed: checks the "
                             "benchmark end to end in well under a minute; its numbers mean nothing")


def ensure_data(data: Path, smoke: bool) -> dict[str, Any]:
    """The data set's info.json, synthesising the set first when it is missing."""
    from data_tools.make_speech_words import make_speech_words

    info_path = data / "info.json"
    if not info_path.is_file():
        print(f"building {data} with espeak-ng ...", flush=True)
        make_speech_words(data, **(SMOKE_DATA if smoke else {}), progress=not smoke)
    return json.loads(info_path.read_text())


def run_config(method: str, seed: int, info: dict[str, Any], run_dir: Path, overrides: list[str]) -> Any:
    """The method's recipe for one seed, pointed at the data set described by `info`."""
    from mmembed.config import load_recipe

    config = load_recipe(ROOT / "recipes" / f"{METHODS[method].recipe}.yaml",
                         [f"seed={seed}", f"output_dir={run_dir}", "train.save_every=0", *overrides])
    config.data.train[0].urls = [info["splits"]["train"]["urls"]]
    for task in config.eval.zeroshot:
        split = "heard" if task.name.startswith("heard") else "unheard"
        task.urls = [info["splits"][f"val_{split}"]["urls"]]
        task.classnames = info[f"classnames_{split}"]
    return config


def run_one(method: str, seed: int, info: dict[str, Any], out: Path, overrides: list[str],
            threads: int) -> dict[str, Any]:
    import torch

    from mmembed.train import Trainer

    torch.set_num_threads(threads)
    run_dir = out / f"{method}_seed{seed}"
    start = time.perf_counter()
    metrics = Trainer(run_config(method, seed, info, run_dir, overrides)).fit().final_metrics
    seconds = time.perf_counter() - start
    print(f"{method} seed {seed}: {seconds:.0f} s", flush=True)
    return {"method": method, "seed": seed, "seconds": seconds,
            "metrics": {k: float(v) for k, v in metrics.items() if k.startswith("zeroshot/")},
            "curve": {str(step): values for step, values in evaluations(run_dir, "eval/zeroshot/").items()}}


def _cell(values: list[float]) -> str:
    if len(values) == 1:  # one seed has no spread to show
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def pooled_z(top1: list[float], clips: int, chance: float) -> float:
    """Binomial z of all seeds' correct answers together against chance (each seed scores the same clips)."""
    n = clips * len(top1)
    correct = sum(round(t * clips) for t in top1)
    return (correct - n * chance) / math.sqrt(n * chance * (1 - chance))


def _values(runs: list[dict[str, Any]], task: str, metric: str) -> list[float]:
    return [r["metrics"][f"zeroshot/{task}/{metric}"] for r in runs]


def markdown(runs: list[dict[str, Any]], info: dict[str, Any]) -> str:
    classes = info["splits"]["val_unheard"]["num_words"]
    clips = info["splits"]["val_unheard"]["num_samples"]
    chance1, chance5 = 1 / classes, min(5, classes) / classes
    lines = [f"Chance: top-1 {chance1:.3f}, top-5 {chance5:.3f} ({classes} classes per split; "
             f"{info['splits']['val_heard']['num_samples']} heard and {clips} unheard clips).", "",
             "| method | heard top-1 | heard top-5 | unheard top-1 | unheard top-5 | unheard top-1 z vs chance "
             "| seeds | s / run |", "|---|---|---|---|---|---|---|---|"]
    for method, spec in METHODS.items():
        mine = [r for r in runs if r["method"] == method]
        if not mine:
            continue
        for row in spec.rows:
            cells = [_cell(_values(mine, row.heard, "top1")), _cell(_values(mine, row.heard, "top5")),
                     _cell(_values(mine, row.unheard, "top1")), _cell(_values(mine, row.unheard, "top5")),
                     f"{pooled_z(_values(mine, row.unheard, 'top1'), clips, chance1):+.1f}"]
            seconds = statistics.mean(r["seconds"] for r in mine)
            lines.append(f"| {row.label} | " + " | ".join(cells) + f" | {len(mine)} | {seconds:.0f} |")
    lines += curve_table(runs)
    lines += ["", "Per seed (heard top-1 / unheard top-1):", ""]
    for method, spec in METHODS.items():
        for row in spec.rows:
            per_seed = [f"seed {r['seed']}: {r['metrics'][f'zeroshot/{row.heard}/top1']:.3f} / "
                        f"{r['metrics'][f'zeroshot/{row.unheard}/top1']:.3f}"
                        for r in runs if r["method"] == method]
            if per_seed:
                lines.append(f"- {row.label}: " + "; ".join(per_seed))
    return "\n".join(lines) + "\n"


def curve_table(runs: list[dict[str, Any]]) -> list[str]:
    """Top-1 (mean ± sd over seeds) at every evaluated step: is a method still learning, or flat at chance?"""
    steps = sorted({int(step) for r in runs for step in r["curve"]})
    if len(steps) < 2:
        return []
    lines = ["", "Top-1 during training (heard / unheard; mean ± sd when there are several seeds):", "",
             "| method | " + " | ".join(f"step {s}" for s in steps) + " |", "|---|" + "---|" * len(steps)]
    for method, spec in METHODS.items():
        mine = [r for r in runs if r["method"] == method]
        for row in spec.rows if mine else ():
            cells = [f"{_cell([r['curve'][str(s)][f'zeroshot/{row.heard}/top1'] for r in mine])} / "
                     f"{_cell([r['curve'][str(s)][f'zeroshot/{row.unheard}/top1'] for r in mine])}" for s in steps]
            lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    return lines


def _train_all(jobs: list[tuple[str, int]], info: dict[str, Any], args: argparse.Namespace,
               overrides: list[str]) -> list[dict[str, Any]]:
    common = (info, args.out, overrides, args.threads)
    if args.jobs <= 1:
        return [run_one(method, seed, *common) for method, seed in jobs]
    # Spawned, not forked: each run starts clean (its own accelerate state, OpenMP pool and data workers).
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_one, method, seed, *common) for method, seed in jobs]
        return [f.result() for f in futures]


def run(args: argparse.Namespace) -> None:
    if args.smoke:
        args.data, args.seeds = args.out / "data", args.seeds[:1]
    info = ensure_data(args.data, args.smoke)
    overrides = [f"eval.every={args.eval_every}", *(SMOKE_OVERRIDES if args.smoke else [])]
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(method, seed) for seed in args.seeds for method in args.methods]
    start = time.perf_counter()
    runs = _train_all(jobs, info, args, overrides)
    (args.out / "results.json").write_text(json.dumps(runs, indent=1) + "\n")
    table = markdown(runs, info)
    (args.out / "results.md").write_text(table)
    print(table)
    print(f"{len(runs)} runs in {time.perf_counter() - start:.0f} s; results in {args.out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run(args)
    except Exception as err:  # a missing espeak-ng or data file: one line, not a traceback
        from data_tools.make_speech_data import EspeakMissing

        if isinstance(err, EspeakMissing | FileNotFoundError):
            print(f"error: {err}", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
