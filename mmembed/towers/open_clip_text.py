"""`open_clip_text`: open_clip's TextTransformer plus its tokenizer.

Decision on the projection: the tower keeps open_clip's `text_projection`, so `encode` returns open_clip's
text embedding ([B, embed_dim]) and the parameter names are exactly open_clip's (`model.text_projection`,
`model.transformer.resblocks.0...`). A pretrained checkpoint's projection is therefore kept (LiT with a
frozen text tower keeps its embedding space) and export needs no weight surgery. Use an `identity` head
when the model's embed_dim equals this tower's embed_dim; a `linear` head on top otherwise. Setting
`proj_type: none` in text_cfg drops the projection and makes output_dim the transformer width instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import open_clip
import torch
from open_clip.model import CLIPTextCfg, _build_text_tower
from open_clip.tokenizer import SimpleTokenizer
from torch import nn

from mmembed.towers.base import TOWERS, Preprocessor
from mmembed.towers.export_spec import ClientTokenizer, ExportSpec, InputSpec, without
from mmembed.towers.open_clip_common import load_tower_checkpoint, resolve_open_clip_cfg, text_state
from mmembed.towers.open_clip_slots import (
    NotExpressibleError,
    OpenClipPart,
    PartOptions,
    fold_linear,
    fold_matrix,
    module_state,
)
from mmembed.towers.shard_spec import ShardSpec, open_clip_units
from mmembed.types import LinearMap


@dataclass
class OpenClipTextConfig:
    # Exactly one of: an open_clip config name or an inline text_cfg (CLIPTextCfg fields).
    model_name: str | None = None
    text_cfg: dict[str, Any] | None = None
    embed_dim: int | None = None
    quick_gelu: bool | None = None
    # Local open_clip checkpoint (full CLIP/CustomTextCLIP state dict or the text tower's own).
    pretrained: str | None = None


class TokenizeOne:
    """Per-sample preprocessor: one string -> LongTensor [context_length]. A class, not a lambda, so it
    pickles into DataLoader workers."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, text: str) -> torch.Tensor:
        if not isinstance(text, str):
            raise TypeError(f"open_clip_text preprocessor expects a str, got {type(text).__name__}")
        return self.tokenizer([text])[0]


def _token_inputs(tower: nn.Module) -> list[InputSpec]:
    return [InputSpec("text", "int64", ("batch", int(tower.context_length)))]


def _export_preprocess(tower: nn.Module) -> dict[str, Any]:
    return {"kind": "open_clip_tokenizer", "model_name": tower.cfg.model_name,
            "context_length": int(tower.context_length)}


def _client_tokenizer(tower: nn.Module) -> ClientTokenizer:
    from open_clip.tokenizer import SimpleTokenizer

    from mmembed.towers.clip_tokenizer_json import clip_bpe_tokenizer

    if not isinstance(tower.tokenizer, SimpleTokenizer):
        raise NotExpressibleError(f"text tower: open_clip's {type(tower.tokenizer).__name__} (model "
                                  f"'{tower.cfg.model_name}') is not written out for clients; only SimpleTokenizer is")
    tokenizer = clip_bpe_tokenizer(tower.tokenizer, int(tower.context_length))
    return ClientTokenizer(tokenizer.to_str(), {"text": "ids"})


def _open_clip_part(tower: nn.Module, head: LinearMap, opts: PartOptions) -> OpenClipPart:
    """open_clip's own text transformer, with a linear head folded into its `text_projection`."""
    info = tower.open_clip_cfg()
    state = module_state(tower.model)
    if isinstance(tower.model.text_projection, nn.Linear):
        fold_linear(state, "text_projection", head, "text head")
    else:
        fold_matrix(state, "text_projection", head, "text head")
    return OpenClipPart(cfg=dict(info["text_cfg"]), state=state, quick_gelu=info["quick_gelu"])


@TOWERS.register("open_clip_text", OpenClipTextConfig)
class OpenClipTextTower(nn.Module):
    modality = "text"
    export_spec = ExportSpec(inputs=_token_inputs, preprocess=_export_preprocess,
                             portable_args=without("pretrained"), open_clip=_open_clip_part, open_clip_slot="text",
                             client_tokenizer=_client_tokenizer)
    shard_spec = ShardSpec(units=open_clip_units)

    def __init__(self, cfg: OpenClipTextConfig) -> None:
        super().__init__()
        resolved = resolve_open_clip_cfg("open_clip_text", "text_cfg", cfg.model_name, cfg.text_cfg,
                                         cfg.embed_dim, cfg.quick_gelu)
        try:
            text_cfg = CLIPTextCfg(**resolved.tower_cfg)
        except TypeError as err:
            raise ValueError(f"open_clip_text: invalid text_cfg {resolved.tower_cfg}: {err}") from err
        if text_cfg.hf_model_name:
            raise ValueError(f"open_clip_text: text_cfg uses Hugging Face model '{text_cfg.hf_model_name}'; "
                             "use the 'hf_text' tower for Hugging Face text encoders")
        self.cfg = cfg
        self._resolved = resolved
        self.model = _build_text_tower(resolved.embed_dim, text_cfg, quick_gelu=resolved.quick_gelu)
        self.context_length = text_cfg.context_length
        self.output_dim = resolved.embed_dim if self.model.text_projection is not None else text_cfg.width
        self.tokenizer = self._make_tokenizer(text_cfg)
        if cfg.pretrained:
            load_tower_checkpoint(self.model, cfg.pretrained, text_state, "open_clip_text")

    def _make_tokenizer(self, text_cfg: CLIPTextCfg) -> Any:
        if self.cfg.model_name is not None:
            return open_clip.get_tokenizer(self.cfg.model_name, context_length=text_cfg.context_length)
        tokenizer = SimpleTokenizer(context_length=text_cfg.context_length)
        # Token ids index the embedding table; a smaller vocab would fail with an opaque index error later.
        if text_cfg.vocab_size < tokenizer.vocab_size:
            raise ValueError(f"open_clip_text: text_cfg.vocab_size={text_cfg.vocab_size} is smaller than the "
                             f"SimpleTokenizer vocabulary ({tokenizer.vocab_size})")
        return tokenizer

    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        if not isinstance(inputs, torch.Tensor) or inputs.ndim != 2 or inputs.is_floating_point():
            is_tensor = isinstance(inputs, torch.Tensor)
            got = f"{inputs.dtype} {tuple(inputs.shape)}" if is_tensor else type(inputs).__name__
            raise ValueError(f"open_clip_text expects integer token ids [B, L], got {got}")
        if inputs.shape[1] > self.context_length:
            raise ValueError(f"open_clip_text: {inputs.shape[1]} tokens exceed context_length "
                             f"{self.context_length}")
        return self.model(inputs)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.encode(inputs)

    def no_weight_decay(self) -> set[str]:
        return {f"model.{n}" for n in self.model.no_weight_decay()}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    def preprocessor(self, is_train: bool) -> Preprocessor:
        return TokenizeOne(self.tokenizer)

    def open_clip_cfg(self) -> dict[str, Any]:
        """The open_clip `model_cfg` fragment this tower was built from (for export)."""
        return {
            "embed_dim": self._resolved.embed_dim,
            "quick_gelu": self._resolved.quick_gelu,
            "text_cfg": dict(self._resolved.tower_cfg),
        }

