"""`--format open_clip`: write an image-text model as a folder that plain open_clip loads with
`create_model_and_transforms('local-dir:DIR')` and `get_tokenizer('local-dir:DIR')`.

Layout (as open_clip's push_to_hf_hub writes it): `open_clip_config.json` ({"model_cfg", "preprocess_cfg"}),
`open_clip_model.safetensors`, and the tokenizer files for Hugging Face text towers. The model is always a
`CustomTextCLIP` (`custom_text: true`): its state keys are `visual.*` and `text.*`, so both tower kinds
keep their own parameter names. The image-text pair's logit scale θ (and bias) become open_clip's
`logit_scale` (also log-space) and `logit_bias`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from mmembed.config import ExperimentConfig
from mmembed.export.hygiene import file_stamps, finish_export
from mmembed.export.open_clip_parts import NotExpressibleError, OpenClipPart, PartOptions, open_clip_part
from mmembed.export.tower_export import assert_portable
from mmembed.model import pair_key

log = logging.getLogger("mmembed.export")

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
SLOTS = {"image": "visual", "text": "text"}


@dataclass(frozen=True)
class OpenClipExport:
    path: Path
    # max |open_clip - mmembed| over unit embeddings of random inputs, per modality.
    max_abs_error: dict[str, float]


def _part(model: nn.Module, config: ExperimentConfig, modality: str, opts: PartOptions) -> OpenClipPart:
    if modality not in config.model.modalities:
        raise NotExpressibleError(f"open_clip models are image-text; this model has no '{modality}' modality "
                                  f"(modalities: {sorted(config.model.modalities)})")
    tower_type = config.model.modalities[modality].tower.type
    return open_clip_part(model.towers[modality], model.heads[modality], tower_type, SLOTS[modality], opts)


def _logit_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """θ (log-space, like open_clip's logit_scale) and bias of the image-text pair, in either key order."""
    for key in (pair_key("image", "text"), pair_key("text", "image")):
        if key in model.logit_scales:
            params = {"logit_scale": model.logit_scales[key].detach().float().reshape(())}
            if key in model.logit_biases:
                params["logit_bias"] = model.logit_biases[key].detach().float().reshape(())
            return params
    log.warning("no trained image-text pair: writing open_clip's default logit scale ln(1/0.07)")
    return {"logit_scale": torch.tensor(math.log(1 / 0.07))}


def _quick_gelu(image: OpenClipPart, text: OpenClipPart) -> bool:
    flags = {p.quick_gelu for p in (image, text) if p.quick_gelu is not None}
    if len(flags) > 1:
        raise NotExpressibleError("the image and text towers disagree on quick_gelu, which open_clip sets "
                                  "once for the whole model")
    return flags.pop() if flags else False


def build_open_clip_folder(model: nn.Module, config: ExperimentConfig,
                           opts: PartOptions) -> tuple[dict[str, Any], dict[str, torch.Tensor], list[OpenClipPart]]:
    """(open_clip_config.json content, state dict, parts); raises NotExpressibleError."""
    image, text = (_part(model, config, m, opts) for m in SLOTS)
    extra = sorted(set(config.model.modalities) - set(SLOTS))
    if extra:
        log.warning("open_clip export holds image and text only; left out: %s", extra)
    logit = _logit_params(model)
    model_cfg: dict[str, Any] = {"embed_dim": int(config.model.embed_dim), "custom_text": True,
                                 "quick_gelu": _quick_gelu(image, text), "vision_cfg": image.cfg,
                                 "text_cfg": text.cfg, "init_logit_scale": float(logit["logit_scale"])}
    if "logit_bias" in logit:
        model_cfg["init_logit_bias"] = float(logit["logit_bias"])
    state = {f"visual.{k}": v for k, v in image.state.items()}
    state |= {f"text.{k}": v for k, v in text.state.items()}
    state |= logit
    tree = {"model_cfg": model_cfg, "preprocess_cfg": image.preprocess}
    assert_portable(tree, CONFIG_NAME)
    return tree, state, [image, text]


def export_open_clip(model: nn.Module, config: ExperimentConfig, out: str | Path,
                     opts: PartOptions | None = None, verify: bool = True) -> OpenClipExport:
    """Write the open_clip folder into `out` and (by default) check open_clip's embeddings against ours."""
    model = model.eval()
    tree, state, parts = build_open_clip_folder(model, config, opts or PartOptions())
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    before = file_stamps(root)
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / WEIGHTS_NAME))
    (root / CONFIG_NAME).write_text(json.dumps(tree, indent=2) + "\n")
    for part in parts:
        if part.write_files is not None:
            part.write_files(root)
    finish_export(root, before)
    errors = verify_open_clip(model, root, tree) if verify else {}
    return OpenClipExport(root, errors)


def verify_open_clip(model: nn.Module, root: Path, tree: dict[str, Any], batch: int = 3) -> dict[str, float]:
    """Load the folder with open_clip in this process and compare embeddings of random inputs."""
    import open_clip

    text_cfg = tree["model_cfg"]["text_cfg"]
    # HFTextEncoder reads the architecture from text_cfg.hf_model_name (a hub id, maybe offline here);
    # the folder holds the same config.json, so the check points it there.
    overrides = {"text_cfg": {**text_cfg, "hf_model_name": str(root)}} if "hf_model_name" in text_cfg else {}
    clip = open_clip.create_model(f"local-dir:{root}", **overrides).eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{root}")
    size = tree["preprocess_cfg"]["size"]
    h, w = (size, size) if isinstance(size, int) else size
    images = torch.randn(batch, 3, h, w)
    captions = ["a red circle on the left", "two dogs", "an orchestra tuning up"][:batch]
    text_pre = model.preprocessors(is_train=False)["text"]
    ours_text = torch.utils.data.default_collate([text_pre(c) for c in captions])
    with torch.no_grad():
        errors = {"image": (clip.encode_image(images, normalize=True) - model.encode("image", images)),
                  "text": (clip.encode_text(tokenizer(captions), normalize=True)
                           - model.encode("text", ours_text))}
    result = {m: float(e.abs().max()) for m, e in errors.items()}
    log.info("open_clip export %s: max abs embedding error %s", root, result)
    return result
