"""Reinforce building blocks: augmentation records and replay, storage codecs, caption filtering."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from reinforce_support import tiny_coca
from torchvision.transforms import InterpolationMode

from mmembed.config.reinforce import AugmentConfig, CaptionerSpec
from mmembed.losses.functional import distill_kd
from mmembed.reinforce.captioner import build_captioner, clean_caption, is_degenerate
from mmembed.reinforced_format.augment import RANDAUG_OPS, AugmentSampler, AugRecord, ReplayTransform
from mmembed.reinforced_format.codec import decode_array, encode_array, payload_bytes


def _image(w: int = 57, h: int = 43, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))


def test_records_round_trip_json_and_replay_identically():
    sampler = AugmentSampler(AugmentConfig(num_augs=8, randaug_num_ops=3))
    image = _image()
    replay = ReplayTransform((32, 32), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    for record in sampler.sample_many(image.width, image.height, 20, random.Random(3)):
        i, j, h, w = record.crop
        assert i >= 0 and j >= 0 and i + h <= image.height and j + w <= image.width
        stored = AugRecord.from_json(json.loads(json.dumps(record.to_json())))
        assert stored == record
        assert torch.equal(replay(image, stored), replay(image, record))


def test_replay_matches_torchvision_crop_flip_and_normalise():
    image = _image(64, 48)
    record = AugRecord((5, 7, 30, 41), True, ())
    ours = ReplayTransform((24, 20), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), InterpolationMode.BILINEAR)(image, record)
    expected = TF.hflip(TF.resized_crop(image, 5, 7, 30, 41, [24, 20], InterpolationMode.BILINEAR))
    expected = TF.normalize(TF.to_tensor(expected), [0.5] * 3, [0.25] * 3)
    assert torch.equal(ours, expected)


def test_ops_change_pixels_and_bad_records_fail():
    image = _image()
    base = ReplayTransform((32, 32), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    plain = base(image, AugRecord((0, 0, 43, 57), False, ()))
    for name in ("Rotate", "Solarize", "Posterize", "ShearX", "TranslateY", "Contrast"):
        magnitude = {"Solarize": 128.0, "Posterize": 4.0}.get(name, 0.3 if name != "Rotate" else 20.0)
        assert not torch.equal(base(image, AugRecord((0, 0, 43, 57), False, ((name, magnitude),))), plain), name
    with pytest.raises(ValueError, match="outside the 57x43"):
        base(image, AugRecord((10, 0, 43, 57), False, ()))
    with pytest.raises(ValueError, match="unknown ops"):
        AugRecord.from_json({"crop": [0, 0, 4, 4], "flip": False, "ops": [["Warp", 1.0]]})
    assert "Identity" in RANDAUG_OPS


@pytest.mark.parametrize("codec", ["fp32", "fp16", "int8"])
def test_codec_round_trip_error_bounds(codec):
    rng = np.random.default_rng(0)
    groups = [48, 32]
    x = np.concatenate([F.normalize(torch.from_numpy(rng.standard_normal((7, d))).float(), dim=1).numpy()
                        for d in groups], axis=1)
    data = encode_array(x, codec, groups)
    y, name = decode_array(data)
    assert name == codec and y.shape == x.shape and y.dtype == np.float32
    assert len(data) == payload_bytes(7, 80, codec, len(groups))
    err = np.abs(x - y)
    if codec == "fp32":
        assert np.array_equal(x, y)
    elif codec == "fp16":
        assert (err <= np.abs(x) * 2.0 ** -11 + 1e-7).all()
    else:
        for s in (slice(0, 48), slice(48, 80)):
            bound = np.abs(x[:, s]).max(axis=1, keepdims=True) / 254 + 1e-7
            assert (err[:, s] <= bound).all()
    # The distillation loss on decoded embeddings moves by far less than 1e-3.
    student = F.normalize(torch.randn(7, 16), dim=1), F.normalize(torch.randn(7, 16), dim=1)
    ref = distill_kd(*student, torch.tensor(50.0), [torch.from_numpy(x)], [torch.from_numpy(x[::-1].copy())], [100.0])
    yy = torch.from_numpy(y)
    got = distill_kd(*student, torch.tensor(50.0), [F.normalize(yy, dim=1)], [F.normalize(yy.flip(0), dim=1)],
                     [100.0])
    assert abs(float(ref - got)) < 1e-3


def test_codec_rejects_bad_input():
    with pytest.raises(ValueError, match="non-finite"):
        encode_array(np.array([[np.nan, 1.0]]), "fp16")
    with pytest.raises(ValueError, match="unknown storage codec"):
        encode_array(np.ones((1, 2)), "bf8")
    with pytest.raises(ValueError, match="bad magic"):
        decode_array(b"garbage!")
    with pytest.raises(ValueError, match="sum to the last dimension"):
        encode_array(np.ones((2, 4)), "int8", [3, 3])


def test_degenerate_caption_filter():
    assert is_degenerate("", 0.5)
    assert is_degenerate("dog dog dog cat", 0.5)
    assert not is_degenerate("a dog on a sofa", 0.5)
    assert clean_caption("<start_of_text>a  red circle <end_of_text>") == "a red circle"


def test_coca_captioner_is_seeded_and_counts(tmp_path):
    spec = CaptionerSpec(args={"model_name": tiny_coca(tmp_path / "coca")}, num_captions=3, max_length=10,
                         min_length=3, max_repeat_fraction=0.3)
    captioner = build_captioner(spec, torch.device("cpu"))
    images = [_image(seed=s) for s in range(2)]
    first, again = captioner.generate(images, 7), captioner.generate(images, 7)
    assert first.per_sample == again.per_sample
    assert first.generated == 6
    assert first.rejected == 6 - sum(len(c) for c in first.per_sample)
    assert all(not is_degenerate(c, 0.3) for caps in first.per_sample for c in caps)
    assert captioner.generate(images, 8).per_sample != first.per_sample
    assert math.isfinite(first.rejected)
