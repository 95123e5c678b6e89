"""Helpers shared by the Hugging Face towers (text and audio)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def quiet_loading() -> Iterator[None]:
    """transformers' own "Loading weights" progress bar off while a local model loads (restored after): it is
    noise on every run that builds the tower, and it broke the one-line contract of user-error output."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def set_hf_grad_checkpointing(model: nn.Module, enable: bool) -> None:
    """Turn a transformers model's checkpointing on or off, across transformers 4.x and 5.x.

    Non-reentrant checkpointing works with frozen inputs (embeddings) and under torch.compile. transformers
    >= 5 renamed gradient_* to activation_*; older releases only have the former.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        if enable:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.activation_checkpointing_disable()
    elif enable:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_disable()
