"""Training from reinforced shards: replay at the student's resolution, stored == online teacher loss, resume."""

from __future__ import annotations

import pytest
import torch
from reinforce_support import make_plain_shards, reinforce_config, teacher, tiny_clip, tiny_coca

from mmembed.config import DataConfig
from mmembed.config.model import ModelConfig
from mmembed.config.reinforce import TeacherSpec
from mmembed.config.validate import structured_from_dict
from mmembed.data import build_train_loader
from mmembed.data.decode import decode_image, decode_text
from mmembed.data.reinforced import MissingReinforcedKey
from mmembed.data.stats import SkipStats
from mmembed.data.tar_samples import shard_samples
from mmembed.model import build_model
from mmembed.reinforce.builder import run_reinforce
from mmembed.reinforce.sample_build import stored_augs, stored_syn
from mmembed.reinforce.teacher_embeddings import teacher_image_inputs
from mmembed.reinforce.teachers import build_teacher
from mmembed.reinforced_format.replay_params import replay_from_transform
from mmembed.train.objective import Objective

STUDENT = {
    "embed_dim": 16,
    "input_aliases": {"text_syn": "text"},
    "modalities": {
        "image": {"tower": {"type": "open_clip_vision", "args": {
            "vision_cfg": {"image_size": 24, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
            "embed_dim": 16, "mean": [0.4, 0.4, 0.4], "std": [0.3, 0.3, 0.3]}}, "head": {"type": "identity"}},
        "text": {"tower": {"type": "open_clip_text", "args": {
            "text_cfg": {"context_length": 16, "width": 32, "heads": 2, "layers": 1}, "embed_dim": 16}},
            "head": {"type": "identity"}},
    },
    "pairs": [
        {"a": "image", "b": "text", "loss": "distill", "args": {"lam": 0.7, "teacher_dims": [24]}},
        {"a": "image", "b": "text_syn", "loss": "distill", "args": {"lam": 0.7, "teacher_dims": [24]}},
    ],
}


@pytest.fixture(scope="module")
def reinforced(tmp_path_factory):
    root = tmp_path_factory.mktemp("reinforced")
    spec = teacher("t", tiny_clip(root / "t", 0))
    cfg = reinforce_config(make_plain_shards(root / "plain", 10, 5), root / "out", [spec], storage="fp32",
                           captioner={"args": {"model_name": tiny_coca(root / "coca")}, "num_captions": 3,
                                      "max_length": 8, "min_length": 2})
    assert run_reinforce(cfg, progress=False)
    stats = SkipStats()
    raws = {r["__key__"]: r for shard in sorted((root / "out").glob("*.tar")) for r in shard_samples(str(shard), stats)}
    return root, spec, raws


def _data(urls: str, **reinforced) -> DataConfig:
    return structured_from_dict(DataConfig, {"train": [{"urls": [urls]}], "num_workers": 0, "shuffle_buffer": 0,
                                             "resampled": False, "reinforced": {"enabled": True, **reinforced}})


def _model():
    torch.manual_seed(0)
    return build_model(structured_from_dict(ModelConfig, STUDENT))


def test_stored_embeddings_give_the_online_teacher_loss(reinforced):
    root, spec, raws = reinforced
    model = _model()
    pre = model.preprocessors(True)
    batch = next(iter(build_train_loader(_data(str(root / "out" / "plain-{000000..000001}.tar")), pre,
                                         batch_size=4, seed=3)))
    assert batch["image"].shape == (4, 3, 24, 24) and batch["teacher"]["image"].shape == (4, 24)
    teacher_model = build_teacher(TeacherSpec(**spec), torch.device("cpu"))
    student_replay = replay_from_transform(pre["image"], "student")
    online = {"image": [], "text": [], "text_syn": []}
    for i, key in enumerate(batch["__key__"]):
        raw = raws[key]
        k, text_row, syn_row = batch["teacher_rows"][i].tolist()
        image, record = decode_image(raw["png"]), stored_augs(raw, "image")[k]
        assert torch.equal(batch["image"][i], student_replay(image, record))  # the student's own resolution
        online["image"].append(teacher_model.encode_images(teacher_image_inputs(teacher_model, [image], [[record]])))
        captions = [decode_text(raw["txt"]), *stored_syn(raw)]
        online["text"].append(teacher_model.encode_texts([captions[text_row]]))
        online["text_syn"].append(teacher_model.encode_texts([captions[syn_row]]))
        assert text_row == 0 and (syn_row >= 1 or not stored_syn(raw))
    online_batch = {**batch, "teacher": {m: torch.cat(v) for m, v in online.items()}}
    objective = Objective(model_cfg_pairs())
    with torch.no_grad():
        out = model(batch)
        stored_loss, stored_terms = objective(model, out.embeddings, out.features, batch, 0)
        online_loss, _ = objective(model, out.embeddings, out.features, online_batch, 0)
    assert set(stored_terms) == {"image__text/clip", "image__text/kd", "image__text_syn/clip", "image__text_syn/kd"}
    assert torch.allclose(stored_loss, online_loss, atol=1e-5, rtol=0)
    assert list(model.logit_scales) == ["image__text"]  # the synthetic-caption pair shares the real pair's scale


def model_cfg_pairs():
    return structured_from_dict(ModelConfig, STUDENT).pairs


def test_reinforced_stream_resumes_exactly(reinforced):
    root, _, _ = reinforced
    pre = _model().preprocessors(True)
    data = _data(str(root / "out" / "plain-{000000..000001}.tar"), captions="mix", syn_ratio=0.5)
    first = iter(build_train_loader(data, pre, batch_size=3, seed=1))
    batches = [next(first) for _ in range(5)]
    resumed = next(iter(build_train_loader(data, pre, batch_size=3, seed=1,
                                           resume={"consumed": {0: batches[3]["__consumed__"]}, "next_worker": 0})))
    assert resumed["__key__"] == batches[4]["__key__"]
    assert torch.equal(resumed["teacher_rows"], batches[4]["teacher_rows"])
    assert torch.equal(resumed["image"], batches[4]["image"])
    assert torch.equal(resumed["teacher"]["text"], batches[4]["teacher"]["text"])
    rows = torch.cat([b["teacher_rows"] for b in batches])
    assert "text_syn" not in batches[0]
    assert (rows[:, 1] == 0).any() and (rows[:, 1] > 0).any()  # mix: real and synthetic captions both occur
    assert len(set(rows[:, 0].tolist())) > 1  # different stored augmentations are replayed


def test_plain_shard_fails_naming_shard_and_key(tmp_path):
    urls = make_plain_shards(tmp_path / "plain", 3, 3)
    loader = build_train_loader(_data(urls), _model().preprocessors(True), batch_size=2, seed=0)
    with pytest.raises(MissingReinforcedKey, match=r"plain-000000\.tar.*'image_emb'"):
        next(iter(loader))
