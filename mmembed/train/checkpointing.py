"""Training checkpoints: atomic, checksummed, resumable, and loadable without unpickling arbitrary objects.

    <run>/checkpoints/step_000100/
        model/{model.safetensors,config.yaml}   the model (what eval/export load)
        objective.safetensors                   loss state: iSogCLR tables, TempNet weights
        optimizer.pt, scheduler.pt, scaler.pt   plain tensor/number containers, loaded weights_only=True
        rank{r}.pt                              each rank's RNG states and data-stream position(s)
        trainer.json                            step, world size, and the size + sha256 of every other file
    <run>/checkpoints/LATEST                    name of the newest complete checkpoint

Under FSDP (train.sharding: fsdp) `model/` and `optimizer.pt` are replaced by each rank's shards
(`shards/`, mmembed.train.sharded_checkpoint); the final checkpoint also gets the stitched `model/`.

A checkpoint is written into a hidden temporary folder and renamed when complete, so a killed run never
leaves a half-written checkpoint behind that `--resume latest` could pick up. Resuming verifies every file
against `trainer.json` and refuses non-finite tensors; `--resume latest` then falls back to the newest
checkpoint that passes (mmembed.train.resume_select). Retention keeps the newest `keep_last` (0: all) and
never deletes the checkpoint LATEST names.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from mmembed.checkpoint import (
    CHECKPOINT_META,
    CONFIG_NAME,
    SHARDS_DIR,
    WEIGHTS_NAME,
    atomic_write_text,
    read_checkpoint_meta,
    save_model_dir,
    save_state_dir,
    state_to_safetensors,
)
from mmembed.config import recipe_to_yaml
from mmembed.errors import CorruptFileError, MissingFileError, UserError, one_line
from mmembed.integrity import (
    describe_files,
    list_files,
    load_safetensors_checked,
    load_torch_checked,
    share_tree,
    verify_files,
)
from mmembed.train.resume_select import LATEST, resume_candidates, step_dirs
from mmembed.train.sharded_checkpoint import ShardedLayout, consolidated_state, file_owner

log = logging.getLogger("mmembed.train")
# Version 2 adds the "files" checksum table and the data workers' count.
FORMAT_VERSION = 2


@dataclass
class ResumeState:
    step: int
    data_consumed: dict[int, int] = field(default_factory=dict)
    # The DataLoader restarts its worker rotation at 0; this restores the exact batch order on resume.
    next_worker: int = 0
    # data.num_workers of the run that wrote the positions (None: a checkpoint from before it was recorded).
    num_workers: int | None = None
    # The checkpoint folder this state came from (None for a fresh run).
    path: Path | None = None
    # Several data sources (mmembed.data.mixing): per source name, per worker, raw samples consumed, and the
    # number of the next micro-batch. None: a single-stream run.
    sources: dict[str, dict[int, int]] | None = None
    next_batch: int = 0


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": list(random.getstate()[1]),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_rest": [int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((3, tuple(state["python"]), None))
    pos, has_gauss, cached = state["numpy_rest"]
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def verify_checkpoint(path: Path, rank: int | None = None) -> dict[str, Any]:
    """Check a checkpoint folder's files against its checksums; return its metadata (CorruptFileError if not).

    `rank`: only the files that rank reads (its shards and RNG state; rank 0 also everything shared)."""
    if not (path / CHECKPOINT_META).is_file():
        raise UserError(f"{path} is not a complete training checkpoint (no {CHECKPOINT_META}); pass a "
                        "checkpoints/step_* folder or --resume latest")
    meta = read_checkpoint_meta(path)
    if "files" in meta:
        table = meta["files"]
        if rank is not None:
            table = {name: record for name, record in table.items() if file_owner(name) == rank}
        verify_files(path, table)
    else:
        log.warning("%s has no checksums (written by an older mmembed): its files cannot be verified", path)
    return meta


class CheckpointManager:
    def __init__(self, run_dir: Path, accelerator: Any, keep_last: int, sharded: ShardedLayout | None = None) -> None:
        self.root = Path(run_dir) / "checkpoints"
        self.accelerator = accelerator
        self.keep_last = keep_last
        # FSDP: every rank writes and loads its own shards of the model and optimizer (None: DDP's full copies).
        self.sharded = sharded

    def _barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    # -- writing -------------------------------------------------------------------------------------
    def save(self, step: int, model: Any, config: Any, objective: Any, optimizer: Any, scheduler: Any,
             data: ResumeState, consolidate: bool = False) -> Path:
        """Write a checkpoint atomically. `consolidate`: a sharded checkpoint also gets the full `model/`."""
        name = f"step_{step:08d}"
        final, tmp = self.root / name, self.root / f".{name}.tmp"
        acc = self.accelerator
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self._barrier()
        rank_state = {"rng": rng_state(), "data_consumed": {str(k): v for k, v in data.data_consumed.items()},
                      "next_worker": data.next_worker, "num_workers": data.num_workers}
        if data.sources is not None:  # multi-source positions (docs/design.md, "Multi-source training")
            rank_state["data_sources"] = {name: {str(w): n for w, n in counts.items()}
                                          for name, counts in data.sources.items()}
            rank_state["next_batch"] = data.next_batch
        torch.save(rank_state, tmp / f"rank{acc.process_index}.pt")
        own = [f"rank{acc.process_index}.pt"]
        if self.sharded is not None:
            own += self.sharded.write(tmp, acc.unwrap_model(model), optimizer, acc.process_index, acc.num_processes)
        if acc.is_main_process:
            if self.sharded is None:
                save_model_dir(tmp / "model", acc.unwrap_model(model), config)
                torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            else:  # the recipe next to the model's shards, for `mmembed consolidate`
                atomic_write_text(tmp / SHARDS_DIR / CONFIG_NAME, recipe_to_yaml(config))
            save_file(state_to_safetensors(objective), str(tmp / "objective.safetensors"))
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            if acc.scaler is not None:
                torch.save(acc.scaler.state_dict(), tmp / "scaler.pt")
        described = self._gather_tables(describe_files(tmp, own))  # each rank hashes its own files
        self._barrier()  # every rank's file is on disk: the table below covers them all
        if acc.is_main_process:
            if consolidate and self.sharded is not None:
                save_state_dir(tmp / "model", consolidated_state(tmp, acc.num_processes), config)
            self._commit(tmp, final, step, described)
        self._barrier()
        return final

    def _gather_tables(self, table: dict[str, Any]) -> dict[str, Any]:
        """Every rank's checksum table merged (on the main process; others get their own back)."""
        if self.accelerator.num_processes == 1:
            return table
        from accelerate.utils import gather_object

        merged: dict[str, Any] = {}
        for part in gather_object([table]):
            merged.update(part)
        return merged

    def _commit(self, tmp: Path, final: Path, step: int, described: dict[str, Any]) -> None:
        rest = list_files(tmp, exclude=[CHECKPOINT_META, *described])
        meta = {"format": FORMAT_VERSION, "step": step, "world_size": self.accelerator.num_processes,
                "files": dict(sorted({**described, **describe_files(tmp, rest)}.items()))}
        if self.sharded is not None:
            meta["layout"] = self.sharded.name
        (tmp / CHECKPOINT_META).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        share_tree(tmp)
        if final.exists():  # a resumed run re-reaching a step it had saved before it was interrupted
            log.info("replacing %s", final)
            shutil.rmtree(final)
        tmp.rename(final)
        atomic_write_text(self.root / LATEST, final.name)
        self._prune(keep=final.name)

    def _prune(self, keep: str) -> None:
        """Delete all but the newest keep_last checkpoints (0: keep all); `keep` (LATEST's) always stays."""
        if self.keep_last == 0:
            return
        steps = [p for p in step_dirs(self.root) if p.name != keep]
        for old in steps[: max(0, len(steps) - (self.keep_last - 1))]:
            shutil.rmtree(old, ignore_errors=True)

    # -- resuming ------------------------------------------------------------------------------------
    def resume(self, resume: str, model: Any, objective: Any, optimizer: Any, scheduler: Any) -> ResumeState | None:
        """Load `resume` ('latest' or a checkpoint folder) into the given objects; None: nothing to resume.

        Every rank takes the same decision: the main process verifies checksums and broadcasts its verdict,
        then all ranks load and agree that none found a damaged or non-finite file. An explicit folder that
        fails stops the run with the reason; 'latest' warns and tries the next newest checkpoint.
        """
        explicit = resume != "latest"
        candidates = [Path(resume)] if explicit else resume_candidates(self.root)
        skipped: list[str] = []
        for path in candidates:
            problem = self._agree(self._verify_own_files(path))
            state = None
            if problem is None:
                self._check_world_size(path)
                self._check_layout(path)
                state, local = self._try_load(path, model, objective, optimizer, scheduler)
                problem = self._agree(local)
            if problem is None and state is not None:
                if skipped:
                    log.warning("resumed from %s, not from the newer checkpoint(s) skipped above", path.name)
                return state
            if explicit:
                raise UserError(f"cannot resume from {path}: {problem}")
            log.warning("skipping checkpoint %s: %s", path, problem)
            skipped.append(f"{path.name} ({problem})")
        if skipped:
            raise UserError(f"no usable checkpoint under {self.root}: {'; '.join(skipped)}. Resume from an "
                            "older copy with --resume PATH, or start afresh with --overwrite")
        return None

    def _verify_own_files(self, path: Path) -> str | None:
        """Each rank checks the files it will read (its shards and RNG state; the main process the rest)."""
        try:
            verify_checkpoint(path, rank=self.accelerator.process_index)
        except UserError as err:
            return one_line(err)
        return None

    def _agree(self, problem: str | None) -> str | None:
        """The first rank's problem (in rank order) if any rank has one; the same answer on every rank."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return problem
        from accelerate.utils import broadcast_object_list, gather_object

        problems = gather_object([problem])
        first = next((p for p in problems if p is not None), None)
        shared = [first]
        broadcast_object_list(shared)
        return shared[0]

    def _check_world_size(self, path: Path) -> None:
        """Every rank reads the same (verified) metadata, so every rank raises together."""
        written = read_checkpoint_meta(path)["world_size"]
        if written != self.accelerator.num_processes:
            raise UserError(f"checkpoint {path} was written by {written} processes; exact resume of the data "
                            f"stream needs the same number, got {self.accelerator.num_processes}")

    def _check_layout(self, path: Path) -> None:
        """Sharded and full checkpoints load differently; every rank reads the same metadata and stops together."""
        layout = read_checkpoint_meta(path).get("layout")
        mine = None if self.sharded is None else self.sharded.name
        if layout != mine:
            written = "sharded (train.sharding: fsdp)" if layout else "a full copy (train.sharding: ddp)"
            this = "fsdp" if mine else "ddp"
            raise UserError(f"checkpoint {path} holds {written}, this run uses train.sharding: {this}; resume with "
                            "the sharding that wrote it (a sharded checkpoint's model can be taken out with "
                            "`mmembed consolidate`)")

    def _try_load(self, path: Path, model: Any, objective: Any, optimizer: Any,
                  scheduler: Any) -> tuple[ResumeState | None, str | None]:
        """Load into the objects; (state, None), or (None, the problem) for a damaged or non-finite file."""
        try:
            return self._load(path, model, objective, optimizer, scheduler), None
        except (CorruptFileError, MissingFileError, KeyError) as err:
            return None, one_line(err)

    def _load(self, path: Path, model: Any, objective: Any, optimizer: Any, scheduler: Any) -> ResumeState:
        acc = self.accelerator
        meta = read_checkpoint_meta(path)
        if self.sharded is not None:
            self.sharded.load(path, acc.unwrap_model(model), optimizer, acc.process_index, acc.num_processes)
        else:
            acc.unwrap_model(model).load_state_dict(load_safetensors_checked(path / "model" / WEIGHTS_NAME))
            optimizer.load_state_dict(load_torch_checked(path / "optimizer.pt"))
        objective.load_state_dict(load_safetensors_checked(path / "objective.safetensors"))
        scheduler.load_state_dict(load_torch_checked(path / "scheduler.pt"))
        if acc.scaler is not None and (path / "scaler.pt").is_file():
            acc.scaler.load_state_dict(load_torch_checked(path / "scaler.pt"))
        rank_state = load_torch_checked(path / f"rank{acc.process_index}.pt")
        set_rng_state(rank_state["rng"])
        consumed = {int(k): int(v) for k, v in rank_state["data_consumed"].items()}
        workers = rank_state.get("num_workers")
        sources = rank_state.get("data_sources")
        if sources is not None:
            sources = {str(name): {int(w): int(n) for w, n in counts.items()} for name, counts in sources.items()}
        return ResumeState(int(meta["step"]), consumed, int(rank_state["next_worker"]),
                           None if workers is None else int(workers), path, sources,
                           int(rank_state.get("next_batch", 0)))
