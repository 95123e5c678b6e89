"""Binding from separate corpora: audio->image retrieval of recipes/trimodal_bind.yaml, several seeds.

    .venv/bin/python -m data_tools.make_demo_corpora --out data/demo/corpora     # once
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/trimodal_binding.py --seeds 0 1 2

Trains the recipe once per seed (the seed sets the initialisation, the source choice and the data order): an
image-text corpus and an audio-text corpus, disjoint samples, no (audio, image) pair ever in the loss. The
recipe's evaluation runs every `eval.every` steps on the tri-modal val set; this writes every run's metrics to
OUT/results.json and a Markdown table (mean ± sample sd over seeds, chance beside it) to OUT/results.md.
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

RECIPE = "recipes/trimodal_bind.yaml"
TASK = "retrieval/val_audio_image"
REPORTED = (
    f"{TASK}/audio_to_image_R@1", f"{TASK}/audio_to_image_R@5", f"{TASK}/image_to_audio_R@1",
    f"{TASK}/image_to_audio_R@5", f"{TASK}/audio_to_image_label_R@1", f"{TASK}/image_to_audio_label_R@1",
    "retrieval/val_image_text/image_to_text_R@1", "retrieval/val_audio_text/audio_to_text_R@1",
    "zeroshot/audio_val/top1", "zeroshot/image_val/top1",
)


def run_one(seed: int, out: Path, overrides: list[str]) -> dict[str, object]:
    from mmembed.recipe import load_recipe
    from mmembed.train import Trainer

    run_dir = out / f"seed{seed}"
    start = time.perf_counter()
    config = load_recipe(RECIPE, [f"seed={seed}", f"output_dir={run_dir}", "train.save_every=0", *overrides])
    Trainer(config, overwrite=True).fit()  # a re-run replaces its own runs
    seconds = time.perf_counter() - start
    return {"seed": seed, "seconds": seconds, "eval": evaluations(run_dir)}


def label_chance(counts: list[int]) -> float:
    """P(a random candidate carries the query's label), averaged over queries: sum of n_l^2 / N^2."""
    total = sum(counts)
    return sum(n * n for n in counts) / (total * total)


def chance(corpora: dict[str, object]) -> dict[str, str]:
    """R@k = k/N for the exact partner; label R@1 from the val set's label counts; zero-shot 1/classes."""
    counts = corpora["val_label_counts"]
    samples, classes = sum(counts["cls_scene"]), len(counts["cls_all"])
    scene = label_chance(counts["cls_scene"])
    return {f"{TASK}/audio_to_image_R@1": f"{1 / samples:.4f}", f"{TASK}/audio_to_image_R@5": f"{5 / samples:.4f}",
            f"{TASK}/image_to_audio_R@1": f"{1 / samples:.4f}", f"{TASK}/image_to_audio_R@5": f"{5 / samples:.4f}",
            f"{TASK}/audio_to_image_label_R@1": f"{scene:.4f}",
            f"{TASK}/image_to_audio_label_R@1": f"{scene:.4f}",
            "retrieval/val_image_text/image_to_text_R@1": f"{1 / samples:.4f}",
            "retrieval/val_audio_text/audio_to_text_R@1": f"{1 / samples:.4f}",
            "zeroshot/audio_val/top1": f"{1 / classes:.4f}", "zeroshot/image_val/top1": f"{1 / classes:.4f}"}


def _cell(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def markdown(runs: list[dict[str, object]], corpora: dict[str, object]) -> str:
    steps = sorted({s for r in runs for s in r["eval"]})
    lines = ["| metric | " + " | ".join(f"step {s}" for s in steps) + " | chance |",
             "|---|" + "---|" * (len(steps) + 1)]
    base = chance(corpora)
    for metric in REPORTED:
        cells = [_cell([r["eval"][s][metric] for r in runs]) for s in steps]
        lines.append(f"| {metric} | " + " | ".join(cells) + f" | {base[metric]} |")
    lines.append("")
    lines += [f"- seed {r['seed']}: audio->image R@1 {r['eval'][steps[-1]][REPORTED[0]]:.3f}, "
              f"R@5 {r['eval'][steps[-1]][REPORTED[1]]:.3f} ({r['seconds']:.0f} s)" for r in runs]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_trimodal_binding"))
    parser.add_argument("--corpora", type=Path, default=Path("data/demo/corpora"),
                        help="the corpora the recipe reads (their corpora.json gives the chance levels)")
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. train.steps=150")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = [run_one(seed, args.out, args.overrides) for seed in args.seeds]
    (args.out / "results.json").write_text(json.dumps(runs, indent=2) + "\n")
    table = markdown(runs, json.loads((args.corpora / "corpora.json").read_text()))
    (args.out / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
