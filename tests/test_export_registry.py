"""Registry-wide export test: every registered tower, built tiny, exports to every format (safetensors, ONNX,
open_clip) and the export reproduces its embeddings, or its `export_spec` declares that it cannot, with the
reason, and exporting then fails with that reason. A new tower cannot silently lack an export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_export_support import make_model, model_tree
from test_towers_common import TINY_TEXT, TINY_VIT, make_tiny_bert, tiny_inputs, tiny_tower_args

from mmembed.export import OnnxTower, export_towers, load_tower
from mmembed.export.open_clip_export import export_open_clip
from mmembed.export.open_clip_parts import NotExpressibleError, PartOptions
from mmembed.export.tower_export import NotExportableError
from mmembed.towers import TOWERS, list_towers
from mmembed.towers.base import export_spec_of
from mmembed.towers.export_spec import FORMATS

CASES = [(name, fmt) for name in list_towers() for fmt in FORMATS]
# The other half of an open_clip model for a tower of each slot.
PARTNERS = {"image": ("text", {"type": "open_clip_text", "args": {"text_cfg": TINY_TEXT, "embed_dim": 24}}),
            "text": ("image", {"type": "open_clip_vision", "args": {"vision_cfg": TINY_VIT, "embed_dim": 24}})}


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def _modality(name: str) -> str:
    return TOWERS.get(name).builder.modality


def _model(name: str, hf_folder: Path, with_partner: bool):
    modality = _modality(name)
    towers = {modality: {"type": name, "args": tiny_tower_args(name, hf_folder)}}
    pairs: list[tuple[str, str, str]] = []
    if with_partner:
        other, partner = PARTNERS[modality]
        towers[other] = partner
        pairs = [("image", "text", "infonce")]
    model, config = make_model(model_tree(towers, {}, embed_dim=16, pairs=pairs))
    return model, config, modality


@pytest.mark.slow
@pytest.mark.parametrize(("name", "fmt"), CASES)
def test_every_tower_exports_or_says_why_not(name: str, fmt: str, hf_folder: Path, tmp_path: Path) -> None:
    spec = export_spec_of(name)
    modality = _modality(name)
    if not spec.supports(fmt):
        reason = spec.unsupported[fmt]
        assert len(reason) > 20, f"{name}: '{fmt}' is declared unsupported without a real reason: {reason!r}"
        model, config, _ = _model(name, hf_folder, with_partner=fmt == "open_clip" and modality in PARTNERS)
        error = NotExpressibleError if fmt == "open_clip" else NotExportableError
        with pytest.raises(error, match=reason[:30]):
            if fmt == "open_clip":
                export_open_clip(model, config, tmp_path)
            else:
                export_towers(model, config, tmp_path, fmt, [modality])
        return
    model, config, modality = _model(name, hf_folder, with_partner=fmt == "open_clip")
    x = tiny_inputs(model.towers[modality], batch=2)
    with torch.no_grad():
        want = model.encode(modality, x)
    if fmt == "open_clip":
        result = export_open_clip(model, config, tmp_path, PartOptions(hf_model_id="sentence-transformers/tiny"))
        assert result.max_abs_error and max(result.max_abs_error.values()) < 1e-5
        return
    export_towers(model, config, tmp_path, fmt, [modality])
    inputs = [x[n] for n in ("input_ids", "attention_mask")] if isinstance(x, dict) else [x]
    if fmt == "safetensors":
        with torch.no_grad():
            got = load_tower(tmp_path, modality).module(*inputs)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    else:
        np.testing.assert_allclose(OnnxTower(tmp_path, modality)(*inputs), want.numpy(), rtol=0, atol=1e-4)


def test_export_spec_needs_support_or_a_reason_for_every_format() -> None:
    from mmembed.towers.export_spec import ExportSpec, image_inputs

    with pytest.raises(ValueError, match="neither supported nor declared unsupported"):
        ExportSpec()
    with pytest.raises(ValueError, match="without a reason"):
        ExportSpec(inputs=image_inputs, preprocess=lambda t: {}, unsupported={"open_clip": " "})
    spec = ExportSpec(inputs=image_inputs, preprocess=lambda t: {}, unsupported={"open_clip": "no slot for it"})
    assert spec.supports("onnx") and not spec.supports("open_clip")
