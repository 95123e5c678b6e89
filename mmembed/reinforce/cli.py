"""`mmembed reinforce RECIPE [overrides]` (build, resumable) and `mmembed reinforce --verify DIR`."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("mmembed.reinforce")


def add_reinforce_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "reinforce", help="build a reinforced dataset from plain shards (resumable; runs under accelerate launch)",
        description="Build: `mmembed reinforce recipes/reinforce_demo.yaml [key=value ...]`; re-running the same "
                    "command resumes a killed build. Verify: `mmembed reinforce --verify DIR`.")
    parser.add_argument("recipe", nargs="?", help="recipes/reinforce_*.yaml")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. storage=int8")
    parser.add_argument("--verify", metavar="DIR", help="check a finished reinforced dataset instead of building")
    parser.add_argument("--replay", type=int, default=2,
                        help="--verify: random samples whose stored augmentations are replayed through the teachers")
    parser.add_argument("--detect", type=float, metavar="FRACTION",
                        help="--verify: replay as many random samples as needed to catch a corrupted fraction "
                             ">= FRACTION of the samples (e.g. 0.01) with probability >= --confidence")
    parser.add_argument("--confidence", type=float, default=0.99, help="--verify --detect: detection probability")
    parser.add_argument("--seed", type=int, help="--verify: seed of the random replay subset (default: fresh, printed)")
    parser.add_argument("--device", default="cpu", help="--verify: device for the replay check")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_reinforce_command(args: argparse.Namespace) -> int:
    if args.verify:
        from mmembed.reinforce.verify import verify_dataset

        replay = None if args.detect is not None else args.replay
        report = verify_dataset(args.verify, replay=replay, device=args.device, detect=args.detect or 0.01,
                                confidence=args.confidence, seed=args.seed)
        print(report.summary())
        return 0 if report.ok else 1
    if not args.recipe:
        raise SystemExit("mmembed reinforce: give a RECIPE to build, or --verify DIR")
    from mmembed.config.load import load_structured
    from mmembed.config.reinforce import ReinforceConfig
    from mmembed.reinforce.builder import run_reinforce

    cfg = load_structured(ReinforceConfig, args.recipe, args.overrides)
    complete = run_reinforce(cfg, progress=not args.no_progress)
    if complete:
        print(f"reinforced dataset complete: {cfg.output_dir} (manifest.json written)")
    else:
        print(f"this rank's shards are done; {cfg.output_dir}/manifest.json is written when every rank has finished")
    return 0
