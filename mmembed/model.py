"""The multimodal embedding model: modality -> (tower, head), plus a learnable logit scale (and optional
bias) per trained modality pair, as in LAION-CLAP. `encode` is the one public path to embeddings and always
returns unit vectors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from mmembed.config.model import ModelConfig, PairConfig
from mmembed.heads import build_head
from mmembed.towers import build_tower, frozen_submodules, keep_eval
from mmembed.towers.feature_cache import FeatureCache
from mmembed.types import Preprocessor, ReadsModality, TowerInput

LossDefaults = Callable[[str], tuple[float, float | None]]


def pair_key(a: str, b: str) -> str:
    """Stable parameter key of a pair, in the recipe's a/b order: ("image", "text") -> "image__text"."""
    return f"{a}__{b}"


@dataclass
class ModelOutput:
    # Unit vectors [B, embed_dim] for each model modality present in the batch.
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)
    # Tower outputs before the head (CWCL weights its targets with a frozen tower's own features).
    features: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class PairInit:
    """Resolved initial values of one pair's logit scale θ (s = exp θ) and bias (None: no bias)."""

    scale: float
    bias: float | None
    learn_scale: bool


class MultiModalModel(nn.Module):
    def __init__(
        self,
        towers: Mapping[str, nn.Module],
        heads: Mapping[str, nn.Module],
        pairs: Mapping[tuple[str, str], PairInit],
        max_logit_scale: float = 100.0,
        eval_modules: Mapping[str, list[str]] | None = None,
        feature_cache_sizes: Mapping[str, int] | None = None,
        input_aliases: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.input_aliases = _check_aliases(dict(input_aliases or {}), set(towers))
        if set(towers) != set(heads):
            raise ValueError(f"towers {sorted(towers)} and heads {sorted(heads)} name different modalities")
        if max_logit_scale < 1.0:
            raise ValueError(f"max_logit_scale must be >= 1 (θ ∈ [0, ln max]), got {max_logit_scale}")
        self.towers = nn.ModuleDict(dict(towers))
        self.heads = nn.ModuleDict(dict(heads))
        self.max_logit_scale = max_logit_scale
        self.logit_scales = nn.ParameterDict()
        self.logit_biases = nn.ParameterDict()
        for (a, b), init in pairs.items():
            a, b = self.canonical(a), self.canonical(b)
            for m in (a, b):
                if m not in self.towers:
                    raise ValueError(f"pair ({a}, {b}) names modality '{m}', which the model lacks; "
                                     f"modalities: {sorted(self.towers)}")
            key = pair_key(a, b)
            theta = torch.tensor(float(init.scale))
            self.logit_scales[key] = nn.Parameter(theta, requires_grad=init.learn_scale)
            if init.bias is not None:
                self.logit_biases[key] = nn.Parameter(torch.tensor(float(init.bias)))
        # Per modality, the tower submodules that freezing put (and must keep) in eval mode.
        self._eval_modules = {m: list(names) for m, names in (eval_modules or {}).items()}
        # Plain attributes, not buffers: the caches never reach state_dict or checkpoints.
        self._feature_caches: dict[str, FeatureCache] = {}
        for modality, size in (feature_cache_sizes or {}).items():
            if any(p.requires_grad for p in self._tower(modality).parameters()):
                raise ValueError(f"feature cache of '{modality}': its tower has trainable parameters, so its "
                                 "features change every step; only a fully frozen tower can be cached")
            self._feature_caches[modality] = FeatureCache(size)
        # Cached features are only valid for the weights they were computed with.
        self.register_load_state_dict_post_hook(lambda module, keys: module.clear_feature_caches())
        self.train(self.training)

    @property
    def modalities(self) -> list[str]:
        return list(self.towers)

    def train(self, mode: bool = True) -> MultiModalModel:
        super().train(mode)
        for modality, names in self._eval_modules.items():
            keep_eval(self.towers[modality], names)
        return self

    def canonical(self, name: str) -> str:
        """The modality whose tower encodes batch key `name` (itself unless it is an input alias)."""
        return self.input_aliases.get(name, name)

    def _tower(self, modality: str) -> nn.Module:
        if modality not in self.towers:
            raise KeyError(f"unknown modality '{modality}'; the model has {sorted(self.towers)}")
        return self.towers[modality]

    def encode_with_features(self, modality: str, inputs: TowerInput) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit embeddings [B, embed_dim], tower features [B, output_dim])."""
        tower = self._tower(modality)
        # A fully frozen tower needs no autograd graph: skipping it saves its activation memory.
        trainable = any(p.requires_grad for p in tower.parameters())
        cache = self._feature_caches.get(modality)
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            features = tower.encode(inputs) if cache is None else cache.encode(tower.encode, inputs)
        return self.heads[modality](features), features

    def feature_cache(self, modality: str) -> FeatureCache | None:
        """The feature cache of `modality`'s frozen tower (hit/miss counters), or None when not cached."""
        self._tower(modality)
        return self._feature_caches.get(modality)

    def share_feature_cache(self, modality: str, cache: FeatureCache) -> None:
        """Serve `modality`'s frozen features from `cache` instead of this model's own cache.

        For several models whose frozen tower has the *same* weights (the benchmarks train many models
        against one frozen pretrained text tower): each distinct input is then encoded once for all of them.
        Keeping the weights identical is the caller's responsibility.
        """
        if self.feature_cache(modality) is None:
            raise ValueError(f"modality '{modality}' has no feature cache: set cache_features on its frozen tower")
        self._feature_caches[modality] = cache

    def clear_feature_caches(self) -> None:
        for cache in self._feature_caches.values():
            cache.clear()

    def encode(self, modality: str, inputs: TowerInput) -> torch.Tensor:
        """Unit vectors [B, embed_dim] for one modality's batch input."""
        return self.encode_with_features(modality, inputs)[0]

    def forward(self, batch: Mapping[str, Any]) -> ModelOutput:
        """Encode every model modality (and input alias) present in `batch`; absent (or None) ones are left out."""
        out = ModelOutput()
        for name in [*self.towers, *self.input_aliases]:
            if batch.get(name) is None:
                continue
            out.embeddings[name], out.features[name] = self.encode_with_features(self.canonical(name), batch[name])
        return out

    def _pair_param(self, store: nn.ParameterDict, a: str, b: str) -> nn.Parameter | None:
        # A pair's scale is symmetric, so (text, image) finds the parameter of an (image, text) pair.
        a, b = self.canonical(a), self.canonical(b)
        for key in (pair_key(a, b), pair_key(b, a)):
            if key in store:
                return store[key]
        return None

    def logit_scale(self, a: str, b: str) -> torch.Tensor:
        """s = exp(θ) of the (a, b) pair."""
        theta = self._pair_param(self.logit_scales, a, b)
        if theta is None:
            raise KeyError(f"no trained pair ({a}, {b}); pairs: {sorted(self.logit_scales)}")
        return theta.exp()

    def logit_bias(self, a: str, b: str) -> torch.Tensor | None:
        if self._pair_param(self.logit_scales, a, b) is None:
            raise KeyError(f"no trained pair ({a}, {b}); pairs: {sorted(self.logit_scales)}")
        return self._pair_param(self.logit_biases, a, b)

    @torch.no_grad()
    def clamp_logit_scales(self) -> None:
        """Clamp every learned θ to [0, ln max_logit_scale]; call after each optimizer step (CLIP).

        A fixed scale (learn_logit_scale: false) is left exactly as the recipe set it."""
        upper = math.log(self.max_logit_scale)
        for theta in self.logit_scales.values():
            if theta.requires_grad:
                theta.clamp_(0.0, upper)

    def preprocessors(self, is_train: bool) -> dict[str, Preprocessor]:
        """Per modality, its tower's preprocessor; a modality named other than its tower's kind (a second
        text tower `chars`) gets a ReadsModality wrapper, so the data pipeline feeds it that kind's member."""
        out: dict[str, Preprocessor] = {}
        for m, tower in self.towers.items():
            pre = tower.preprocessor(is_train)
            out[m] = pre if m == tower.modality else ReadsModality(tower.modality, pre)
        return out

    def no_weight_decay(self) -> set[str]:
        """Full names of the parameters that must get no weight decay."""
        names = {n for n, p in self.named_parameters() if p.ndim <= 1}
        names |= {f"logit_scales.{k}" for k in self.logit_scales}
        names |= {f"logit_biases.{k}" for k in self.logit_biases}
        existing = dict(self.named_parameters())
        for modality, tower in self.towers.items():
            # timm lists names some variants lack (e.g. dist_token); keep only real parameters.
            names |= {f"towers.{modality}.{n}" for n in tower.no_weight_decay()} & existing.keys()
        return names

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for tower in self.towers.values():
            tower.set_grad_checkpointing(enable)


def _check_aliases(aliases: dict[str, str], modalities: set[str]) -> dict[str, str]:
    for alias, base in aliases.items():
        if alias in modalities or base not in modalities:
            raise ValueError(f"model.input_aliases: '{alias}' -> '{base}' must map a new batch key to one of the "
                             f"model's modalities {sorted(modalities)}")
    return aliases


def resolve_pair_inits(
    pairs: list[PairConfig], loss_defaults: LossDefaults
) -> dict[tuple[str, str], PairInit]:
    """One PairInit per distinct modality pair; recipe pairs repeating a pair must agree on its init."""
    inits: dict[tuple[str, str], PairInit] = {}
    for i, pair in enumerate(pairs):
        if pair.a == pair.b:
            raise ValueError(f"model.pairs[{i}]: a pair needs two different modalities, got '{pair.a}' twice")
        default_scale, default_bias = loss_defaults(pair.loss)
        init = PairInit(
            scale=pair.logit_scale_init if pair.logit_scale_init is not None else default_scale,
            bias=pair.logit_bias_init if pair.logit_bias_init is not None else default_bias,
            learn_scale=pair.learn_logit_scale,
        )
        key = (pair.a, pair.b) if (pair.b, pair.a) not in inits else (pair.b, pair.a)
        if key in inits and inits[key] != init:
            raise ValueError(f"model.pairs[{i}] ({pair.a}, {pair.b}, loss {pair.loss}) shares its logit "
                             f"scale with an earlier entry of the same pair but asks for {init} instead of "
                             f"{inits[key]}; set logit_scale_init/logit_bias_init to agree")
        inits[key] = init
    return inits


def _default_loss_defaults() -> LossDefaults:
    from mmembed.losses import loss_defaults  # lazy: the model must not require the losses at import

    return loss_defaults


def build_model(cfg: ModelConfig, loss_defaults: LossDefaults | None = None) -> MultiModalModel:
    """Build towers and heads from the registries and one logit scale (and bias) per trained pair."""
    if not cfg.modalities:
        raise ValueError("model.modalities is empty: a model needs at least one modality")
    aliases = _check_aliases(dict(cfg.input_aliases), set(cfg.modalities))
    known = set(cfg.modalities) | set(aliases)
    for i, pair in enumerate(cfg.pairs):
        for m in (pair.a, pair.b):
            if m not in known:
                raise ValueError(f"model.pairs[{i}] ({pair.a}, {pair.b}) names unknown modality '{m}'; "
                                 f"model.modalities: {sorted(known)}")
    # Pairs naming an alias share the base pair's logit scale, so they are resolved on canonical names.
    canonical = [replace(p, a=aliases.get(p.a, p.a), b=aliases.get(p.b, p.b)) for p in cfg.pairs]
    inits = resolve_pair_inits(canonical, loss_defaults or _default_loss_defaults())
    towers: dict[str, nn.Module] = {}
    heads: dict[str, nn.Module] = {}
    eval_modules: dict[str, list[str]] = {}
    cache_sizes = {m: c.tower.cache_size for m, c in cfg.modalities.items() if c.tower.cache_features}
    for modality, mcfg in cfg.modalities.items():
        where = f"model.modalities.{modality}.tower"
        towers[modality] = tower = build_tower(mcfg.tower, where=where)
        try:
            heads[modality] = build_head(mcfg.head, tower.output_dim, cfg.embed_dim)
        except (ValueError, KeyError) as err:
            raise ValueError(f"model.modalities.{modality}.head: {err}") from err
        if mcfg.tower.freeze:
            eval_modules[modality] = frozen_submodules(tower)
    return MultiModalModel(towers, heads, inits, cfg.max_logit_scale, eval_modules, cache_sizes, aliases)
