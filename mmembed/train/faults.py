"""What the trainer does when something goes wrong mid-run: every rank stops together, and a skipped step
names the samples that were in it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mmembed.errors import UserError
from mmembed.train.step import StepOutput

log = logging.getLogger("mmembed.train")
# Keys shown in the log line; the full list goes to <run>/nonfinite_batches/rank<r>.jsonl.
KEYS_SHOWN = 8


class NonFiniteLoss(UserError, RuntimeError):
    """The loss was NaN/inf and train.on_nonfinite is "abort"."""


def report_nonfinite(step: int, output: StepOutput, keys: list[str], run_dir: Path, rank: int,
                     abort: bool) -> None:
    """Name the step's samples (this rank's) in the log and in a per-rank JSONL file; raise when aborting."""
    terms = ", ".join(f"{k}={v.item():.4g}" for k, v in output.terms.items())
    shown = ", ".join(keys[:KEYS_SHOWN]) + (f" and {len(keys) - KEYS_SHOWN} more" if len(keys) > KEYS_SHOWN else "")
    record = run_dir / "nonfinite_batches" / f"rank{rank}.jsonl"
    record.parent.mkdir(parents=True, exist_ok=True)
    with record.open("a") as f:
        f.write(json.dumps({"step": step, "loss": str(output.loss.item()), "keys": keys}) + "\n")
    message = (f"non-finite loss {output.loss.item()} at step {step} (terms: {terms}); rank {rank}'s batch held "
               f"{len(keys)} samples: {shown or 'no keys'} (all keys in {record})")
    if abort:
        raise NonFiniteLoss(message)
    log.warning("%s; skipping the update", message)
