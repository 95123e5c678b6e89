"""Audio-text reinforcement: an mmembed checkpoint as the audio teacher, recorded crops, replay in training."""

from __future__ import annotations

import json

import numpy as np
import torch
from reinforce_support import reinforce_config

from data_tools.demo_synth import encode_flac
from data_tools.shard_writer import SizedShardWriter
from mmembed.checkpoint import save_model_dir
from mmembed.config import DataConfig, ExperimentConfig
from mmembed.config.model import ModelConfig
from mmembed.config.validate import structured_from_dict
from mmembed.data import build_train_loader
from mmembed.data.decode import decode_audio
from mmembed.data.stats import SkipStats
from mmembed.data.tar_samples import shard_samples
from mmembed.model import build_model
from mmembed.reinforce.builder import run_reinforce
from mmembed.reinforce.sample_build import stored_augs
from mmembed.reinforce.verify import verify_dataset

RATE = 8000
AUDIO_TEXT = {
    "embed_dim": 16,
    "modalities": {
        "audio": {"tower": {"type": "audio_mel", "args": {
            "sample_rate": RATE, "n_fft": 256, "hop_length": 80, "n_mels": 16, "f_max": 4000.0,
            "clip_seconds": 0.5, "backbone": "test_efficientnet"}}, "head": {"type": "linear"}},
        "text": {"tower": {"type": "open_clip_text", "args": {
            "text_cfg": {"context_length": 16, "width": 32, "heads": 2, "layers": 1}, "embed_dim": 16}},
            "head": {"type": "identity"}},
    },
    "pairs": [{"a": "audio", "b": "text", "loss": "distill", "args": {"teacher_dims": [16]}}],
}


def test_audio_teacher_crops_are_recorded_verified_and_replayed(tmp_path):
    torch.manual_seed(0)
    model_cfg = structured_from_dict(ModelConfig, AUDIO_TEXT)
    save_model_dir(tmp_path / "teacher", build_model(model_cfg).eval(), ExperimentConfig(model=model_cfg))
    rng = np.random.default_rng(0)
    with SizedShardWriter(tmp_path / "plain", "aud", samples_per_shard=3) as writer:
        for i in range(5):
            wave = (0.3 * rng.standard_normal(int(RATE * rng.uniform(0.6, 1.2)))).astype(np.float32)
            writer.write(f"a{i}", {"flac": encode_flac(wave, RATE), "txt": f"sound number {i}"})
    cfg = reinforce_config(writer.close().pattern, tmp_path / "out",
                           [{"name": "aud", "kind": "mmembed", "args": {"checkpoint": str(tmp_path / "teacher")}}],
                           modality="audio", audio={"num_crops": 3, "crop_seconds": 0.5}, storage="fp32")
    assert run_reinforce(cfg, progress=False)
    report = verify_dataset(tmp_path / "out", replay=5)
    assert report.ok and report.replayed == 5 and report.max_replay_error < 1e-4, report.summary()
    raws = {r["__key__"]: r for shard in sorted((tmp_path / "out").glob("*.tar"))
            for r in shard_samples(str(shard), SkipStats())}
    crops = json.loads(raws["a0"]["acrop.json"])
    assert crops["sample_rate"] == RATE and crops["length"] == RATE // 2 and len(crops["offsets"]) == 3

    student = build_model(model_cfg)
    data = structured_from_dict(DataConfig, {"train": [{"urls": [str(tmp_path / "out" / "aud-{000000..000001}.tar")]}],
                                             "num_workers": 0, "shuffle_buffer": 0, "resampled": False,
                                             "reinforced": {"enabled": True, "captions": "real"}})
    batch = next(iter(build_train_loader(data, student.preprocessors(True), batch_size=2, seed=0)))
    assert batch["teacher"]["audio"].shape == (2, 16)
    for i, key in enumerate(batch["__key__"]):
        k = int(batch["teacher_rows"][i, 0])
        wave, _ = decode_audio(raws[key]["flac"])
        clip = stored_augs(raws[key], "audio").clip(wave, k)
        assert torch.equal(batch["audio"][i], torch.as_tensor(student.preprocessors(True)["audio"]((clip, RATE))))
