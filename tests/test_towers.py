"""Registry-wide tower tests (timm style): every registered tower, built tiny, must satisfy the contract."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_towers_common import make_tiny_bert, tiny_inputs, tiny_tower_args

from mmembed.config.model import TowerSpec
from mmembed.config.validate import ConfigError
from mmembed.towers import TOWERS, Tower, build_tower, list_towers

ALL_TOWERS = list_towers()


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def _build(name: str, hf_folder: Path, **spec_kwargs: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_tower(TowerSpec(type=name, args=tiny_tower_args(name, hf_folder), **spec_kwargs))


def test_registry_lists_the_builtin_towers() -> None:
    assert {"open_clip_vision", "timm_image", "open_clip_text", "hf_text", "audio_mel"} <= set(ALL_TOWERS)


@pytest.mark.parametrize("name", ALL_TOWERS)
def test_forward_backward_no_nan(name: str, hf_folder: Path) -> None:
    tower = _build(name, hf_folder)
    assert isinstance(tower, Tower)
    tower.train()
    features = tower.encode(tiny_inputs(tower))
    assert features.shape == (3, tower.output_dim)
    assert torch.isfinite(features).all()
    features.square().sum().backward()
    grads = [p.grad for p in tower.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("name", ALL_TOWERS)
def test_grad_checkpointing_gives_same_output_and_grads(name: str, mode: str, hf_folder: Path) -> None:
    tower = _build(name, hf_folder).train(mode == "train")
    # Train mode runs the checkpointed path of towers that only checkpoint while training (HF); dropout
    # is zeroed there so the two passes are comparable. (Audio keeps crop=random in train, so fix T.)
    for module in tower.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    inputs = tiny_inputs(tower)
    if name == "audio_mel":
        inputs = inputs[:, : tower.clip_samples]
    ref = tower.encode(inputs)
    ref.sum().backward()
    ref_grads = [p.grad.clone() for p in tower.parameters()]
    tower.zero_grad()
    tower.set_grad_checkpointing(True)
    out = tower.encode(inputs)
    out.sum().backward()
    torch.testing.assert_close(out, ref)
    for g, r in zip((p.grad for p in tower.parameters()), ref_grads):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("name", ALL_TOWERS)
def test_no_weight_decay_names_real_parameters(name: str, hf_folder: Path) -> None:
    tower = _build(name, hf_folder)
    params = dict(tower.named_parameters())
    names = tower.no_weight_decay()
    assert isinstance(names, set)
    # timm may list names a variant lacks; what it names that exists must be a real tower parameter.
    assert all(n.split(".")[0] in dict(tower.named_children()) for n in names)
    if name in ("open_clip_vision", "open_clip_text"):
        assert names and names <= params.keys()


@pytest.mark.parametrize("name", ALL_TOWERS)
def test_preprocessor_output_feeds_encode(name: str, hf_folder: Path) -> None:
    import numpy as np
    from PIL import Image

    tower = _build(name, hf_folder).eval()
    raw = {
        "image": Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)),
        "text": "a dog on a skateboard",
        "audio": (np.random.default_rng(0).standard_normal(22050).astype(np.float32), 22050),
    }[tower.modality]
    for is_train in (True, False):
        sample = tower.preprocessor(is_train)(raw)
        batch = ({k: v.unsqueeze(0) for k, v in sample.items()} if isinstance(sample, dict)
                 else sample.unsqueeze(0))
        assert tower.encode(batch).shape == (1, tower.output_dim)


@pytest.mark.parametrize("name", ALL_TOWERS)
def test_frozen_tower_stays_frozen(name: str, hf_folder: Path) -> None:
    tower = _build(name, hf_folder, freeze=True)
    assert not any(p.requires_grad for p in tower.parameters())
    assert not tower.training and not any(m.training for m in tower.modules())


def test_unknown_tower_args_are_rejected_by_name() -> None:
    with pytest.raises(ConfigError, match="vison_cfg"):
        TOWERS.build("open_clip_vision", {"vison_cfg": {}})
    with pytest.raises(KeyError, match="unknown tower 'nope'"):
        build_tower(TowerSpec(type="nope"))


def test_open_clip_vision_needs_exactly_one_config_source() -> None:
    with pytest.raises(ValueError, match="exactly one of 'model_name'"):
        TOWERS.build("open_clip_vision", {})
    with pytest.raises(ValueError, match="exactly one of 'model_name'"):
        TOWERS.build("open_clip_vision", {"model_name": "ViT-B-32", "vision_cfg": {"width": 32}})
    with pytest.raises(ValueError, match="needs 'embed_dim'"):
        TOWERS.build("open_clip_vision", {"vision_cfg": {"width": 32}})
    with pytest.raises(ValueError, match="unknown open_clip model config 'ViT-Nope'"):
        TOWERS.build("open_clip_vision", {"model_name": "ViT-Nope"})


def test_unfreeze_regex_must_match(hf_folder: Path) -> None:
    with pytest.raises(ValueError, match=r"match no parameter"):
        _build("open_clip_vision", hf_folder, freeze=True, unfreeze=["^model\\.no_such_block"])
    with pytest.raises(ValueError, match="only makes sense with 'freeze: true'"):
        _build("open_clip_vision", hf_folder, unfreeze=["proj"])


@pytest.mark.parametrize("name", ALL_TOWERS)
def test_preprocessors_pickle_for_dataloader_workers(name: str, hf_folder: Path) -> None:
    import pickle

    tower = _build(name, hf_folder)
    for is_train in (True, False):
        pickle.loads(pickle.dumps(tower.preprocessor(is_train)))


def test_every_tower_module_is_declared() -> None:
    """Towers are imported on first use by their declared module, so a tower file that registers a name
    must also declare it in BUILTIN_TOWERS (mmembed/towers/__init__.py), or no recipe could find it."""
    import re

    from mmembed.towers import BUILTIN_TOWERS

    folder = Path(__file__).resolve().parents[1] / "mmembed" / "towers"
    registered = {name: f"mmembed.towers.{path.stem}" for path in folder.glob("*.py")
                  for name in re.findall(r'TOWERS\.register\(\s*"([^"]+)"', path.read_text())}
    assert registered == {name: module for name, (module, _) in BUILTIN_TOWERS.items()}
