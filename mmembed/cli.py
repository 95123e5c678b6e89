"""`mmembed` command line: one subcommand per job; recipes carry the experiment settings, not flags."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    def register(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = fn
        return fn

    return register


@command("train")
def _train(args: argparse.Namespace) -> int:
    from mmembed.recipe import load_recipe
    from mmembed.train import Trainer

    config = load_recipe(args.recipe, args.overrides)
    result = Trainer(config, resume=args.resume, overwrite=args.overwrite).fit()
    print(f"finished at step {result.step}; checkpoint and logs in {result.run_dir}")
    return 0


@command("consolidate")
def _consolidate(args: argparse.Namespace) -> int:
    from mmembed.train.consolidate import consolidate

    out = consolidate(Path(args.checkpoint), Path(args.out) if args.out else None)
    print(f"consolidated model folder: {out}")
    return 0


@command("eval")
def _eval(args: argparse.Namespace) -> int:
    from mmembed.eval import run_eval_command

    run_eval_command(
        checkpoint_dir=Path(args.checkpoint), task=args.task, data=args.data,
        classnames=Path(args.classnames) if args.classnames else None, templates=args.templates,
        modality=args.modality, pair=args.pair, plot_dir=Path(args.plot) if args.plot else None,
        batch_size=args.batch_size, label_key=args.label_key,
    )
    return 0


@command("export")
def _export(args: argparse.Namespace) -> int:
    from mmembed.export.cli import run_export

    return run_export(args)


@command("embed")
def _embed(args: argparse.Namespace) -> int:
    from mmembed.embed.cli import run_embed

    return run_embed(args)


@command("search")
def _search(args: argparse.Namespace) -> int:
    from mmembed.embed.cli import run_search

    return run_search(args)


@command("reinforce")
def _reinforce(args: argparse.Namespace) -> int:
    from mmembed.reinforce.cli import run_reinforce_command

    return run_reinforce_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmembed", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a recipe (runs under `accelerate launch` too)")
    train.add_argument("recipe", help="recipes/*.yaml")
    train.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.steps=100")
    train.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")
    train.add_argument("--overwrite", action="store_true",
                       help="start afresh in an output_dir that holds another run: deletes its checkpoints and logs")

    cons = sub.add_parser("consolidate", help="the full model folder (for eval/export) of a sharded FSDP checkpoint",
                          description="Stitch a sharded (FSDP) checkpoint's shards into a model folder "
                                      "(model.safetensors + config.yaml), which eval and export load. By default "
                                      "it goes into the checkpoint as model/, with its checksums recorded.")
    cons.add_argument("checkpoint", help="run dir (its latest checkpoint) or checkpoint dir")
    cons.add_argument("--out", help="write a standalone model folder here instead")

    ev = sub.add_parser("eval", help="zero-shot classification or retrieval of a checkpoint",
                        description="Zero-shot classification or retrieval of a checkpoint on the given shards. "
                                    "Zero-shot prompts default to OpenAI's 80 ImageNet templates ('openai'), "
                                    "not the recipe's own eval templates, so numbers can differ from the "
                                    "training log; --templates recipe uses the recipe's.")
    ev.add_argument("checkpoint", help="run dir, checkpoint dir or model dir")
    ev.add_argument("--task", choices=["zeroshot", "retrieval"], required=True)
    ev.add_argument("--data", nargs="+", required=True, help="shard urls (brace patterns allowed)")
    ev.add_argument("--classnames", help="zero-shot: file with one class name per line")
    ev.add_argument("--templates", default="openai",
                    help="zero-shot prompts (default: openai, OpenAI's 80 ImageNet templates, which are not the "
                         "recipe's own): set names (openai, simple, audio; comma-separated), 'recipe' (the "
                         "checkpoint recipe's zero-shot task for --modality), a file with one template per line, "
                         "or one '...{}...'")
    ev.add_argument("--modality", default="image", help="zero-shot: modality to classify")
    ev.add_argument("--pair", default="image,text", help="retrieval: 'a,b' (any two modalities, trained together "
                                                         "or not: an untrained pair measures binding)")
    ev.add_argument("--label-key", help="retrieval: integer sample key (e.g. cls_scene) whose equal values also "
                                        "count as matches: adds label_R@k")
    ev.add_argument("--plot", help="folder for PNG plots")
    ev.add_argument("--batch-size", type=int, default=128)

    from mmembed.embed.cli import add_embed_parsers
    from mmembed.export.cli import add_export_parser

    add_export_parser(sub)
    add_embed_parsers(sub)

    from mmembed.reinforce.cli import add_reinforce_parser

    add_reinforce_parser(sub)
    _add_debug_flags(parser, sub)
    return parser


DEBUG_ENV = "MMEMBED_DEBUG"


def _add_debug_flags(parser: argparse.ArgumentParser, sub: argparse._SubParsersAction) -> None:
    """`--debug` before or after the subcommand; the subcommand's copy must not reset the top-level value."""
    text = f"show the traceback of user errors too (or set {DEBUG_ENV}=1)"
    parser.add_argument("--debug", action="store_true", help=text)
    for subparser in sub.choices.values():
        subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=text)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand. A UserError becomes one line on stderr and exit code 2; bugs keep their traceback."""
    from mmembed.errors import UserError, one_line

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except UserError as err:
        if args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        # One write per line: ranks share the launcher's stderr, and print's separate newline let another
        # rank's line land in between.
        sys.stderr.write(f"mmembed {args.command}: error: {one_line(err)}\n")
        sys.stderr.flush()
        # A rank stopped by another rank's failure lets that rank print first (collective.PeerFailure).
        time.sleep(err.exit_grace_s)
        return 2


if __name__ == "__main__":
    sys.exit(main())
