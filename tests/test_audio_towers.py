"""Audio towers: hf_audio (tiny random wav2vec2 and AST saved to tmp_path), variable-length batches, and
deterministic evaluation crops (center / average over windows) for both hf_audio and audio_mel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_towers_common import TINY_AUDIO, make_tiny_wav2vec2
from torch.utils.data import default_collate

from mmembed.towers import TOWERS
from mmembed.towers.audio_crops import CropPolicy, eval_windows, window_starts


@pytest.fixture(scope="module")
def wav2vec2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_wav2vec2(tmp_path_factory.mktemp("tiny_wav2vec2"))


@pytest.fixture(scope="module")
def ast_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

    folder = tmp_path_factory.mktemp("tiny_ast")
    torch.manual_seed(0)
    ASTModel(ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       num_mel_bins=16, max_length=64, frequency_stride=10, time_stride=10)).save_pretrained(folder)
    ASTFeatureExtractor(num_mel_bins=16, max_length=64).save_pretrained(folder)
    return folder


def _hf_audio(folder: Path, **overrides: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return TOWERS.build("hf_audio", {"path": str(folder), "clip_seconds": 0.5, **overrides})


def _audio_mel(**overrides: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return TOWERS.build("audio_mel", {**TINY_AUDIO, **overrides})


def _waves(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((batch, length)).astype(np.float32))


@pytest.mark.parametrize("length", [3000, 8000, 8001, 40000])
def test_hf_audio_runs_on_variable_length_batches(wav2vec2_folder: Path, length: int) -> None:
    tower = _hf_audio(wav2vec2_folder, eval_crops="average", eval_windows=3)
    assert (tower.sample_rate, tower.clip_samples, tower.output_dim) == (16000, 8000, 32)
    for training in (True, False):
        out = tower.train(training).encode(_waves(2, length))
        assert out.shape == (2, 32) and torch.isfinite(out).all()


def test_hf_audio_gradients_reach_the_encoder(wav2vec2_folder: Path) -> None:
    tower = _hf_audio(wav2vec2_folder).train()
    tower.encode(_waves(2, 12000)).square().sum().backward()
    grads = {n: p.grad for n, p in tower.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), \
        [n for n, g in grads.items() if g is None]


@pytest.mark.parametrize("build", ["hf_audio", "audio_mel"])
@pytest.mark.parametrize("crops", ["center", "average"])
def test_eval_embedding_is_deterministic_and_train_crop_is_random(wav2vec2_folder: Path, build: str,
                                                                  crops: str) -> None:
    """The same clip gives bit-identical eval features on every call, whatever the global RNG state; a
    clip longer than the window gives different features at each training call (random crop)."""
    tower = (_hf_audio(wav2vec2_folder, eval_crops=crops) if build == "hf_audio"
             else _audio_mel(eval_crops=crops, input_norm=False))
    wave = _waves(2, 3 * tower.clip_samples)
    tower.eval()
    torch.manual_seed(1)
    first = tower.encode(wave)
    torch.manual_seed(2)
    torch.testing.assert_close(tower.encode(wave), first, rtol=0, atol=0)
    preprocess = tower.preprocessor(False)
    torch.manual_seed(3)
    one = preprocess((wave[0].numpy(), tower.sample_rate))
    torch.manual_seed(4)
    torch.testing.assert_close(preprocess((wave[0].numpy(), tower.sample_rate)), one, rtol=0, atol=0)
    tower.train()
    assert not torch.allclose(tower.encode(wave), tower.encode(wave))


def test_average_crop_is_the_mean_of_evenly_spaced_windows(wav2vec2_folder: Path) -> None:
    tower = _hf_audio(wav2vec2_folder, eval_crops="average", eval_windows=3).eval()
    length = tower.clip_samples
    wave = _waves(2, 2 * length + 1000)
    starts = [0, (length + 1000) // 2, length + 1000]  # first window at the start, last one at the end
    assert window_starts(wave.shape[1], length, 3) == starts
    singles = torch.stack([tower.encode(wave[:, s:s + length]) for s in starts]).mean(0)
    torch.testing.assert_close(tower.encode(wave), singles)
    centre = _hf_audio(wav2vec2_folder, eval_crops="center").eval()
    mid = (wave.shape[1] - length) // 2
    torch.testing.assert_close(centre.encode(wave), tower.encode(wave[:, mid:mid + length]))


@pytest.mark.parametrize("build", ["hf_audio", "audio_mel"])
def test_eval_preprocessor_windows_feed_encode(wav2vec2_folder: Path, build: str) -> None:
    """Per-sample eval windows ([n, L], cut before padding) collate and give the same features as the tower
    cutting the windows itself; a short clip is zero-padded, never mixed with another row."""
    kwargs = {"eval_crops": "average", "eval_windows": 4}
    tower = (_hf_audio(wav2vec2_folder, **kwargs) if build == "hf_audio"
             else _audio_mel(input_norm=False, **kwargs)).eval()
    long = _waves(1, 2 * tower.clip_samples + 321, seed=1)[0]
    short = _waves(1, tower.clip_samples // 3, seed=2)[0]
    preprocess = tower.preprocessor(False)
    batch = default_collate([preprocess((w.numpy(), tower.sample_rate)) for w in (long, short)])
    assert batch.shape == (2, 4, tower.clip_samples)
    assert torch.all(batch[1, :, short.numel():] == 0)
    expected = torch.cat([tower.encode(long[None]), tower.encode(short[None])])
    torch.testing.assert_close(tower.encode(batch), expected, rtol=1e-5, atol=1e-5)


def test_eval_windows_shape_and_padding() -> None:
    wave = torch.arange(10.0)[None]
    windows = eval_windows(wave, CropPolicy(4, "average", 3))
    assert windows.tolist() == [[[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]]
    padded = eval_windows(wave, CropPolicy(12, "average", 2))
    assert padded.shape == (1, 2, 12) and torch.equal(padded[0, 0], padded[0, 1])
    assert eval_windows(wave, CropPolicy(4, "center", 3)).tolist() == [[[3, 4, 5, 6]]]


def test_wav2vec2_torch_front_end_matches_the_hf_extractor(wav2vec2_folder: Path) -> None:
    tower = _hf_audio(wav2vec2_folder)
    clips = 0.3 * _waves(3, tower.clip_samples) + 0.1
    ours = tower.model_inputs(clips)
    theirs = tower.feature_extractor(list(clips.numpy()), sampling_rate=16000, return_tensors="pt")
    torch.testing.assert_close(ours["input_values"], theirs["input_values"], rtol=1e-5, atol=1e-5)


def test_hf_audio_ast_uses_the_hf_extractor_and_pooler(ast_folder: Path) -> None:
    from transformers import ASTModel

    tower = _hf_audio(ast_folder, pooling="pooler").eval()
    wave = _waves(2, 12000)
    out = tower.encode(wave)
    start = (12000 - tower.clip_samples) // 2
    features = tower.feature_extractor(list(wave[:, start:start + tower.clip_samples].numpy()),
                                       sampling_rate=16000, return_tensors="pt")
    reference = ASTModel.from_pretrained(ast_folder).eval()(**features).pooler_output
    torch.testing.assert_close(out, reference)


def test_hf_audio_errors_name_the_problem(wav2vec2_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"preprocessor_config\.json"):
        TOWERS.build("hf_audio", {"path": str(tmp_path)})
    with pytest.raises(ValueError, match="unknown pooling 'avg'"):
        _hf_audio(wav2vec2_folder, pooling="avg")
    with pytest.raises(ValueError, match="eval_crops must be one of"):
        _hf_audio(wav2vec2_folder, eval_crops="random")
    with pytest.raises(ValueError, match="has no pooler output"):
        _hf_audio(wav2vec2_folder, pooling="pooler").encode(_waves(1, 8000))
    with pytest.raises(ValueError, match=r"\[B, T\] or eval windows"):
        _hf_audio(wav2vec2_folder).encode(torch.zeros(8000))
    with pytest.raises(ValueError, match="eval windows must be 8000 samples"):
        _hf_audio(wav2vec2_folder).encode(torch.zeros(1, 2, 100))
