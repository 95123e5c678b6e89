"""The trainer's view of several data sources: stream positions for exact resume, per-source and per-pair
throughput and loss for the logs, and how gradients are synchronised (docs/design.md, "Multi-source
training"). A run with one source keeps the single-stream bookkeeping in the trainer and uses none of this.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from mmembed.config import ExperimentConfig
from mmembed.config.sources import SourcePlan, check_sources, trains_every_pair_everywhere
from mmembed.errors import UserError
from mmembed.model import pair_key
from mmembed.train.batching import batch_size_of

log = logging.getLogger("mmembed.train")


class SourceBook:
    """Positions, counts and losses per source for a run with several `data.train` sources."""

    def __init__(self, config: ExperimentConfig, world_size: int) -> None:
        self.plans: list[SourcePlan] = check_sources(config)
        self.names = [plan.name for plan in self.plans]
        self.pair_keys = [pair_key(p.a, p.b) for p in config.model.pairs]
        self.world_size = world_size
        # Steps from a source that lacks a modality (or a pair) leave parameters without gradient; DDP's reducer
        # cannot express that, so such runs average gradients themselves after backward.
        self.manual_sync = not trains_every_pair_everywhere(self.plans, config)
        self.consumed: dict[str, dict[int, int]] = {name: {} for name in self.names}
        self.skipped: dict[str, dict[int, int]] = {name: {} for name in self.names}
        self.next_batch = 0
        self._device = torch.device("cpu")
        self._reset_window()

    @property
    def source_pairs(self) -> list[tuple[int, ...]]:
        return [plan.pairs for plan in self.plans]

    # -- positions (exact resume) ----------------------------------------------------------------------
    def restore(self, sources: dict[str, dict[int, int]] | None, next_batch: int, step: int) -> None:
        """Positions from a checkpoint; refuses one whose streams are not this run's sources."""
        if sources is None:
            if step == 0:
                return
            raise UserError(f"the checkpoint at step {step} holds one data stream, and this run reads "
                            f"{len(self.names)} sources ({', '.join(self.names)}); its data position cannot be "
                            "carried over: resume with the recipe's original data.train, or start a new run")
        if sorted(sources) != sorted(self.names):
            raise UserError(f"the checkpoint at step {step} was written for data sources {sorted(sources)}, this "
                            f"run has {self.names}: an exact resume needs the same sources (same names)")
        self.consumed = {name: dict(sources[name]) for name in self.names}
        self.next_batch = next_batch

    def resume_point(self) -> dict[str, Any] | None:
        """What mmembed.data.build_train_loader takes as `resume`; None before the first batch."""
        if not self.next_batch:
            return None
        return {"sources": self.consumed, "next_batch": self.next_batch}

    def observe(self, batch: dict[str, Any]) -> int:
        """Record a batch's stream position and count its rows; returns its source index."""
        source = int(batch["__source__"])
        name, worker = self.names[source], int(batch.get("__worker__", 0))
        self.consumed[name][worker] = int(batch["__consumed__"])
        self.skipped[name][worker] = int(batch.get("__skipped__", 0))
        self.next_batch = int(batch["__batch__"]) + 1
        rows = batch_size_of(batch) * self.world_size
        self._samples[source] += rows
        self._micro[source] += 1
        for pair in self.plans[source].pairs:
            self._pair_samples[pair] += rows
        return source

    @property
    def total_skipped(self) -> int:
        return sum(n for counts in self.skipped.values() for n in counts.values())

    # -- per-source loss and throughput --------------------------------------------------------------
    def add_step(self, sources: list[int], pair_losses: dict[int, torch.Tensor]) -> None:
        """A step's per-source loss: the weighted losses of the pairs each of its sources trains."""
        for pair, value in pair_losses.items():
            self._pair_losses[pair].append(value.float())
        for source in sorted(set(sources)):
            values = [pair_losses[p] for p in self.plans[source].pairs if p in pair_losses]
            if values:  # kept on the device: no synchronisation per step
                self._losses[source].append(torch.stack(values).sum().float())

    def metrics(self, reduce_mean: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        """source/<name>/{samples_per_s,batch_share,loss,skipped} and pair/<key>/{samples_per_s,loss} over the
        window since the last call; the losses are averaged over ranks (every rank must call this)."""
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        nan = torch.full((), float("nan"), device=self._device)
        windows = [*self._losses, *self._pair_losses]
        means = torch.stack([torch.stack(v).mean().to(self._device) if v else nan for v in windows])
        means = reduce_mean(means).detach().float().cpu()  # NaN (nothing in the window) stays NaN
        pair_means = means[len(self._losses):]
        micro_total = max(sum(self._micro), 1)
        values: dict[str, float] = {}
        for i, name in enumerate(self.names):
            values[f"source/{name}/samples_per_s"] = self._samples[i] / elapsed
            values[f"source/{name}/batch_share"] = self._micro[i] / micro_total
            values[f"source/{name}/loss"] = float(means[i])
            values[f"source/{name}/skipped"] = float(sum(self.skipped[name].values()))
        for i, key in enumerate(self.pair_keys):  # weighted loss; pairs sharing a key (aliases) add up
            values[f"pair/{key}/samples_per_s"] = self._pair_samples[i] / elapsed
            values[f"pair/{key}/loss"] = values.get(f"pair/{key}/loss", 0.0) + float(pair_means[i])
        self._reset_window()
        return values

    def log_lines(self, step: int, values: dict[str, float]) -> list[str]:
        """One line per source: weight, share of the window's micro-batches, samples/s, loss, skips."""
        lines = []
        for plan in self.plans:
            at = f"source/{plan.name}"
            lines.append(f"step {step} source {plan.name} [{','.join(plan.modalities)}] weight {plan.weight:g}: "
                         f"{values[f'{at}/batch_share']:.0%} of micro-batches, "
                         f"{values[f'{at}/samples_per_s']:.1f} samples/s, loss {values[f'{at}/loss']:.4f}, "
                         f"{values[f'{at}/skipped']:.0f} skipped")
        return lines

    def describe(self, world_size: int, sharded: bool = False) -> str:
        """The start-up line: each source with its modalities, pairs and weight, and the gradient sync."""
        parts = [f"'{p.name}' [{', '.join(p.modalities)}] trains "
                 f"{', '.join(self.pair_keys[i] for i in p.pairs)} (weight {p.weight:g})" for p in self.plans]
        text = f"{len(self.plans)} data sources, one per micro-batch: " + "; ".join(parts)
        if self.manual_sync and world_size > 1 and sharded:
            text += (". Some steps leave towers without gradient, identically on every rank: FSDP skips their "
                     "reduce-scatters on all ranks alike")
        elif self.manual_sync and world_size > 1:
            text += (". Some steps leave towers or logit scales without gradient, identically on every rank: "
                     "gradients are averaged across ranks after backward instead of by DDP's reducer "
                     "(find_unused_parameters is not needed)")
        return text

    def set_device(self, device: torch.device | str) -> None:
        self._device = torch.device(device)

    def _reset_window(self) -> None:
        count = len(self.plans)
        self._start = time.perf_counter()
        self._samples = [0] * count
        self._micro = [0] * count
        self._pair_samples = [0] * len(self.pair_keys)
        self._losses: list[list[torch.Tensor]] = [[] for _ in range(count)]
        self._pair_losses: list[list[torch.Tensor]] = [[] for _ in self.pair_keys]
