"""What the trainer does when something goes wrong mid-run: every rank stops together, and a skipped step
names the samples that were in it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.distributed as dist

from mmembed.errors import UserError
from mmembed.train.step import StepOutput

log = logging.getLogger("mmembed.train")
# Keys shown in the log line; the full list goes to <run>/nonfinite_batches/rank<r>.jsonl.
KEYS_SHOWN = 8


class NonFiniteLoss(UserError, RuntimeError):
    """The loss was NaN/inf and train.on_nonfinite is "abort"."""


class PeerFailure(UserError, RuntimeError):
    """Another rank failed; this one stops too instead of waiting for it in a collective."""


def agree_on_failure(failure: BaseException | None, doing: str, device: torch.device | str = "cpu") -> None:
    """Collective over the default process group: if any rank had a `failure`, every rank raises (its own
    error, or PeerFailure naming the rank that failed). A no-op collective when no rank failed.

    Without this, a rank whose data loader raised exits while the others block in the next all-reduce until
    the process group's timeout (or forever with some launchers).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        if failure is not None:
            raise failure
        return
    rank = dist.get_rank()
    flags = torch.zeros(dist.get_world_size(), device=device)
    flags[rank] = float(failure is not None)
    dist.all_reduce(flags)
    if failure is not None:
        raise failure
    failed = [r for r, flag in enumerate(flags.tolist()) if flag]
    if failed:
        raise PeerFailure(f"rank {failed[0]} failed while {doing} (its error is in its own output); rank {rank} "
                          "stops too")


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
