"""Member decoders: formats, explicit channel downmix, and DecodeError on bad bytes."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from mmembed.data.decode import DecodeError, decode_audio, decode_image, decode_int, decode_text


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_images_decode_to_rgb(fmt):
    source = Image.new("L", (12, 10), 200)  # greyscale input must come out RGB
    image = decode_image(_encoded(source, fmt))
    assert image.mode == "RGB" and image.size == (12, 10)
    assert abs(int(np.asarray(image)[5, 5, 0]) - 200) <= 3


def test_rgba_png_decodes_to_rgb_over_white():
    """Half-transparent pixels are composited onto white (img2dataset's matting), not stripped of alpha."""
    image = decode_image(_encoded(Image.new("RGBA", (4, 4), (10, 20, 30, 128)), "PNG"))
    expected = [round(c * 128 / 255 + 255 * 127 / 255) for c in (10, 20, 30)]
    assert image.mode == "RGB" and np.abs(np.asarray(image)[0, 0].astype(int) - expected).max() <= 1
    opaque = decode_image(_encoded(Image.new("RGBA", (4, 4), (10, 20, 30, 255)), "PNG"))
    assert np.asarray(opaque)[0, 0].tolist() == [10, 20, 30]


@pytest.mark.parametrize("data", [b"", b"not an image", _encoded(Image.new("RGB", (64, 64)), "PNG")[:60]])
def test_bad_images_raise_decode_error(data):
    with pytest.raises(DecodeError, match="unreadable image"):
        decode_image(data)


def test_text_from_txt_and_json():
    assert decode_text(b"  a red circle \n") == "a red circle"
    assert decode_text(json.dumps({"caption": "cap", "text": "other"}).encode(), "json") == "cap"
    assert decode_text(json.dumps({"text": "only text"}).encode(), "json") == "only text"
    with pytest.raises(DecodeError, match="no string field"):
        decode_text(json.dumps({"title": "x"}).encode(), "json")
    with pytest.raises(DecodeError, match="invalid JSON"):
        decode_text(b"{oops", "json")
    with pytest.raises(DecodeError, match="UTF-8"):
        decode_text(b"\xff\xfe\xfa")
    with pytest.raises(DecodeError, match="empty"):
        decode_text(b"   ")


def _audio_bytes(frames: np.ndarray, fmt: str, sample_rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, frames, sample_rate, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["FLAC", "WAV"])
def test_stereo_audio_is_downmixed_by_the_channel_mean(fmt):
    t = np.arange(1600) / 16000
    left, right = 0.5 * np.sin(2 * np.pi * 440 * t), 0.25 * np.ones_like(t)
    wave, rate = decode_audio(_audio_bytes(np.stack([left, right], axis=1).astype(np.float32), fmt))
    assert rate == 16000 and wave.dtype == np.float32 and wave.shape == (1600,)
    np.testing.assert_allclose(wave, (left + right) / 2, atol=1e-4)


@pytest.mark.parametrize("fmt", ["OGG", "MP3"])
def test_lossy_formats_decode_mono(fmt):
    if fmt not in sf.available_formats():
        pytest.skip(f"this libsndfile cannot write {fmt}")
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)
    wave, rate = decode_audio(_audio_bytes(tone, fmt))
    assert rate == 16000 and wave.ndim == 1 and wave.dtype == np.float32
    assert 0.1 < float(np.abs(wave).max()) < 0.5


@pytest.mark.parametrize("data", [b"", b"RIFF" + bytes(100), b"fLaC" + bytes(300)])
def test_bad_audio_raises_decode_error(data):
    with pytest.raises(DecodeError):
        decode_audio(data)


def test_integers():
    assert decode_int(b" 42\n") == 42 and decode_int(b"-1") == -1
    with pytest.raises(DecodeError, match="ASCII integer"):
        decode_int(b"4.5")
