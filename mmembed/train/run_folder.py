"""Guarding a run folder: a fresh run never mixes its checkpoints and logs with another run's.

Before this guard, a new run in a folder holding an older run's (higher-numbered) checkpoints had its own
checkpoints deleted by retention. A folder "holds a run" when it has a checkpoint or LATEST, a non-empty
metrics.jsonl, or final_metrics.json; a run that died before logging anything leaves none of these, so
re-running the same command after fixing a typo just works.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mmembed.errors import RunFolderError, UserError
from mmembed.train.resume_select import LATEST, step_dirs

# What a training run writes into its folder; --overwrite deletes exactly these, nothing else.
RUN_ARTIFACTS = ("checkpoints", "metrics.jsonl", "final_metrics.json", "tensorboard", "sample_ids",
                 "nonfinite_batches", "config.yaml")


def previous_run(run_dir: Path) -> str | None:
    """What shows that `run_dir` holds a run (for the error message), or None when it does not."""
    checkpoints = run_dir / "checkpoints"
    found = [p.name for p in step_dirs(checkpoints)]
    if found:
        return f"checkpoints {found[0]}..{found[-1]}" if len(found) > 1 else f"checkpoint {found[0]}"
    if (checkpoints / LATEST).is_file():
        return f"{checkpoints / LATEST}"
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        return "a metrics.jsonl with logged steps"
    if (run_dir / "final_metrics.json").is_file():
        return "final_metrics.json"
    return None


def check_run_folder(run_dir: Path, resume: str | None, overwrite: bool) -> bool:
    """Refuse a fresh run into a folder that holds another run; True when the folder must be cleared first."""
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other: resume continues the run in the "
                        "folder, overwrite deletes it; pass one of them")
    found = previous_run(run_dir)
    if found is None or resume:
        return False
    if overwrite:
        return True
    raise RunFolderError(f"output_dir {run_dir} already holds a run ({found}); pass --resume latest to continue "
                         "it, set another output_dir (e.g. output_dir=runs/new), or pass --overwrite to delete "
                         "its checkpoints and logs")


def clear_run_folder(run_dir: Path) -> None:
    """Delete what a previous run wrote (RUN_ARTIFACTS), leaving any other file in the folder alone."""
    for name in RUN_ARTIFACTS:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
