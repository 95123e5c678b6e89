"""Decisions every rank must take together, so that one rank's failure never leaves the others blocked.

Uses torch.distributed only (no accelerate), so it is importable and testable without the trainer.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from mmembed.errors import UserError


class PeerFailure(UserError, RuntimeError):
    """Another rank failed; this one stops too instead of waiting for it in a collective.

    `exit_grace_s`: after printing its own line, this rank waits that long before exiting. Launchers
    (torchrun, accelerate) stop every rank as soon as one exits; were a peer to exit first, the failing
    rank could be stopped before it prints the error that says what actually went wrong.
    """

    exit_grace_s = 5.0


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
