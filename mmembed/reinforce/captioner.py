"""Synthetic captions (DataCompDR's `syn.json`): a captioner generates, degenerate captions are dropped.

A caption is degenerate when it is empty after removing special tokens, or when one word makes up more
than `max_repeat_fraction` of its words ("a a a a dog"), the typical failure of sampled decoding. Dropped
captions are counted and reported in the manifest; a sample keeps however many good captions remain.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from open_clip.tokenizer import SimpleTokenizer
from PIL import Image

from mmembed.config.reinforce import CaptionerSpec
from mmembed.registry import Registry
from mmembed.reinforce.teachers import file_sha256

# open_clip's SimpleTokenizer ids of <start_of_text> and <end_of_text> (CoCa pads with 0).
SOT, EOT = 49406, 49407
_SPECIAL = re.compile(r"<start_of_text>|<end_of_text>|<pad>")


def is_degenerate(caption: str, max_repeat_fraction: float) -> bool:
    words = caption.split()
    if not words:
        return True
    top = Counter(words).most_common(1)[0][1]
    return len(words) > 1 and top / len(words) > max_repeat_fraction


def clean_caption(text: str) -> str:
    return " ".join(_SPECIAL.sub(" ", text).split())


@dataclass
class Captions:
    per_sample: list[list[str]]
    generated: int
    rejected: int


class Captioner:
    """Generates `spec.num_captions` candidates per image and filters them (see the module docstring)."""

    checksum: str

    def __init__(self, spec: CaptionerSpec) -> None:
        self.spec = spec

    def generate(self, images: Sequence[Image.Image], seed: int) -> Captions:
        raw = self._generate(images, seed)
        kept, rejected = [], 0
        for candidates in raw:
            good = [c for c in (clean_caption(t) for t in candidates)
                    if not is_degenerate(c, self.spec.max_repeat_fraction)]
            rejected += len(candidates) - len(good)
            kept.append(good)
        return Captions(kept, sum(len(r) for r in raw), rejected)

    def _generate(self, images: Sequence[Image.Image], seed: int) -> list[list[str]]:
        raise NotImplementedError

    def describe(self) -> dict[str, object]:
        s = self.spec
        return {"kind": s.kind, "args": dict(s.args), "num_captions": s.num_captions, "top_p": s.top_p,
                "temperature": s.temperature, "max_length": s.max_length, "min_length": s.min_length,
                "max_repeat_fraction": s.max_repeat_fraction, "sha256": self.checksum}


CAPTIONERS: Registry[Captioner] = Registry("captioner")


@dataclass
class CocaConfig:
    # An open_clip CoCa config name with `pretrained` a local weights file, or "local-dir:/path".
    model_name: str
    pretrained: str | None = None


class OpenClipCocaCaptioner(Captioner):
    def __init__(self, cfg: CocaConfig, spec: CaptionerSpec, device: torch.device) -> None:
        import open_clip

        from mmembed.reinforce.teachers import OpenClipTeacherConfig, _open_clip_weights

        super().__init__(spec)
        self.checksum = file_sha256(_open_clip_weights(OpenClipTeacherConfig(cfg.model_name, cfg.pretrained),
                                                       "captioner"))
        pretrained = None if cfg.model_name.startswith("local-dir:") else cfg.pretrained
        self.model = open_clip.create_model(cfg.model_name, pretrained=pretrained, device=device).eval()
        if not hasattr(self.model, "generate"):
            raise ValueError(f"captioner {cfg.model_name} is not a CoCa model (it has no generate())")
        broken = [n for n, p in self.model.named_parameters() if not torch.isfinite(p).all()]
        if broken:  # e.g. open_clip leaves a fresh CoCa's text_decoder.text_projection uninitialised
            raise ValueError(f"captioner {cfg.model_name} has non-finite weights in {', '.join(broken[:5])}")
        pre = open_clip.get_model_preprocess_cfg(self.model)
        self.transform = open_clip.image_transform(pre["size"], is_train=False, mean=pre.get("mean"),
                                                   std=pre.get("std"))
        self.tokenizer = open_clip.get_tokenizer(cfg.model_name)
        if not isinstance(self.tokenizer, SimpleTokenizer):
            raise ValueError(f"captioner {cfg.model_name}: only CoCa models with open_clip's SimpleTokenizer are "
                             f"supported (got {type(self.tokenizer).__name__}); their SOT/EOT ids are fixed")
        self.device = device

    @torch.no_grad()
    def _generate(self, images: Sequence[Image.Image], seed: int) -> list[list[str]]:
        n = self.spec.num_captions
        pixels = torch.stack([self.transform(img) for img in images]).to(self.device)
        tokens = nucleus_sample(self.model, pixels.repeat_interleave(n, dim=0), self.spec,
                                torch.Generator(self.device).manual_seed(seed))
        texts = [self.tokenizer.decode(row) for row in tokens]
        return [texts[i * n:(i + 1) * n] for i in range(len(images))]


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability mass reaches top_p (always the top token)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    mass_before = sorted_logits.softmax(dim=-1).cumsum(dim=-1) - sorted_logits.softmax(dim=-1)
    sorted_logits[mass_before >= top_p] = float("-inf")
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def nucleus_sample(model: torch.nn.Module, pixels: torch.Tensor, spec: CaptionerSpec,
                   generator: torch.Generator) -> list[list[int]]:
    """Top-p sampling from an open_clip CoCa, one caption per image row; token ids without SOT/EOS.

    Written here rather than calling `CoCa.generate`, which needs transformers' BeamSearchScorer (removed in
    transformers 5) and samples from the global RNG; this loop draws only from `generator`.
    """
    image_latent, image_embs = model._encode_image(pixels)
    rows = pixels.shape[0]
    out = torch.full((rows, 1), SOT, dtype=torch.long, device=pixels.device)
    finished = torch.zeros(rows, dtype=torch.bool, device=pixels.device)
    for step in range(1, spec.max_length):
        logits = model(pixels, out, image_latent=image_latent, image_embs=image_embs,
                       output_labels=False)["logits"][:, -1].float()
        if step < spec.min_length:
            logits[:, EOT] = float("-inf")
        probs = _top_p_filter(logits / spec.temperature, spec.top_p).softmax(dim=-1)
        token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        if step == spec.max_length - 1:
            token = torch.full_like(token, EOT)
        token = torch.where(finished, torch.zeros_like(token), token)
        out = torch.cat([out, token[:, None]], dim=1)
        finished |= token == EOT
        if finished.all():
            break
    return [[t for t in row[1:] if t not in (EOT, 0)] for row in out.tolist()]


@CAPTIONERS.register("open_clip_coca", CocaConfig)
def _build_coca(cfg: CocaConfig, spec: CaptionerSpec, device: torch.device) -> Captioner:
    return OpenClipCocaCaptioner(cfg, spec, device)


def build_captioner(spec: CaptionerSpec, device: torch.device) -> Captioner:
    entry = CAPTIONERS.get(spec.kind)
    config = CAPTIONERS.make_config(spec.kind, spec.args, where="reinforce.captioner.args")
    return entry.builder(config, spec, device)
