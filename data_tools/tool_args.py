"""The command-line options the data tools share, declared once: how a tool's parser is made, where its
shards go, and the speech generators' synthesis options."""

from __future__ import annotations

import argparse
from pathlib import Path


def tool_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """A parser whose usage names the `python -m data_tools.<module>` command and whose help keeps the
    module docstring's layout."""
    return argparse.ArgumentParser(prog=f"python -m data_tools.{module}", description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_shard_output(parser: argparse.ArgumentParser, *, default_out: Path | None, samples_per_shard: int,
                     out_help: str = "output directory") -> None:
    """--out (required when there is no default) and --samples-per-shard."""
    if default_out is None:
        parser.add_argument("--out", type=Path, required=True, help=out_help)
    else:
        parser.add_argument("--out", type=Path, default=default_out, help=out_help)
    parser.add_argument("--samples-per-shard", type=int, default=samples_per_shard)


def add_speech_synthesis(parser: argparse.ArgumentParser) -> None:
    """The espeak-ng generators' options: sample rate, seed, and how many synthesis processes run at once."""
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="concurrent espeak-ng processes")
