"""The training loop. This package is the only part of mmembed that knows about accelerate."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from tqdm.auto import tqdm

from mmembed.config import ExperimentConfig, recipe_to_yaml
from mmembed.data import build_train_loader
from mmembed.data.synthetic import build_synthetic_loader
from mmembed.model import build_model, pair_key
from mmembed.train.batching import batch_size_of, to_device
from mmembed.train.checkpointing import CheckpointManager, ResumeState
from mmembed.train.metrics_log import MetricsLog
from mmembed.train.objective import Objective
from mmembed.train.optim import build_optimizer, build_scheduler, param_groups
from mmembed.train.step import StepOutput, accumulated_step, average_gradients, plain_step
from mmembed.train.throughput import Throughput

log = logging.getLogger("mmembed.train")


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class TrainResult:
    step: int
    run_dir: Path
    final_metrics: dict[str, float]


class Trainer:
    def __init__(self, config: ExperimentConfig, resume: str | None = None) -> None:
        self.config = config
        self.run_dir = Path(config.output_dir)
        tc = config.train
        self.accelerator = Accelerator(
            # Without an accelerator, cpu=True lets torchrun-launched processes form a gloo group.
            cpu=not torch.accelerator.is_available(),
            mixed_precision=tc.precision,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=tc.find_unused_parameters)],
        )
        set_seed(config.seed, device_specific=True)
        self.model = build_model(config.model)
        if tc.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.objective = Objective(config.model.pairs).to(self.accelerator.device)
        self._freeze_unused_pair_scales()
        groups = param_groups(self._named_trainable(), self._no_decay(), config.optim)
        optimizer = build_optimizer(groups, config.optim)
        self.scheduler = build_scheduler(optimizer, config.optim, tc.steps)
        self.model, self.optimizer = self.accelerator.prepare(self.model, optimizer)
        if tc.compile:
            self.model = torch.compile(self.model)
        self.checkpoints = CheckpointManager(self.run_dir, self.accelerator, tc.keep_last)
        self.state = self._maybe_resume(resume)
        self.metrics = MetricsLog(self.run_dir, self.accelerator.is_main_process)
        self.data_consumed: dict[int, int] = dict(self.state.data_consumed)
        self.next_worker = self.state.next_worker
        self.data_skipped: dict[int, int] = {}
        # The latest evaluation's per-task results (mmembed.eval.TaskResult), for the end-of-run summary.
        self.last_eval: list[Any] = []

    # -- setup helpers -------------------------------------------------------------------------------
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
        path = self.checkpoints.resolve(resume) if resume else None
        if path is None:
            if resume:
                log.info("no checkpoint under %s yet: starting from scratch", self.checkpoints.root)
            return ResumeState(step=0)
        state = self.checkpoints.load(path, self.model, self.objective, self.optimizer, self.scheduler)
        log.info("resumed from %s at step %d", path, state.step)
        return state

    def _loader(self) -> Iterator[dict[str, Any]]:
        acc, data = self.accelerator, self.config.data
        preprocessors = self.unwrapped.preprocessors(True)
        if data.synthetic_image_size:
            return iter(build_synthetic_loader(preprocessors, batch_size=data.batch_size,
                                               image_size=data.synthetic_image_size, num_workers=data.num_workers))
        resume = {"consumed": self.data_consumed, "next_worker": self.next_worker} if self.data_consumed else None
        loader = build_train_loader(
            data, preprocessors, batch_size=data.batch_size, seed=self.config.seed, rank=acc.process_index,
            world_size=acc.num_processes, resume=resume,
        )
        return iter(loader)

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        acc, tc = self.accelerator, self.config.train
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(recipe_to_yaml(self.config))
        batches = self._loader()
        timer = Throughput()
        bar = tqdm(total=tc.steps, initial=self.state.step, disable=not acc.is_main_process,
                   desc="train", unit="step", dynamic_ncols=True)
        step = self.state.step
        while step < tc.steps:
            micro = self._next_micro_batches(batches, timer)
            output = self._train_step(micro, step)
            step += 1
            bar.update(1)
            self._after_step(step, output, timer, bar)
        bar.close()
        final = self._finish(step)
        return TrainResult(step=step, run_dir=self.run_dir, final_metrics=final)

    def _next_micro_batches(self, batches: Iterator[dict[str, Any]], timer: Throughput) -> list[dict]:
        micro = []
        for _ in range(self.config.train.accum_freq):
            start = time.perf_counter()
            batch = next(batches)
            timer.add_data_wait(time.perf_counter() - start)
            self._track_data_position(batch)
            self._audit_sample_ids(batch)
            micro.append(to_device(batch, self.accelerator.device))
        timer.add_samples(sum(batch_size_of(b) for b in micro) * self.accelerator.num_processes)
        return micro

    def _track_data_position(self, batch: dict[str, Any]) -> None:
        """Remember, per loader worker, how many raw samples it consumed (and skipped as corrupt)."""
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
            output = plain_step(acc, self.model, self.objective, micro[0], step)
        else:
            output = accumulated_step(acc, self.model, self.objective, micro, step)
        average_gradients([p for p in self.objective.parameters() if p.requires_grad])
        # fp16's GradScaler already skips steps with inf/NaN gradients and lowers its scale; bypassing it
        # would freeze the scale and skip forever.
        if tc.precision == "fp16" or self._all_finite(output.loss):
            if self.config.optim.grad_clip:
                acc.clip_grad_norm_([p for _, p in self._named_trainable()], self.config.optim.grad_clip)
            self.optimizer.step()
        else:
            self._handle_nonfinite(step, output)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        with torch.no_grad():
            self.unwrapped.clamp_logit_scales()
        return output

    def _all_finite(self, loss: torch.Tensor) -> bool:
        flag = torch.tensor([float(torch.isfinite(loss))], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() == self.accelerator.num_processes)

    def _handle_nonfinite(self, step: int, output: StepOutput) -> None:
        message = f"non-finite loss {output.loss.item()} at step {step}; terms: " + ", ".join(
            f"{k}={v.item():.4g}" for k, v in output.terms.items())
        if self.config.train.on_nonfinite == "abort":
            raise NonFiniteLoss(message)
        log.warning("%s; skipping the update", message)
        self.metrics.log(step, {"nonfinite_skipped": 1.0})

    def _after_step(self, step: int, output: StepOutput, timer: Throughput, bar: Any) -> None:
        tc = self.config.train
        if step % tc.log_every == 0 or step == tc.steps:
            values = self._step_metrics(output, timer)
            self.metrics.log(step, values)
            bar.set_postfix(loss=f"{values['loss']:.4f}", sps=f"{values['samples_per_s']:.0f}")
            timer.reset()
        if tc.save_every and step % tc.save_every == 0 and step < tc.steps:
            self._save(step)
        if self.config.eval.every and step % self.config.eval.every == 0 and step < tc.steps:
            self._evaluate(step)

    def _step_metrics(self, output: StepOutput, timer: Throughput) -> dict[str, float]:
        loss = self.accelerator.reduce(output.loss.detach().float(), "mean")
        values = {"loss": float(loss.item()), "lr": self.scheduler.get_last_lr()[0],
                  "data_skipped": float(sum(self.data_skipped.values()))}
        values.update({f"loss/{k}": float(v) for k, v in output.terms.items()})
        values.update(timer.summary())
        for pair in self.config.model.pairs:
            scale = self.unwrapped.logit_scale(pair.a, pair.b).detach()
            values[f"logit_scale/{pair_key(pair.a, pair.b)}"] = float(scale)
        values.update(self.objective.metrics())
        return values

    def _save(self, step: int) -> None:
        self.checkpoints.save(step, self.model, self.config, self.objective, self.optimizer, self.scheduler,
                              ResumeState(step, self.data_consumed, self.next_worker))

    def _evaluate(self, step: int) -> dict[str, float]:
        results: dict[str, float] = {}
        self.last_eval = []
        if self.accelerator.is_main_process and (self.config.eval.zeroshot or self.config.eval.retrieval):
            from mmembed.eval import format_table
            from mmembed.eval.evaluate import evaluate_tasks, merged_metrics

            self.last_eval = evaluate_tasks(self.unwrapped, self.config.eval, device=self.accelerator.device)
            results = merged_metrics(self.last_eval)
            self.metrics.log(step, {f"eval/{k}": v for k, v in results.items()})
            tqdm.write(f"evaluation at step {step}:\n{format_table(results)}")
        self.accelerator.wait_for_everyone()
        return results

    def _finish(self, step: int) -> dict[str, float]:
        self._save(step)
        results = self._evaluate(step)
        if self.accelerator.is_main_process:
            import json

            clean = {k: v for k, v in results.items() if math.isfinite(v)}
            (self.run_dir / "final_metrics.json").write_text(json.dumps(clean, indent=2))
        self.metrics.close()
        if self.accelerator.is_main_process:
            from mmembed.eval.summary import write_run_report

            tqdm.write(write_run_report(self.run_dir, self.last_eval, title=f"{self.config.name}: {step} steps",
                                        plots=self.config.eval.plots))
        return results
