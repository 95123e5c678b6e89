"""Per-tower exports: ONNX parity with PyTorch (dynamic batch, dynamic audio length), the conv1d STFT twin,
`load_tower`, and portable configs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_export_support import IMAGE, TEXT, make_model, model_tree, strings_in, tri_modal_tree

from mmembed.export import OnnxTower, export_towers, load_tower
from mmembed.export.client_tokenizer import TOKENIZER_SUFFIX
from mmembed.towers.conv_stft import ConvLogMel, centre_crop_or_pad
from mmembed.towers.log_mel import LogMel, crop_or_pad


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    model, config = make_model(tri_modal_tree())
    root = tmp_path_factory.mktemp("towers")
    onnx = export_towers(model, config, root, "onnx")
    assert all(r.max_abs_error is not None and r.max_abs_error < 1e-4 for r in onnx)
    export_towers(model, config, root, "safetensors")
    return model, root


def _inputs(modality: str, batch: int, length: int = 0) -> torch.Tensor:
    torch.manual_seed(batch + length)
    if modality == "image":
        return torch.randn(batch, 3, 32, 32)
    if modality == "text":
        return torch.randint(1, 49407, (batch, 16))
    return torch.randn(batch, length)


@pytest.mark.parametrize(("modality", "batch", "length"), [
    ("image", 1, 0), ("image", 5, 0), ("text", 2, 0), ("text", 7, 0),
    # clip is 8000 samples: shorter (padded), equal, longer (centre-cropped), odd lengths.
    ("audio", 1, 3001), ("audio", 4, 8000), ("audio", 3, 12345),
])
def test_onnx_matches_pytorch(exported: tuple[torch.nn.Module, Path], modality: str, batch: int,
                              length: int) -> None:
    model, root = exported
    x = _inputs(modality, batch, length)
    got = OnnxTower(root, modality)(x)
    with torch.no_grad():
        want = model.encode(modality, x).numpy()
    assert got.shape == (batch, 32)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("modality", ["image", "text", "audio"])
def test_load_tower_matches_model_and_preprocessing(exported: tuple[torch.nn.Module, Path], modality: str) -> None:
    model, root = exported
    loaded = load_tower(root, modality)
    raw = {"image": Image.new("RGB", (50, 41), (200, 30, 90)), "text": "a green triangle",
           "audio": (np.linspace(-0.5, 0.5, 24000, dtype=np.float32), 48000)}[modality]
    x = loaded.preprocess(raw)
    torch.testing.assert_close(x, model.preprocessors(is_train=False)[modality](raw), rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x.unsqueeze(0)), model.encode(modality, x.unsqueeze(0)),
                                   rtol=0, atol=1e-6)


def test_configs_are_portable_and_describe_inputs(exported: tuple[torch.nn.Module, Path]) -> None:
    _, root = exported
    audio = json.loads((root / "audio.json").read_text())
    assert audio["inputs"] == [{"name": "waveform", "dtype": "float32", "shape": ["batch", "time"]}]
    assert audio["preprocess"] == {"kind": "waveform", "sample_rate": 16000, "clip_samples": 8000}
    assert audio["files"] == {"onnx": "audio.onnx", "safetensors": "audio.safetensors"}
    assert audio["embed_dim"] == 32 and audio["onnx_check"]["max_abs_error"] < 1e-4
    # Export configs only: a shipped tokenizer's vocabulary legitimately holds tokens such as "/".
    for path in (p for p in root.glob("*.json") if not p.name.endswith(TOKENIZER_SUFFIX)):
        assert not [s for s in strings_in(json.loads(path.read_text())) if os.path.isabs(s)], path


def test_pretrained_path_is_dropped(tmp_path: Path) -> None:
    source, _ = make_model(model_tree({"image": IMAGE, "text": TEXT}, {}))
    weights = tmp_path / "vision.pt"
    torch.save(source.towers["image"].model.state_dict(), weights)
    image = {**IMAGE, "args": {**IMAGE["args"], "pretrained": str(weights)}}
    model, config = make_model(model_tree({"image": image, "text": TEXT}, {}))
    export_towers(model, config, tmp_path / "out", "safetensors", ["image"])
    meta = (tmp_path / "out" / "image.json").read_text()
    assert str(tmp_path) not in meta and "pretrained" not in json.loads(meta)["tower"]["args"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_tower(tmp_path / "out", "image").module(x), model.encode("image", x))


@pytest.mark.parametrize(("win_length", "pad_mode", "top_db"), [(400, "reflect", None), (512, "constant", 80.0)])
def test_conv_stft_matches_torch_stft(win_length: int, pad_mode: str, top_db: float | None) -> None:
    stft = LogMel(16000, 512, 160, win_length, 40, 30.0, 7800.0, pad_mode=pad_mode, top_db=top_db)
    conv = ConvLogMel(stft)
    wave = torch.randn(3, 5003) * 0.3
    # dB of power: compare in the power domain's relative precision (1e-4 dB ~ 2e-5 relative).
    torch.testing.assert_close(conv(wave), stft(wave), rtol=0, atol=2e-4)


@pytest.mark.parametrize("length", [10, 99, 100, 101, 257])
def test_centre_crop_or_pad_matches_eval_crop(length: int) -> None:
    wave = torch.randn(2, length)
    torch.testing.assert_close(centre_crop_or_pad(wave, 100), crop_or_pad(wave, 100, random_crop=False))


def test_unknown_format_and_modality(exported: tuple[torch.nn.Module, Path], tmp_path: Path) -> None:
    model, config = make_model(tri_modal_tree())
    with pytest.raises(ValueError, match="unknown tower export format 'tflite'"):
        export_towers(model, config, tmp_path, "tflite")
    with pytest.raises(ValueError, match="modality 'video' is not in the model"):
        export_towers(model, config, tmp_path, "safetensors", ["video"])
    with pytest.raises(FileNotFoundError, match="no export of modality 'video'"):
        load_tower(exported[1], "video")
