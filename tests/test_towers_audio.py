"""audio_mel: log-mel parity with librosa, any-length inputs, crop semantics, the waveform preprocessor."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch
from test_towers_common import TINY_AUDIO

from mmembed.towers import TOWERS
from mmembed.towers.log_mel import LogMel, crop_or_pad


def _signal(sr: int, seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    rng = np.random.default_rng(seed)
    tones = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 1234.0, 5000.0))
    return (0.3 * tones + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


@pytest.mark.parametrize(
    ("sr", "n_fft", "hop", "win", "n_mels", "fmin", "fmax", "pad_mode"),
    [
        (48000, 1024, 480, 1024, 64, 50.0, 14000.0, "reflect"),  # LAION-CLAP
        (16000, 400, 160, 400, 40, 0.0, 8000.0, "constant"),  # 16 kHz speech-style, librosa's default pad
        (16000, 512, 128, 256, 32, 20.0, 7600.0, "reflect"),  # window shorter than the FFT
    ],
)
def test_log_mel_matches_librosa(sr: int, n_fft: int, hop: int, win: int, n_mels: int, fmin: float,
                                 fmax: float, pad_mode: str) -> None:
    """Same dB convention as librosa.power_to_db(ref=1, amin=1e-10, top_db=None); float32 STFT vs
    librosa's float32 STFT agree to 1e-3 dB wherever the mel energy is above the amin floor."""
    y = _signal(sr, 0.5)
    mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=n_fft, hop_length=hop, win_length=win,
                                         window="hann", center=True, pad_mode=pad_mode, power=2.0,
                                         n_mels=n_mels, fmin=fmin, fmax=fmax)
    expected = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)
    frontend = LogMel(sr, n_fft, hop, win, n_mels, fmin, fmax, pad_mode=pad_mode)
    got = frontend(torch.from_numpy(y).unsqueeze(0))[0].numpy()
    assert got.shape == expected.shape == (n_mels, 1 + len(y) // hop)
    np.testing.assert_allclose(got, expected, atol=1e-3, rtol=0)


def test_log_mel_top_db_matches_librosa() -> None:
    y = _signal(16000, 0.25)
    mel = librosa.feature.melspectrogram(y=y, sr=16000, n_fft=512, hop_length=160, pad_mode="reflect",
                                         n_mels=32, fmin=0.0, fmax=8000.0)
    expected = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=40.0)
    got = LogMel(16000, 512, 160, 512, 32, 0.0, 8000.0, top_db=40.0)(torch.from_numpy(y)[None])[0]
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-3, rtol=0)


def test_mel_filterbank_is_a_non_persistent_buffer() -> None:
    frontend = LogMel(16000, 512, 160, 512, 32, 0.0, 8000.0)
    assert "mel_fb" in dict(frontend.named_buffers())
    assert frontend.state_dict() == {}


def test_log_mel_rejects_fmax_above_nyquist() -> None:
    with pytest.raises(ValueError, match="f_max=14000"):
        LogMel(16000, 512, 160, 512, 32, 50.0, 14000.0)


def test_crop_or_pad() -> None:
    wave = torch.arange(10.0).repeat(4, 1)
    padded = crop_or_pad(wave, 13, random_crop=True)
    assert padded.shape == (4, 13) and torch.equal(padded[:, 10:], torch.zeros(4, 3))
    centre = crop_or_pad(wave, 4, random_crop=False)
    assert torch.equal(centre, torch.tensor([3.0, 4.0, 5.0, 6.0]).repeat(4, 1))
    torch.manual_seed(0)
    crops = crop_or_pad(wave, 4, random_crop=True)
    # Each row is a contiguous window of the original, and the offsets differ across rows.
    assert torch.equal(crops - crops[:, :1], torch.arange(4.0).repeat(4, 1))
    assert len(set(crops[:, 0].tolist())) > 1


def _tower(**overrides: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return TOWERS.build("audio_mel", {**TINY_AUDIO, **overrides})


@pytest.mark.parametrize("length", [1000, 8000, 8001, 30000])
def test_audio_tower_accepts_any_length(length: int) -> None:
    tower = _tower()
    for train in (True, False):
        tower.train(train)
        out = tower.encode(torch.randn(2, length))
        assert out.shape == (2, tower.output_dim) and torch.isfinite(out).all()


def test_audio_tower_eval_is_deterministic_and_train_crops_randomly() -> None:
    tower = _tower(input_norm=False)
    wave = torch.randn(2, 30000)
    tower.eval()
    torch.testing.assert_close(tower.log_mel(wave), tower.log_mel(wave), rtol=0, atol=0)
    tower.train()
    assert not torch.equal(tower.log_mel(wave), tower.log_mel(wave))
    assert tower.log_mel(wave).shape[-2:] == tower.spectrogram_shape


def test_audio_tower_spectrogram_equals_frontend_on_centre_crop() -> None:
    tower = _tower(input_norm=False).eval()
    wave = torch.randn(1, 12000)
    start = (12000 - tower.clip_samples) // 2
    expected = tower.frontend(wave[:, start:start + tower.clip_samples])
    torch.testing.assert_close(tower.log_mel(wave)[:, 0], expected)


def test_preprocessor_resamples_with_soxr_and_clips() -> None:
    tower = _tower()
    wave_44k = _signal(44100, 1.0)
    eval_pre = tower.preprocessor(False)
    out = eval_pre((wave_44k, 44100))
    assert out.dtype == torch.float32 and out.shape == (tower.clip_samples,)
    import soxr

    resampled = soxr.resample(wave_44k, 44100, 16000)
    start = (len(resampled) - tower.clip_samples) // 2
    np.testing.assert_allclose(out.numpy(), resampled[start:start + tower.clip_samples], atol=1e-6)
    torch.testing.assert_close(eval_pre((wave_44k, 44100)), out, rtol=0, atol=0)
    short = eval_pre((_signal(16000, 0.1), 16000))
    assert short.shape == (tower.clip_samples,) and torch.all(short[1600:] == 0)
    train_pre = tower.preprocessor(True)
    torch.manual_seed(1)
    assert not torch.equal(train_pre((wave_44k, 44100)), train_pre((wave_44k, 44100)))
    with pytest.raises(ValueError, match="mono"):
        eval_pre((np.zeros((2, 100), np.float32), 16000))


def test_audio_tower_defaults_are_laion_clap() -> None:
    tower = TOWERS.build("audio_mel", {"backbone": "test_efficientnet"})
    cfg = tower.cfg
    assert (cfg.sample_rate, cfg.n_fft, cfg.hop_length, cfg.n_mels, cfg.f_min, cfg.f_max) == (
        48000, 1024, 480, 64, 50.0, 14000.0)
    assert tower.clip_samples == 480000
