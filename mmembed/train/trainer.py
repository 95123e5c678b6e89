"""The training loop. This package is the only part of mmembed that knows about accelerate."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed

from mmembed.collective import agree_on_failure
from mmembed.config import ExperimentConfig, recipe_to_yaml
from mmembed.data import build_train_loader
from mmembed.data.synthetic import build_synthetic_loader
from mmembed.device import to_device
from mmembed.errors import UserError
from mmembed.model import build_model, pair_key
from mmembed.progress import progress, progress_write
from mmembed.recipe import complete_recipe
from mmembed.train.batching import batch_size_of
from mmembed.train.checkpointing import CheckpointManager, ResumeState
from mmembed.train.faults import NonFiniteLoss, report_nonfinite
from mmembed.train.metrics_log import MetricsLog
from mmembed.train.objective import Objective
from mmembed.train.optim import build_optimizer, build_scheduler, param_groups
from mmembed.train.run_folder import check_run_folder, clear_run_folder
from mmembed.train.sharded_checkpoint import ShardedLayout
from mmembed.train.sharding import (
    ShardReport,
    accelerate_unaware_of_fsdp,
    clip_grad_norm_,
    ensure_process_group,
    memory_line,
    replicated_trainable,
    resolve_sharding,
    shard_model,
    split_sharded_groups,
)
from mmembed.train.sources import SourceBook
from mmembed.train.step import StepOutput, accumulated_step, average_gradients, plain_step
from mmembed.train.throughput import Throughput

log = logging.getLogger("mmembed.train")

__all__ = ["NonFiniteLoss", "TrainResult", "Trainer"]


@dataclass
class TrainResult:
    step: int
    run_dir: Path
    final_metrics: dict[str, float]


class Trainer:
    def __init__(self, config: ExperimentConfig, resume: str | None = None, overwrite: bool = False) -> None:
        """`resume`: 'latest' or a checkpoint folder. A fresh run (no `resume`) refuses an output_dir that
        holds another run unless `overwrite`, which deletes that run's checkpoints and logs first."""
        # Validated and with derived loss sizes filled in, however the config was made.
        self.config = config = complete_recipe(config)
        self.run_dir = Path(config.output_dir)
        tc = config.train
        self.sharded = resolve_sharding(tc.sharding) == "fsdp"
        with accelerate_unaware_of_fsdp():  # mmembed shards the model itself (docs/design.md)
            self.accelerator = Accelerator(
                # Without an accelerator, cpu=True lets torchrun-launched processes form a gloo group.
                cpu=not torch.accelerator.is_available(),
                mixed_precision=tc.precision,
                # train.find_unused_parameters is served by averaging gradients after backward (manual_sync below):
                # DDP's own option fails on the logit scales, which the objective uses outside the model's forward.
                kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
            )
        self._claim_run_folder(resume, overwrite)
        set_seed(config.seed, device_specific=True)
        # Several data sources: one per micro-batch, each training its own pairs (mmembed.train.sources).
        self.sources = (SourceBook(config, self.accelerator.num_processes)
                        if len(config.data.train) > 1 and not config.data.synthetic_image_size else None)
        self.model, self.objective = self._build_model_and_objective()
        # Steps that may leave parameters without gradient average gradients after backward (mmembed.train.step).
        # Not under FSDP: every rank takes the same source, so all skip the same towers' reduce-scatters, and the
        # trainer averages the replicated parameters after every step.
        self.manual_sync = not self.sharded and (tc.find_unused_parameters
                                                 or bool(self.sources and self.sources.manual_sync))
        self._freeze_unused_pair_scales()
        report = self._shard() if self.sharded else None
        groups = param_groups(self._named_trainable(), self._no_decay(), config.optim)
        if self.sharded:
            groups = split_sharded_groups(groups)
        optimizer = build_optimizer(groups, config.optim)
        self.scheduler = build_scheduler(optimizer, config.optim, tc.steps)
        if self.sharded:  # not prepared: accelerate would wrap the sharded model in DDP as well
            self.optimizer = optimizer
        else:
            self.model, self.optimizer = self.accelerator.prepare(self.model, optimizer)
            if tc.compile:
                self.model = torch.compile(self.model)
        log.info(memory_line([p for _, p in self._named_trainable()], self.sharded, report))
        layout = ShardedLayout({id(p): n for n, p in self._named_trainable()}) if self.sharded else None
        self.checkpoints = CheckpointManager(self.run_dir, self.accelerator, tc.keep_last, layout)
        self.state = self._maybe_resume(resume)
        self.metrics: MetricsLog | None = None  # opened by fit(): nothing is written before training starts
        self.data_consumed: dict[int, int] = dict(self.state.data_consumed)
        self.next_worker = self.state.next_worker
        self.data_skipped: dict[int, int] = {}
        # The latest evaluation's per-task results (mmembed.eval.TaskResult), for the end-of-run summary.
        self.last_eval: list[Any] = []
        self.batch_keys: list[str] = []
        self.step_lr = 0.0
        self.micro_sources: list[int] = []
        if self.sources is not None:
            self.sources.restore(self.state.sources, self.state.next_batch, self.state.step)
            self.sources.set_device(self.accelerator.device)
            log.info("%s", self.sources.describe(self.accelerator.num_processes, self.sharded))
        elif self.state.sources is not None:
            raise UserError(f"the checkpoint at step {self.state.step} was written for data sources "
                            f"{sorted(self.state.sources)}, this run reads one: an exact resume needs the same "
                            "data.train sources")

    # -- setup helpers -------------------------------------------------------------------------------
    def _claim_run_folder(self, resume: str | None, overwrite: bool) -> None:
        """Every rank checks before the main process deletes anything, so all ranks see the same folder."""
        clear = check_run_folder(self.run_dir, resume, overwrite)
        self.accelerator.wait_for_everyone()
        if clear and self.accelerator.is_main_process:
            log.warning("--overwrite: deleting the previous run's checkpoints and logs in %s", self.run_dir)
            clear_run_folder(self.run_dir)
        self.accelerator.wait_for_everyone()

    def _build_model_and_objective(self) -> tuple[Any, Objective]:
        """The same initial weights on every rank: FSDP keeps each rank's rows of them (DDP would broadcast rank
        0's), and the objective's own parameters (TempNet's nets) are outside any wrapper that would."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            model = build_model(self.config.model)
            objective = Objective(self.config.model.pairs, self.sources and self.sources.source_pairs)
        if self.config.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model, objective.to(self.accelerator.device)

    def _shard(self) -> ShardReport:
        tc, device = self.config.train, self.accelerator.device
        ensure_process_group(device)
        return shard_model(self.model, device, precision=tc.precision, reshard_after_forward=tc.reshard_after_forward,
                           compile_blocks=tc.compile)

    def _replicated_trainable(self) -> list[torch.nn.Parameter]:
        """Parameters whose gradients no wrapper averages: the objective's, and under FSDP the logit scales."""
        own = [p for p in self.objective.parameters() if p.requires_grad]
        return own + (replicated_trainable(self.model.parameters()) if self.sharded else [])

    def _clip_gradients(self, max_norm: float) -> None:
        params = [p for _, p in self._named_trainable()]
        if self.sharded:
            clip_grad_norm_(params, max_norm)
        else:
            self.accelerator.clip_grad_norm_(params, max_norm)

    def _named_trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [*self.model.named_parameters(), *(
            (f"objective.{n}", p) for n, p in self.objective.named_parameters())]

    def _freeze_unused_pair_scales(self) -> None:
        for key, loss in self.objective.losses.items():
            if not loss.uses_logit_scale:
                self.model.logit_scales[key].requires_grad_(False)
                if key in self.model.logit_biases:
                    self.model.logit_biases[key].requires_grad_(False)

    def _no_decay(self) -> set[str]:
        objective_biases = {f"objective.{n}" for n, _ in self.objective.named_parameters() if n.endswith("bias")}
        return set(self.model.no_weight_decay()) | objective_biases

    @property
    def unwrapped(self) -> Any:
        return self.accelerator.unwrap_model(self.model)

    def _maybe_resume(self, resume: str | None) -> ResumeState:
        if not resume:
            return ResumeState(step=0)
        state = self.checkpoints.resume(resume, self.model, self.objective, self.optimizer, self.scheduler)
        if state is None:
            log.info("no checkpoint under %s yet: starting from scratch", self.checkpoints.root)
            return ResumeState(step=0)
        self._check_data_workers(state)
        log.info("resumed from %s at step %d", state.path, state.step)
        return state

    def _check_data_workers(self, state: ResumeState) -> None:
        """Each worker's stream position only means something for the same split of shards over workers."""
        workers = self.config.data.num_workers
        if self.config.data.synthetic_image_size or state.num_workers in (None, workers):
            return
        raise UserError(f"the checkpoint at step {state.step} was written with data.num_workers="
                        f"{state.num_workers}, this run has {workers}: the data stream is split per worker, so "
                        f"an exact resume needs data.num_workers={state.num_workers} (or start a new run)")

    def _loader(self) -> Iterator[dict[str, Any]]:
        acc, data = self.accelerator, self.config.data
        preprocessors = self.unwrapped.preprocessors(True)
        if data.synthetic_image_size:
            return iter(build_synthetic_loader(preprocessors, batch_size=data.batch_size,
                                               image_size=data.synthetic_image_size, num_workers=data.num_workers))
        resume = {"consumed": self.data_consumed, "next_worker": self.next_worker} if self.data_consumed else None
        if self.sources is not None:
            resume = self.sources.resume_point()
        loader = build_train_loader(
            data, preprocessors, batch_size=data.batch_size, seed=self.config.seed, rank=acc.process_index,
            world_size=acc.num_processes, resume=resume,
        )
        return iter(loader)

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        acc, tc = self.accelerator, self.config.train
        batches = self._loader()  # first: a bad shard path fails before the run folder is created
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(recipe_to_yaml(self.config))
        self.metrics = MetricsLog(self.run_dir, acc.is_main_process)
        timer = Throughput()
        bar = progress(total=tc.steps, initial=self.state.step, disable=not acc.is_main_process,
                       desc="train", unit="step")
        step = self.state.step
        try:
            while step < tc.steps:
                micro = self._next_micro_batches(batches, timer)
                output = self._train_step(micro, step)
                step += 1
                bar.update(1)
                self._after_step(step, output, timer, bar)
        finally:
            bar.close()  # before any error message, which must be the last line the user sees
        final = self._finish(step)
        return TrainResult(step=step, run_dir=self.run_dir, final_metrics=final)

    def _next_micro_batches(self, batches: Iterator[dict[str, Any]], timer: Throughput) -> list[dict]:
        micro, failure = [], None
        self.micro_sources = []
        for _ in range(self.config.train.accum_freq):
            start = time.perf_counter()
            try:
                batch = next(batches)
            except Exception as err:  # re-raised below, once every rank knows
                failure = err
                break
            timer.add_data_wait(time.perf_counter() - start)
            self._track_data_position(batch)
            self._audit_sample_ids(batch)
            micro.append(to_device(batch, self.accelerator.device))
        # A rank whose data fails must not leave the others waiting in the next collective.
        agree_on_failure(failure, "loading its next batch", self.accelerator.device)
        self.batch_keys = [key for batch in micro for key in batch.get("__key__", [])]
        timer.add_samples(sum(batch_size_of(b) for b in micro) * self.accelerator.num_processes)
        return micro

    def _track_data_position(self, batch: dict[str, Any]) -> None:
        """Remember, per loader worker, how many raw samples it consumed (and skipped as corrupt)."""
        if self.sources is not None:  # per source and worker
            self.micro_sources.append(self.sources.observe(batch))
            return
        worker = int(batch.get("__worker__", 0))
        if "__consumed__" in batch:
            self.data_consumed[worker] = int(batch["__consumed__"])
        self.data_skipped[worker] = int(batch.get("__skipped__", 0))
        self.next_worker = (worker + 1) % max(1, self.config.data.num_workers)

    def _audit_sample_ids(self, batch: dict[str, Any]) -> None:
        if not self.config.train.log_sample_ids or "index" not in batch:
            return
        folder = self.run_dir / "sample_ids"
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / f"rank{self.accelerator.process_index}.txt").open("a") as f:
            f.write(" ".join(str(int(i)) for i in batch["index"]) + "\n")

    def _train_step(self, micro: list[dict[str, Any]], step: int) -> StepOutput:
        acc, tc = self.accelerator, self.config.train
        self.model.train()
        if len(micro) == 1:
            output = plain_step(acc, self.model, self.objective, micro[0], step, manual_sync=self.manual_sync)
        else:
            output = accumulated_step(acc, self.model, self.objective, micro, step)
        average_gradients(self._replicated_trainable())
        # fp16's GradScaler already skips steps with inf/NaN gradients and lowers its scale; bypassing it
        # would freeze the scale and skip forever.
        if tc.precision == "fp16" or self._all_finite(output.loss):
            if self.config.optim.grad_clip:
                self._clip_gradients(self.config.optim.grad_clip)
            self.optimizer.step()
        else:
            self._handle_nonfinite(step, output)
        self.optimizer.zero_grad(set_to_none=True)
        if self.sources is not None:
            self.sources.add_step(self.micro_sources, output.pair_losses)
        self.step_lr = self._scheduled_lr()  # the rate this update used; scheduler.step() moves to the next
        self.scheduler.step()
        with torch.no_grad():
            self.unwrapped.clamp_logit_scales()
        return output

    def _all_finite(self, loss: torch.Tensor) -> bool:
        flag = torch.tensor([float(torch.isfinite(loss))], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() == self.accelerator.num_processes)

    def _scheduled_lr(self) -> float:
        """The schedule's base rate now (optim.lr x warmup/cosine factor), whatever the groups' multipliers."""
        for lr, base in zip(self.scheduler.get_last_lr(), self.scheduler.base_lrs):
            if base > 0:
                return self.config.optim.lr * lr / base
        return 0.0

    def _handle_nonfinite(self, step: int, output: StepOutput) -> None:
        report_nonfinite(step, output, self.batch_keys, self.run_dir, self.accelerator.process_index,
                         abort=self.config.train.on_nonfinite == "abort")
        self.metrics.log(step, {"nonfinite_skipped": 1.0})

    def _after_step(self, step: int, output: StepOutput, timer: Throughput, bar: Any) -> None:
        tc = self.config.train
        if step % tc.log_every == 0 or step == tc.steps:
            values = self._step_metrics(output, timer)
            self.metrics.log(step, values)
            if self.sources is not None and self.accelerator.is_main_process:
                for line in self.sources.log_lines(step, values):
                    log.info("%s", line)
            bar.set_postfix(loss=f"{values['loss']:.4f}", sps=f"{values['samples_per_s']:.0f}")
            timer.reset()
        if tc.save_every and step % tc.save_every == 0 and step < tc.steps:
            self._save(step)
        if self.config.eval.every and step % self.config.eval.every == 0 and step < tc.steps:
            self._evaluate(step)

    def _step_metrics(self, output: StepOutput, timer: Throughput) -> dict[str, float]:
        loss = self.accelerator.reduce(output.loss.detach().float(), "mean")
        skipped = self.sources.total_skipped if self.sources is not None else sum(self.data_skipped.values())
        values = {"loss": float(loss.item()), "lr": self.step_lr, "data_skipped": float(skipped)}
        values.update({f"loss/{k}": float(v) for k, v in output.terms.items()})
        values.update(timer.summary())
        for pair in self.config.model.pairs:
            scale = self.unwrapped.logit_scale(pair.a, pair.b).detach()
            values[f"logit_scale/{pair_key(pair.a, pair.b)}"] = float(scale)
        values.update(self.objective.metrics())
        if self.sources is not None:
            values.update(self.sources.metrics(lambda t: self.accelerator.reduce(t, "mean")))
        return values

    def _save(self, step: int, final: bool = False) -> None:
        data = ResumeState(step, self.data_consumed, self.next_worker, self.config.data.num_workers)
        if self.sources is not None:
            data.sources, data.next_batch = self.sources.consumed, self.sources.next_batch
        self.checkpoints.save(step, self.model, self.config, self.objective, self.optimizer, self.scheduler, data,
                              consolidate=final)

    def _evaluate(self, step: int) -> dict[str, float]:
        results: dict[str, float] = {}
        self.last_eval = []
        acc = self.accelerator
        # A sharded model's forward is a collective: every rank evaluates the same data, the main one reports.
        if (acc.is_main_process or self.sharded) and (self.config.eval.zeroshot or self.config.eval.retrieval):
            from mmembed.eval import format_table
            from mmembed.eval.evaluate import evaluate_tasks, merged_metrics

            # Under FSDP with bf16, blocks hold bf16 weights: autocast casts each op, as open_clip's eval does.
            with acc.autocast() if self.sharded else nullcontext():
                tasks = evaluate_tasks(self.unwrapped, self.config.eval, device=acc.device)
            results = merged_metrics(tasks)
            if acc.is_main_process:
                self.last_eval = tasks
                self.metrics.log(step, {f"eval/{k}": v for k, v in results.items()})
                progress_write(f"evaluation at step {step}:\n{format_table(results)}")
        acc.wait_for_everyone()
        return results

    def _finish(self, step: int) -> dict[str, float]:
        self._save(step, final=True)
        results = self._evaluate(step)
        if self.accelerator.is_main_process:
            import json

            clean = {k: v for k, v in results.items() if math.isfinite(v)}
            (self.run_dir / "final_metrics.json").write_text(json.dumps(clean, indent=2))
        self.metrics.close()
        if self.accelerator.is_main_process:
            from mmembed.eval.summary import write_run_report

            progress_write(write_run_report(self.run_dir, self.last_eval, title=f"{self.config.name}: {step} steps",
                                            plots=self.config.eval.plots))
        return results
