"""Training checkpoints: atomic, resumable, and loadable without unpickling arbitrary objects.

    <run>/checkpoints/step_000100/
        model/{model.safetensors,config.yaml}   the model (what eval/export load)
        objective.safetensors                   loss state: iSogCLR tables, TempNet weights
        optimizer.pt, scheduler.pt, scaler.pt   plain tensor/number containers, loaded weights_only=True
        rank{r}.pt                              each rank's RNG states and data-stream position
        trainer.json                            step and bookkeeping
    <run>/checkpoints/LATEST                    name of the newest complete checkpoint

A checkpoint is written into a hidden temporary folder and renamed when complete, so a killed run never
leaves a half-written checkpoint behind that `--resume latest` could pick up.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mmembed.checkpoint import atomic_write_text, save_model_dir, state_to_safetensors

STEP_DIR = re.compile(r"^step_(\d{8})$")


@dataclass
class ResumeState:
    step: int
    data_consumed: dict[int, int] = field(default_factory=dict)
    # The DataLoader restarts its worker rotation at 0; this restores the exact batch order on resume.
    next_worker: int = 0


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


class CheckpointManager:
    def __init__(self, run_dir: Path, accelerator: Any, keep_last: int) -> None:
        self.root = Path(run_dir) / "checkpoints"
        self.accelerator = accelerator
        self.keep_last = keep_last

    def _barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def save(self, step: int, model: Any, config: Any, objective: Any, optimizer: Any, scheduler: Any,
             data: ResumeState) -> Path:
        name = f"step_{step:08d}"
        final, tmp = self.root / name, self.root / f".{name}.tmp"
        acc = self.accelerator
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self._barrier()
        torch.save({"rng": rng_state(), "data_consumed": {str(k): v for k, v in data.data_consumed.items()},
                    "next_worker": data.next_worker}, tmp / f"rank{acc.process_index}.pt")
        if acc.is_main_process:
            save_model_dir(tmp / "model", acc.unwrap_model(model), config)
            save_file(state_to_safetensors(objective), str(tmp / "objective.safetensors"))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            if acc.scaler is not None:
                torch.save(acc.scaler.state_dict(), tmp / "scaler.pt")
            (tmp / "trainer.json").write_text(json.dumps({"step": step, "world_size": acc.num_processes}))
        self._barrier()
        if acc.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            atomic_write_text(self.root / "LATEST", name)
            self._prune()
        self._barrier()
        return final

    def _prune(self) -> None:
        steps = sorted(p for p in self.root.iterdir() if STEP_DIR.match(p.name))
        for old in steps[: max(0, len(steps) - self.keep_last)]:
            shutil.rmtree(old, ignore_errors=True)

    def resolve(self, resume: str) -> Path | None:
        """`latest` -> newest complete checkpoint (None if there is none yet), else an explicit path."""
        if resume != "latest":
            path = Path(resume)
            if not (path / "trainer.json").is_file():
                raise FileNotFoundError(f"{path} is not a complete training checkpoint (no trainer.json)")
            return path
        latest = self.root / "LATEST"
        return self.root / latest.read_text().strip() if latest.is_file() else None

    def load(self, path: Path, model: Any, objective: Any, optimizer: Any, scheduler: Any) -> ResumeState:
        acc = self.accelerator
        meta = json.loads((path / "trainer.json").read_text())
        if meta["world_size"] != acc.num_processes:
            raise RuntimeError(f"checkpoint {path} was written by {meta['world_size']} processes; exact "
                               f"resume of the data stream needs the same number, got {acc.num_processes}")
        acc.unwrap_model(model).load_state_dict(load_file(str(path / "model" / "model.safetensors")))
        objective.load_state_dict(load_file(str(path / "objective.safetensors")))
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        if acc.scaler is not None and (path / "scaler.pt").is_file():
            acc.scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
        rank_state = torch.load(path / f"rank{acc.process_index}.pt", weights_only=True)
        set_rng_state(rank_state["rng"])
        consumed = {int(k): int(v) for k, v in rank_state["data_consumed"].items()}
        return ResumeState(int(meta["step"]), consumed, int(rank_state["next_worker"]))
