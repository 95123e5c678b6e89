"""timm-backed towers load local checkpoints through timm's pretrained loader, never the network."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from test_towers_common import TINY_AUDIO

from mmembed.towers import TOWERS


@pytest.fixture
def imagenet_style_checkpoint(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(3)
    source = timm.create_model("test_resnet", num_classes=10)
    path = tmp_path / "test_resnet.pth"
    torch.save(source.state_dict(), path)
    return path, source


def test_timm_image_loads_a_classifier_checkpoint_without_its_head(imagenet_style_checkpoint) -> None:
    path, source = imagenet_style_checkpoint
    tower = TOWERS.build("timm_image", {"model_name": "test_resnet", "checkpoint_path": str(path)}).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(tower.encode(x), source.eval().forward_head(source.forward_features(x),
                                                                               pre_logits=True))


def test_audio_backbone_checkpoint_is_adapted_to_one_channel(imagenet_style_checkpoint) -> None:
    path, source = imagenet_style_checkpoint
    tower = TOWERS.build("audio_mel", dict(TINY_AUDIO, backbone="test_resnet", checkpoint_path=str(path)))
    stem = next(n for n, p in source.named_parameters() if p.ndim == 4)
    # timm's adapt_input_conv sums the RGB filters for a one-channel input.
    expected = source.state_dict()[stem].sum(dim=1, keepdim=True)
    torch.testing.assert_close(tower.backbone.state_dict()[stem], expected)


def test_timm_image_preprocessing_defaults_and_errors(tmp_path: Path) -> None:
    tower = TOWERS.build("timm_image", {"model_name": "test_resnet", "image_size": 48})
    data_cfg = timm.data.resolve_model_data_config(tower.model)
    assert tower.image_size == 48 and (tower.mean, tower.std) == (data_cfg["mean"], data_cfg["std"])
    custom = TOWERS.build("timm_image", {"model_name": "test_resnet", "mean": [0.1] * 3, "std": [0.2] * 3})
    assert (custom.mean, custom.std) == ((0.1,) * 3, (0.2,) * 3)
    assert custom.image_size == data_cfg["input_size"][-1]
    with pytest.raises(ValueError, match="unknown timm model 'resnet_nope'"):
        TOWERS.build("timm_image", {"model_name": "resnet_nope"})
    missing = str(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        TOWERS.build("timm_image", {"model_name": "test_resnet", "checkpoint_path": missing})
    with pytest.raises(ValueError, match="'model_name' is required"):
        TOWERS.build("timm_image", {})
