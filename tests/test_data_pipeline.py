"""The WebDataset pipeline on real shards in tmp_path: batch contents across shard boundaries, source
weights, epoch coverage, corrupt samples, sample counts and configuration errors."""

from __future__ import annotations

import itertools
import logging
import os

import pytest
import torch
from test_data_support import (
    AUDIO_LEN,
    IMAGE_SIZE,
    PLAIN,
    TEXT_LEN,
    char_tokens,
    decode_tokens,
    image_number,
    png_bytes,
    sample_members,
    write_numbered_shards,
)

from data_tools.shard_writer import SizedShardWriter
from mmembed.config.data import DataConfig, ShardSource
from mmembed.data import build_eval_loader, build_train_loader, count_samples, expand_urls, source_num_samples
from mmembed.types import ReadsModality


def _numbers(batches: list[dict]) -> list[int]:
    return [int(key[1:]) for batch in batches for key in batch["__key__"]]


def test_eval_loader_yields_every_sample_once_in_order_across_shards(tmp_path):
    shards = write_numbered_shards(tmp_path, "s", list(range(21)), per_shard=7)
    assert len(shards.shards) == 3
    batches = list(build_eval_loader([shards.pattern], PLAIN, batch_size=4, extra_keys=()))
    assert [len(b["__key__"]) for b in batches] == [4, 4, 4, 4, 4, 1]
    assert _numbers(batches) == list(range(21))
    for batch in batches:
        size = len(batch["__key__"])
        assert batch["image"].shape == (size, 3, IMAGE_SIZE, IMAGE_SIZE)
        assert batch["image"].dtype == torch.float32
        assert batch["text"].shape == (size, TEXT_LEN) and batch["text"].dtype == torch.long
        assert batch["audio"].shape == (size, AUDIO_LEN)
        assert batch["index"].dtype == torch.long
        for row, key in enumerate(batch["__key__"]):
            number = int(key[1:])
            assert image_number(batch["image"][row]) == number
            assert decode_tokens(batch["text"][row]) == f"caption {number}"
            # Stereo (a, a/2) downmixed by the mean: 0.75 a.
            level = ((number % 50) + 1) / 64
            torch.testing.assert_close(batch["audio"][row], torch.full((AUDIO_LEN,), 0.75 * level),
                                       atol=1e-5, rtol=0)
            assert int(batch["index"][row]) == number  # written in order, so idx == number
        assert batch["__skipped__"] == 0
    assert count_samples(shards.pattern) == 21


def test_only_requested_modalities_are_batched_and_index_defaults_to_minus_one(tmp_path):
    # Written without SizedShardWriter's idx: the pipeline reports -1.
    import webdataset as wds

    with wds.TarWriter(str(tmp_path / "plain.tar")) as sink:
        for number in range(3):
            sink.write({"__key__": f"p{number}", **sample_members(number)})
    (batch,) = build_eval_loader([str(tmp_path / "plain.tar")], {"text": char_tokens}, batch_size=8,
                                 extra_keys=())
    assert set(batch) == {"text", "index", "__key__", "__worker__", "__consumed__", "__skipped__"}
    assert batch["index"].tolist() == [-1, -1, -1]


def _caption_length(text: str) -> torch.Tensor:
    return torch.tensor(len(text))


def test_a_second_text_modality_reads_the_same_caption(tmp_path):
    """A preprocessor wrapped in ReadsModality("text", ...) (the model does this for a second text tower)
    is fed the text member under its own batch key, beside the first text modality."""
    shards = write_numbered_shards(tmp_path, "s", [3, 12], per_shard=8)
    preprocessors = {"text": char_tokens, "chars": ReadsModality("text", _caption_length)}
    (batch,) = build_eval_loader([shards.pattern], preprocessors, batch_size=8, extra_keys=())
    assert [decode_tokens(row) for row in batch["text"]] == ["caption 3", "caption 12"]
    assert batch["chars"].tolist() == [len("caption 3"), len("caption 12")]
    with pytest.raises(ValueError, match=r"no decoder for modalities \['chars'\]"):
        build_eval_loader([shards.pattern], {"chars": ReadsModality("smell", _caption_length)}, batch_size=8)


def _two_sources(tmp_path) -> tuple[str, str]:
    a = write_numbered_shards(tmp_path / "a", "a", list(range(30)), per_shard=10)
    b = write_numbered_shards(tmp_path / "b", "b", list(range(1000, 1030)), per_shard=10)
    return a.pattern, b.pattern


def _train_cfg(sources: list[ShardSource], **kw) -> DataConfig:
    return DataConfig(train=sources, **{"num_workers": 0, "shuffle_buffer": 8, **kw})


def test_train_loader_respects_source_weights(tmp_path):
    a, b = _two_sources(tmp_path)
    only_a = _train_cfg([ShardSource(urls=[a], weight=1.0), ShardSource(urls=[b], weight=0.0)])
    batches = list(itertools.islice(build_train_loader(only_a, PLAIN, batch_size=8, seed=0), 12))
    assert {key[0] for batch in batches for key in batch["__key__"]} == {"a"}

    mixed = _train_cfg([ShardSource(urls=[a], weight=3.0), ShardSource(urls=[b], weight=1.0)])
    batches = list(itertools.islice(build_train_loader(mixed, PLAIN, batch_size=8, seed=0), 60))
    keys = [key for batch in batches for key in batch["__key__"]]
    share_a = sum(key[0] == "a" for key in keys) / len(keys)
    assert 0.6 < share_a < 0.9, share_a
    for batch in batches:  # contents stay attached to their keys after shuffling and mixing
        for row, key in enumerate(batch["__key__"]):
            assert image_number(batch["image"][row]) == int(key[1:])
            assert decode_tokens(batch["text"][row]) == f"caption {int(key[1:])}"


def test_epoch_mode_reads_each_sample_once_per_epoch_in_a_new_order(tmp_path):
    shards = write_numbered_shards(tmp_path, "e", list(range(30)), per_shard=6)
    cfg = _train_cfg([ShardSource(urls=[shards.pattern])], resampled=False, shuffle_buffer=5)
    batches = list(itertools.islice(build_train_loader(cfg, PLAIN, batch_size=5, seed=3), 12))
    first, second = _numbers(batches[:6]), _numbers(batches[6:])
    assert sorted(first) == list(range(30)) and sorted(second) == list(range(30))
    assert first != second


def test_shuffle_buffer_reorders_samples_within_one_shard(tmp_path):
    """One shard, one worker: shard-order shuffling cannot help, so any reordering is the buffer's."""
    shards = write_numbered_shards(tmp_path, "o", list(range(40)), per_shard=40)
    for buffer, shuffled in ((0, False), (10, True)):
        cfg = _train_cfg([ShardSource(urls=[shards.pattern])], resampled=False, shuffle_buffer=buffer)
        numbers = _numbers(list(itertools.islice(build_train_loader(cfg, PLAIN, batch_size=8, seed=0), 5)))
        assert sorted(numbers) == list(range(40))
        assert (numbers != list(range(40))) == shuffled, (buffer, numbers)


def _write_damaged_shard(tmp_path) -> list[str]:
    """Good samples 0..5 plus: a truncated PNG, garbage FLAC, no caption, a non-integer idx."""
    good = [f"g{n:05d}" for n in range(6)]
    with SizedShardWriter(tmp_path, "bad", samples_per_shard=5) as writer:
        for n in range(6):
            writer.write(good[n], sample_members(n))
            if n == 1:
                writer.write("truncpng", {**sample_members(90), "png": png_bytes(90)[:40]})
            if n == 3:
                writer.write("junkflac", {**sample_members(91), "flac": b"fLaC" + os.urandom(200)})
            if n == 4:
                writer.write("notext", {k: v for k, v in sample_members(92).items() if k != "txt"})
    return good


def test_corrupt_samples_are_skipped_counted_and_logged(tmp_path, caplog):
    good = _write_damaged_shard(tmp_path)
    caplog.set_level(logging.WARNING, logger="mmembed.data")
    batches = list(build_eval_loader([str(tmp_path / "bad-{000000..000001}.tar")], PLAIN, batch_size=4,
                                     extra_keys=()))
    assert [key for b in batches for key in b["__key__"]] == good
    assert batches[-1]["__skipped__"] == 3
    assert batches[-1]["__consumed__"] == 9  # raw samples pulled, the three corrupt ones included
    messages = {key: [r.getMessage() for r in caplog.records if key in r.getMessage()]
                for key in ("truncpng", "junkflac", "notext")}
    assert all(len(found) == 1 for found in messages.values()), messages
    assert "image" in messages["truncpng"][0] and "audio" in messages["junkflac"][0]
    assert "missing text" in messages["notext"][0]


def test_truncated_tar_keeps_earlier_samples_and_reports_the_shard(tmp_path, caplog):
    shards = write_numbered_shards(tmp_path, "t", list(range(10)), per_shard=5)
    damaged = shards.shards[0]
    with open(damaged, "r+b") as handle:
        handle.truncate(os.path.getsize(damaged) // 2)
    caplog.set_level(logging.WARNING, logger="mmembed.data")
    batches = list(build_eval_loader([shards.pattern], PLAIN, batch_size=3, extra_keys=()))
    numbers = _numbers(batches)
    assert numbers[-5:] == [5, 6, 7, 8, 9]  # the intact second shard, fully
    survivors = numbers[:-5]
    assert survivors == list(range(len(survivors))) and len(survivors) < 5
    assert any("t-000000.tar" in r.getMessage() for r in caplog.records)
    assert batches[-1]["__skipped__"] >= 1


def test_source_sample_counts(tmp_path):
    a, b = _two_sources(tmp_path)
    assert expand_urls(a)[-1].endswith("a-000002.tar") and len(expand_urls([a, b])) == 6
    assert source_num_samples(ShardSource(urls=[a, b])) == 60
    assert source_num_samples(ShardSource(urls=[a], num_samples=7)) == 7
    os.remove(tmp_path / "a" / "sizes.json")
    with pytest.raises(FileNotFoundError, match=r"sizes\.json"):
        count_samples(a)


def test_configuration_errors_name_the_problem(tmp_path):
    a, b = _two_sources(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nope-000001\.tar"):
        build_eval_loader([str(tmp_path / "nope-{000000..000001}.tar")], PLAIN, batch_size=2)
    few = _train_cfg([ShardSource(urls=[a])], resampled=False, num_workers=2)
    with pytest.raises(ValueError, match=r"world_size x num_workers = 2 x 2 = 4 shards.*only 3"):
        build_train_loader(few, PLAIN, batch_size=2, seed=0, rank=0, world_size=2)
    # Several sources in epoch mode: each source needs its own shard per worker, and the error names it.
    two = _train_cfg([ShardSource(urls=[a], weight=2.0), ShardSource(urls=expand_urls(b)[:1], name="bee")],
                     resampled=False, num_workers=2)
    with pytest.raises(ValueError, match=r"data\.train\[1\] \('bee'\).*only 1"):
        build_train_loader(two, PLAIN, batch_size=2, seed=0)
    with pytest.raises(ValueError, match=r"no decoder for modalities.*'video'"):
        build_eval_loader([a], {"video": char_tokens}, batch_size=2)
    with pytest.raises(ValueError, match="resume"):
        build_train_loader(_train_cfg([ShardSource(urls=[a])]), PLAIN, batch_size=2, seed=0,
                           resume={"consumed": {3: 10}})


def test_variable_shape_preprocessor_fails_with_a_clear_error(tmp_path):
    # "caption 9" and "caption 10" tokenise to different lengths.
    shards = write_numbered_shards(tmp_path, "v", list(range(8, 12)), per_shard=4)
    ragged = {"text": lambda text: torch.zeros(len(text))}
    with pytest.raises(ValueError, match=r"cannot batch 'text'.*fixed shape"):
        list(build_eval_loader([shards.pattern], ragged, batch_size=4, extra_keys=()))
