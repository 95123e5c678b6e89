"""CWCL vs InfoNCE on held-out spoken commands: the same recipe, steps and seeds, only the loss differs.

    .venv/bin/python -m data_tools.make_speech_data --out data/speech     # once
    .venv/bin/python benchmarks/audio_cwcl_vs_infonce.py --seeds 0 1 2 --steps 150

Trains recipes/speech_cwcl.yaml and recipes/speech_infonce.yaml once per seed (the seed sets the model
initialisation and the data order), evaluates every `--eval-every` steps, and writes every run's metrics to
OUT/results.json plus a Markdown table (mean ± std over seeds, and each seed) to OUT/results.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `benchmarks` importable

from benchmarks.run_metrics import evaluations

RECIPES = {"cwcl": "recipes/speech_cwcl.yaml", "infonce": "recipes/speech_infonce.yaml"}
REPORTED = (
    "zeroshot/heldout_commands/top1",
    "zeroshot/heldout_commands/top5",
    "zeroshot/heldout_commands/mean_per_class_recall",
    "zeroshot/novel_words/top1",
    "retrieval/heldout_audio_text/audio_to_text_R@1",
)


def run_one(loss: str, seed: int, steps: int, eval_every: int, out: Path) -> dict[str, object]:
    from mmembed.config import load_recipe
    from mmembed.train import Trainer

    run_dir = out / f"{loss}_seed{seed}"
    overrides = [f"seed={seed}", f"train.steps={steps}", f"eval.every={eval_every}", f"output_dir={run_dir}",
                 "train.save_every=0"]
    start = time.perf_counter()
    Trainer(load_recipe(RECIPES[loss], overrides), overwrite=True).fit()  # a re-run replaces its own runs
    seconds = time.perf_counter() - start
    return {"loss": loss, "seed": seed, "steps": steps, "seconds": seconds, "eval": evaluations(run_dir)}


def _cell(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def markdown(runs: list[dict[str, object]]) -> str:
    steps = sorted({s for r in runs for s in r["eval"]})
    lines = ["| loss | step | " + " | ".join(REPORTED) + " |", "|---|---|" + "---|" * len(REPORTED)]
    for loss in RECIPES:
        mine = [r for r in runs if r["loss"] == loss]
        for step in steps:
            cells = [_cell([r["eval"][step][m] for r in mine]) for m in REPORTED]
            lines.append(f"| {loss} | {step} | " + " | ".join(cells) + " |")
    lines += ["", "Per seed (final step, held-out commands top-1):", ""]
    for r in runs:
        final = r["eval"][max(r["eval"])]
        lines.append(f"- {r['loss']} seed {r['seed']}: {final[REPORTED[0]]:.3f} ({r['seconds']:.0f} s)")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_audio_cwcl_vs_infonce"))
    # On a busy 2-core machine two OpenMP threads per process spin against other jobs: measured 20 vs 180
    # clips/s for this recipe with one thread.
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if not Path("data/speech/info.json").is_file():
        print("data/speech is missing: run `python -m data_tools.make_speech_data --out data/speech`",
              file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    runs = [run_one(loss, seed, args.steps, args.eval_every, args.out) for seed in args.seeds for loss in RECIPES]
    (args.out / "results.json").write_text(json.dumps(runs, indent=1))
    table = markdown(runs)
    (args.out / "results.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
