"""`byte_text`: a small trainable transformer over UTF-8 bytes, with its own tokenizer (no vocabulary file).

Why bytes: a word-piece or sentence model sees "garden" as one opaque token, so nothing it computes says how
the word is spelled, and therefore nothing about how it sounds. A byte-level tower sees the spelling and can
learn spelling-to-sound regularities from paired audio, which is what a model needs to place a word it never
heard (docs/audio.md, "Speech, word level"). Bytes rather than characters: every string has a fixed
256-symbol alphabet, nothing is out of vocabulary, and the tokenizer is a few lines with no file to ship.

Token ids: 0 = padding, 1 = BOS (always first, so no row is empty), 2 + b for byte b. Text is lower-cased by
default (speech carries no case) and truncated to `context_length` tokens including the BOS.

Export: safetensors and ONNX (the encoder is plain torch: embedding, LayerNorm, linear, scaled dot-product
attention), with a `tokenizers`-library tokenizer.json for clients (`_client_tokenizer`); no open_clip slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mmembed.towers.base import TOWERS, Preprocessor
from mmembed.towers.clip_tokenizer_json import python_lowercase
from mmembed.towers.export_spec import ClientTokenizer, ExportSpec, InputSpec
from mmembed.towers.shard_spec import ShardSpec, timm_units

PAD_ID = 0
BOS_ID = 1
BYTE_OFFSET = 2
VOCAB_SIZE = BYTE_OFFSET + 256
POOLINGS = ("mean", "bos")


@dataclass
class ByteTextConfig:
    # Tokens per text, the BOS included; longer texts are truncated.
    context_length: int = 64
    width: int = 128
    layers: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    # Lower-case before encoding (spoken words carry no case).
    lowercase: bool = True
    # mean: average of the non-padding token states; bos: the BOS token's state.
    pooling: str = "mean"

    def __post_init__(self) -> None:
        if self.context_length < 2:
            raise ValueError(f"byte_text: context_length must be >= 2 (BOS + one byte), got {self.context_length}")
        if self.layers < 1 or self.heads < 1 or self.width % self.heads:
            raise ValueError(f"byte_text: need layers >= 1 and width divisible by heads, got layers={self.layers}, "
                             f"width={self.width}, heads={self.heads}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"byte_text: unknown pooling '{self.pooling}'; known: {list(POOLINGS)}")


class ByteTokenize:
    """Per-sample preprocessor: one string -> LongTensor [context_length] (BOS, bytes + 2, padding 0).
    A class, not a lambda, so it pickles into DataLoader workers."""

    def __init__(self, context_length: int, lowercase: bool = True) -> None:
        self.context_length, self.lowercase = context_length, lowercase

    def __call__(self, text: str) -> torch.Tensor:
        if not isinstance(text, str):
            raise TypeError(f"byte_text preprocessor expects a str, got {type(text).__name__}")
        data = (text.lower() if self.lowercase else text).encode("utf-8")[: self.context_length - 1]
        ids = torch.full((self.context_length,), PAD_ID, dtype=torch.long)
        ids[0] = BOS_ID
        ids[1 : 1 + len(data)] = torch.tensor(list(data), dtype=torch.long) + BYTE_OFFSET
        return ids


class ByteEmbedding(nn.Module):
    """Byte-token embedding plus a learned absolute position embedding."""

    def __init__(self, context_length: int, width: int) -> None:
        super().__init__()
        self.token = nn.Embedding(VOCAB_SIZE, width)
        self.position = nn.Parameter(torch.empty(context_length, width))
        nn.init.normal_(self.token.weight, std=0.02)
        nn.init.normal_(self.position, std=0.01)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.token(ids) + self.position[: ids.shape[1]]


class Block(nn.Module):
    """Pre-LayerNorm transformer block; padding keys are masked out of the attention."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        # keep [B, 1, 1, N]: True where the key is a real token (the BOS always is, so no row is all-masked).
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=keep,
                                              dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, n, w))
        return x + self.mlp(self.norm2(x))


def _token_inputs(tower: nn.Module) -> list[InputSpec]:
    return [InputSpec("text", "int64", ("batch", int(tower.context_length)))]


def _export_preprocess(tower: nn.Module) -> dict[str, Any]:
    return {"kind": "byte_tokenizer", "context_length": int(tower.context_length),
            "lowercase": bool(tower.cfg.lowercase)}


def _client_tokenizer(tower: nn.Module) -> ClientTokenizer:
    """The byte tokenizer in the `tokenizers` library: ByteLevel maps each UTF-8 byte to one character (GPT-2's
    byte-to-unicode table), a BPE without merges maps that character to id byte + 2, BOS and padding around."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": PAD_ID, "<s>": BOS_ID}
    vocab.update({char: BYTE_OFFSET + byte for byte, char in enumerate(_gpt2_byte_chars())})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    if tower.cfg.lowercase:
        tokenizer.normalizer = python_lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS_ID)])
    tokenizer.enable_truncation(max_length=int(tower.context_length))
    tokenizer.enable_padding(length=int(tower.context_length), pad_id=PAD_ID, pad_token="<pad>")
    return ClientTokenizer(tokenizer.to_str(), {"text": "ids"})


def _gpt2_byte_chars() -> list[str]:
    """Byte b -> the printable character ByteLevel writes for it (GPT-2's table), in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


@TOWERS.register("byte_text", ByteTextConfig)
class ByteTextTower(nn.Module):
    modality = "text"
    # Its blocks live in `blocks`, where timm keeps them, so the timm rule finds them.
    shard_spec = ShardSpec(units=lambda tower: timm_units(tower, ""))
    export_spec = ExportSpec(inputs=_token_inputs, preprocess=_export_preprocess, client_tokenizer=_client_tokenizer,
                             unsupported={"open_clip": "open_clip has no byte-level text tower"})

    def __init__(self, cfg: ByteTextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.context_length = cfg.context_length
        self.output_dim = cfg.width
        self.embed = ByteEmbedding(cfg.context_length, cfg.width)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.dropout)
                                    for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width)
        self.grad_checkpointing = False

    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        if not isinstance(inputs, torch.Tensor) or inputs.ndim != 2 or inputs.is_floating_point():
            got = f"{inputs.dtype} {tuple(inputs.shape)}" if isinstance(inputs, torch.Tensor) else type(inputs).__name__
            raise ValueError(f"byte_text expects integer token ids [B, L] (its preprocessor's output), got {got}")
        if inputs.shape[1] > self.context_length:
            raise ValueError(f"byte_text: {inputs.shape[1]} tokens exceed context_length {self.context_length}")
        real = inputs != PAD_ID
        keep = real[:, None, None, :]
        x = self.embed(inputs)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, keep, use_reentrant=False)
            else:
                x = block(x, keep)
        x = self.norm(x)
        if self.cfg.pooling == "bos":
            return x[:, 0]
        weights = real.unsqueeze(-1).to(x.dtype)
        return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.encode(inputs)

    def no_weight_decay(self) -> set[str]:
        # As open_clip's text tower: the positional embedding gets no weight decay, the token table does.
        return {"embed.position"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def preprocessor(self, is_train: bool) -> Preprocessor:
        return ByteTokenize(self.context_length, self.cfg.lowercase)
