"""open_clip towers are exactly open_clip modules: checkpoints load both ways and outputs match open_clip."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.model import CLIP, CustomTextCLIP
from safetensors.torch import save_file
from test_towers_common import TINY_TEXT, TINY_VIT

from mmembed.towers import TOWERS


def _clip(cls: type = CLIP) -> torch.nn.Module:
    torch.manual_seed(0)
    return cls(embed_dim=24, vision_cfg=TINY_VIT, text_cfg=TINY_TEXT).eval()


def _towers(path: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    vision = TOWERS.build("open_clip_vision", {"vision_cfg": TINY_VIT, "embed_dim": 24, "pretrained": path})
    text = TOWERS.build("open_clip_text", {"text_cfg": TINY_TEXT, "embed_dim": 24, "pretrained": path})
    return vision.eval(), text.eval()


def _check_parity(clip: torch.nn.Module, vision: torch.nn.Module, text: torch.nn.Module) -> None:
    images = torch.randn(2, 3, 32, 32)
    tokens = torch.stack([text.preprocessor(False)(s) for s in ("a red car", "two dogs")])
    with torch.no_grad():
        torch.testing.assert_close(vision.encode(images), clip.encode_image(images), rtol=0, atol=0)
        torch.testing.assert_close(text.encode(tokens), clip.encode_text(tokens), rtol=0, atol=0)


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_full_clip_checkpoint_loads_into_both_towers(tmp_path: Path, fmt: str) -> None:
    clip = _clip()
    path = tmp_path / f"clip.{fmt}"
    state = {k: v.contiguous() for k, v in clip.state_dict().items()}
    torch.save(state, path) if fmt == "pt" else save_file(state, str(path))
    _check_parity(clip, *_towers(str(path)))


def test_custom_text_clip_checkpoint_loads(tmp_path: Path) -> None:
    clip = _clip(CustomTextCLIP)
    torch.save({"state_dict": {f"module.{k}": v for k, v in clip.state_dict().items()}}, tmp_path / "c.pt")
    _check_parity(clip, *_towers(str(tmp_path / "c.pt")))


def test_tower_weights_export_to_an_open_clip_model(tmp_path: Path) -> None:
    """What the exporter does: open_clip_cfg() of both towers forms an open_clip model_cfg, and the towers'
    `model.*` weights are that model's `visual.*` / text weights without renaming."""
    torch.manual_seed(1)
    vision = TOWERS.build("open_clip_vision", {"vision_cfg": TINY_VIT, "embed_dim": 24}).eval()
    text = TOWERS.build("open_clip_text", {"text_cfg": TINY_TEXT, "embed_dim": 24}).eval()
    vcfg, tcfg = vision.open_clip_cfg(), text.open_clip_cfg()
    assert vcfg["embed_dim"] == tcfg["embed_dim"] == 24 and vcfg["preprocess_cfg"]["size"] == 32
    clip = CLIP(embed_dim=24, vision_cfg=vcfg["vision_cfg"], text_cfg=tcfg["text_cfg"],
                quick_gelu=vcfg["quick_gelu"]).eval()
    state = {f"visual.{k}": v for k, v in vision.model.state_dict().items()}
    state |= {k: v for k, v in text.model.state_dict().items()}
    missing, unexpected = clip.load_state_dict(state, strict=False)
    assert set(missing) == {"logit_scale"} and not unexpected
    _check_parity(clip, vision, text)


def test_mismatched_checkpoint_is_reported(tmp_path: Path) -> None:
    torch.save(_clip().state_dict(), tmp_path / "c.pt")
    ckpt = str(tmp_path / "c.pt")
    wider = dict(TINY_VIT, width=64)
    with pytest.raises(ValueError, match=r"(?s)open_clip_vision: .*size mismatch for conv1\.weight"):
        TOWERS.build("open_clip_vision", {"vision_cfg": wider, "embed_dim": 24, "pretrained": ckpt})
    torch.save({k: v for k, v in _clip().visual.state_dict().items() if k != "proj"}, tmp_path / "v.pt")
    ckpt = str(tmp_path / "v.pt")
    with pytest.raises(ValueError, match=r"missing keys \['proj'\]"):
        TOWERS.build("open_clip_vision", {"vision_cfg": TINY_VIT, "embed_dim": 24, "pretrained": ckpt})
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        TOWERS.build("open_clip_vision", {"vision_cfg": TINY_VIT, "embed_dim": 24, "pretrained": "nope.pt"})


def test_named_configs_build_with_their_tokenizer() -> None:
    vision = TOWERS.build("open_clip_vision", {"model_name": "ViT-S-32"}).eval()
    assert vision.output_dim == open_clip.get_model_config("ViT-S-32")["embed_dim"]
    with torch.no_grad():
        assert vision.encode(torch.randn(1, 3, 224, 224)).shape == (1, vision.output_dim)
    text = TOWERS.build("open_clip_text", {"model_name": "ViT-S-32"})
    tokens = text.preprocessor(True)("a photo of a cat")
    assert tokens.shape == (77,) and tokens[0] == 49406
    assert TOWERS.build("open_clip_vision", {"model_name": "RN50-quickgelu"}).open_clip_cfg()["quick_gelu"]


def test_text_tower_input_checks() -> None:
    text = TOWERS.build("open_clip_text", {"text_cfg": TINY_TEXT, "embed_dim": 24})
    with pytest.raises(ValueError, match="exceed context_length 16"):
        text.encode(torch.zeros(1, 20, dtype=torch.long))
    with pytest.raises(ValueError, match="integer token ids"):
        text.encode(torch.zeros(1, 16))
    with pytest.raises(ValueError, match="vocab_size=1000 is smaller"):
        TOWERS.build("open_clip_text", {"text_cfg": dict(TINY_TEXT, vocab_size=1000), "embed_dim": 24})


def test_text_projection_can_be_dropped() -> None:
    text = TOWERS.build("open_clip_text", {"text_cfg": dict(TINY_TEXT, proj_type="none"), "embed_dim": 24})
    assert text.output_dim == TINY_TEXT["width"] and text.model.text_projection is None
    assert text.encode(torch.ones(2, 16, dtype=torch.long)).shape == (2, TINY_TEXT["width"])
