"""Helpers shared by the Hugging Face towers (text and audio)."""

from __future__ import annotations

from torch import nn


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
