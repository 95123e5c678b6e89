"""Training (the only accelerate-aware part of mmembed)."""

from mmembed.train.trainer import Trainer, TrainResult

__all__ = ["TrainResult", "Trainer"]
