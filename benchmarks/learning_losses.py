"""Losses on the demo data: every method trained with the same image tower, steps, batch and seeds.

    python benchmarks/learning.py losses                  # docs/results.md, section "Losses"
    python benchmarks/learning.py losses --smoke          # a few steps on tiny data: checks that it runs

Image-text only (the audio pair would double the cost and is the same for every loss). The image tower,
optimiser, schedule, steps and batch are recipes/demo.yaml's; only the pair loss and, where the method
needs it, the text tower change:

| method | text tower | loss |
|---|---|---|
| infonce | trained from scratch (tiny open_clip text transformer) | InfoNCE (CLIP) |
| siglip | trained from scratch | SigLIP |
| isogclr | trained from scratch | iSogCLR (per-sample learned temperatures) |
| tempnet | trained from scratch | TempNet (temperatures predicted by a network) |
| lit | frozen MiniLM, cached (the demo's setting) | InfoNCE |
| cwcl | frozen MiniLM, cached | CWCL, anchor = text |

Every loss keeps its library defaults (docs/losses.md); nothing is tuned per method. Data variants:
`clean` (the demo's scatter split), `noisy` (the same data with 20 % of the training captions replaced by
another sample's: `make_demo_data --caption-noise 0.2`, the same images) and `block` (the harder block split).
Runs are interleaved (seed, then variant, then method) so load on the shared machine hits all methods alike.
"""

from __future__ import annotations

import argparse
import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.learning_common import (
    DataVariant,
    RunResult,
    SharedCaches,
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

# A text transformer trained from scratch, for the methods that need a trainable text tower.
SCRATCH_TEXT = {"tower": {"type": "open_clip_text", "args": {
    "text_cfg": {"context_length": 24, "width": 128, "heads": 4, "layers": 2}, "embed_dim": 128}},
    "head": {"type": "linear"}}
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "infonce": ("scratch", {"loss": "infonce"}),
    "siglip": ("scratch", {"loss": "siglip"}),
    "isogclr": ("scratch", {"loss": "isogclr"}),
    "tempnet": ("scratch", {"loss": "tempnet"}),
    "lit": ("frozen MiniLM", {"loss": "infonce"}),
    "cwcl": ("frozen MiniLM", {"loss": "cwcl", "args": {"anchor": "text"}}),
}
VARIANTS = {"clean": DataVariant("demo_scatter"), "noisy": DataVariant("demo_scatter_noisy20", caption_noise=0.2),
            "block": DataVariant("demo_block", split="block")}
ZERO_SHOT = {"image_heldout": "held-out top-1", "image_all": "generalised top-1"}
RETRIEVAL = {"image_to_text_R@5": "image→text R@5", "text_to_image_R@5": "text→image R@5"}


@dataclass
class Settings:
    seeds: list[int]
    steps: int
    batch_size: int
    variants: list[str]
    methods: list[str]
    data: dict[str, DataVariant]
    block_methods: list[str]
    smoke: bool = False

    def cell_methods(self, variant: str) -> list[str]:
        """The methods run on `variant`; a smoke run tries every method once and every variant once."""
        if self.smoke:
            return self.methods if variant == self.variants[0] else self.methods[:1]
        return [m for m in self.methods if variant != "block" or m in self.block_methods]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--block-methods", nargs="+", choices=list(METHODS), default=["infonce", "lit", "cwcl"],
                        help="methods also run on the block split (a second task, not every cell: time)")
    parser.add_argument("--steps", type=int, default=150,
                        help="steps per run (recipes/demo.yaml trains 700; 150 keeps ~45 runs near 30 min)")


def settings(args: argparse.Namespace) -> Settings:
    if args.smoke:
        tiny = {k: DataVariant(v.name + "_smoke", v.split, v.caption_noise, 64, 32) for k, v in VARIANTS.items()}
        return Settings(args.seeds[:1], 2, 16, args.variants, args.methods, tiny, args.block_methods, smoke=True)
    return Settings(args.seeds, args.steps, demo_tree()["data"]["batch_size"], args.variants, args.methods,
                    VARIANTS, args.block_methods)


def method_tree(method: str, data_dir: Path, st: Settings) -> Tree:
    """recipes/demo.yaml, image-text only, on `data_dir`, with `method`'s text tower and loss."""
    tree = on_data(image_text_only(demo_tree()), data_dir)
    text_tower, pair = METHODS[method]
    if text_tower == "scratch":
        tree["model"]["modalities"]["text"] = copy.deepcopy(SCRATCH_TEXT)
    pair = copy.deepcopy(pair)
    if pair["loss"] in ("isogclr", "tempnet"):
        num_samples = json.loads((data_dir / "info.json").read_text())["splits"]["train"]["num_samples"]
        pair["args"] = {"num_samples": num_samples}
        if pair["loss"] == "tempnet":
            pair["args"]["embed_dim"] = tree["model"]["embed_dim"]
    tree["model"]["pairs"] = [{"a": "image", "b": "text", "weight": 1.0, **pair}]
    tree["train"]["steps"] = st.steps
    tree["data"]["batch_size"] = st.batch_size
    tree["optim"]["warmup_steps"] = min(tree["optim"]["warmup_steps"], max(1, st.steps // 5))
    return tree


def run(args: argparse.Namespace) -> dict[str, Any]:
    st = settings(args)
    data_root, out = args.out / "data", args.out / "losses"
    dirs = {v: ensure_data(st.data[v], data_root) for v in st.variants}
    caches = SharedCaches()
    runs: list[dict[str, Any]] = []
    start_machine = machine_line()
    for seed in st.seeds:
        for variant in st.variants:
            for method in st.cell_methods(variant):
                result = train_run(method_tree(method, dirs[variant], st), out / "runs" / f"{variant}_{method}_s{seed}",
                                   seed, caches, reuse=args.reuse)
                runs.append({"variant": variant, "method": method, **vars(result)})
                print(f"[losses] {variant} {method} seed {seed}: {_headline(result)}", flush=True)
    report = {"settings": {"seeds": st.seeds, "steps": st.steps, "batch_size": st.batch_size,
                           "data": {v: st.data[v].settings() for v in st.variants}},
              "machine_start": start_machine, "machine_end": machine_line(), "runs": runs,
              "chance": {v: chance(dirs[v]) for v in st.variants}}
    save_json(out / "results.json", report)
    text = tables(report)
    (out / "results.md").write_text(text)
    print(text)
    return report


def _headline(result: RunResult) -> str:
    m = result.metrics
    return (f"held-out {m.get('zeroshot/image_heldout/top1', float('nan')):.3f}, "
            f"generalised {m.get('zeroshot/image_all/top1', float('nan')):.3f}, "
            f"{result.step_seconds:.3f} s/step, {result.seconds:.0f} s")


def chance(data_dir: Path) -> dict[str, float]:
    """Top-1 chance of both zero-shot tasks and R@5 chance of retrieval on this variant's val set."""
    info = json.loads((data_dir / "info.json").read_text())
    held = len(info["held_out"])
    every = len((data_dir / "classnames_all.txt").read_text().splitlines())
    return {"image_heldout": 1 / held, "image_all": 1 / every, "R@5": 5 / info["splits"]["val"]["num_samples"]}


def tables(report: dict[str, Any]) -> str:
    """One Markdown table per data variant: mean ± sd over seeds per method, chance in the header."""
    parts = []
    for variant, odds in report["chance"].items():
        header = ["method", "text tower",
                  *(f"{label} (chance {odds[name]:.3f})" for name, label in ZERO_SHOT.items()),
                  *(f"{label} (chance {odds['R@5']:.3f})" for label in RETRIEVAL.values()), "s / step"]
        rows = []
        for method in dict.fromkeys(r["method"] for r in report["runs"]):
            mine = [r for r in report["runs"] if r["variant"] == variant and r["method"] == method]
            if not mine:
                continue
            cells = [cell([r["metrics"][f"zeroshot/{name}/top1"] for r in mine]) for name in ZERO_SHOT]
            cells += [cell([r["metrics"][f"retrieval/val_image_text/{name}"] for r in mine]) for name in RETRIEVAL]
            rows.append([method, METHODS[method][0], *cells, cell([r["step_seconds"] for r in mine], 3)])
        seeds = sorted({r["seed"] for r in report["runs"]})
        parts.append(f"### {variant} (seeds {', '.join(map(str, seeds))}; mean ± sd)\n\n"
                     + markdown_table(header, rows))
    return "\n\n".join(parts) + "\n"
