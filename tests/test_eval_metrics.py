"""Zero-shot and retrieval metrics against hand-built cases and brute-force numpy implementations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmembed.eval.retrieval import positive_ranks, recall_at_k, retrieval_metrics
from mmembed.eval.templates import list_template_sets, render, resolve_templates
from mmembed.eval.zeroshot import ZeroShotAccumulator, zero_shot_metrics

# ---------------------------------------------------------------- brute-force references (numpy, loops)


def naive_zero_shot(logits: np.ndarray, labels: np.ndarray, k: int) -> dict:
    n, c = logits.shape
    k = min(k, c)
    order = np.argsort(-logits, axis=1, kind="stable")
    pred = order[:, 0]
    confusion = np.zeros((c, c), dtype=np.int64)
    for y, p in zip(labels, pred):
        confusion[y, p] += 1
    recalls = [np.mean(pred[labels == cls] == cls) for cls in range(c) if np.any(labels == cls)]
    return {
        "top1": float(np.mean(pred == labels)),
        "topk": float(np.mean([labels[i] in order[i, :k] for i in range(n)])),
        "mpcr": float(np.mean(recalls)),
        "confusion": confusion,
    }


def naive_recall(queries: np.ndarray, candidates: np.ndarray, ks: list[int]) -> dict[int, float]:
    ranks = []
    for i in range(len(queries)):
        scores = candidates @ queries[i]
        ranks.append(int(np.where(np.argsort(-scores, kind="stable") == i)[0][0]))
    ranks_arr = np.array(ranks)
    return {k: float(np.mean(ranks_arr < k)) for k in ks}


def unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


# ---------------------------------------------------------------- zero-shot


def test_zero_shot_hand_built_case() -> None:
    # 3 classes; rows give the score order explicitly.
    logits = torch.tensor([
        [0.9, 0.1, 0.0],  # label 0 -> predicted 0
        [0.2, 0.8, 0.1],  # label 0 -> predicted 1 (0 is 2nd)
        [0.1, 0.7, 0.3],  # label 1 -> predicted 1
        [0.6, 0.1, 0.5],  # label 2 -> predicted 0 (2 is 2nd)
        [0.9, 0.5, 0.1],  # label 2 -> predicted 0 (2 is 3rd)
    ])
    labels = torch.tensor([0, 0, 1, 2, 2])
    top2 = zero_shot_metrics(logits, labels, k=2)
    assert top2.top1 == pytest.approx(2 / 5)
    assert top2.top5 == pytest.approx(4 / 5)  # k=2: only the last sample misses
    # Per-class recall: class 0 -> 1/2, class 1 -> 1/1, class 2 -> 0/2.
    assert top2.mean_per_class_recall == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert top2.confusion.tolist() == [[1, 1, 0], [0, 1, 0], [2, 0, 0]]
    # The default k=5 is capped at 3 classes: every sample is a hit.
    assert zero_shot_metrics(logits, labels).top5 == pytest.approx(1.0)


def test_zero_shot_matches_brute_force_and_streaming_equals_one_shot() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(97, 11, generator=gen)
    labels = torch.randint(0, 9, (97,), generator=gen)  # classes 9 and 10 never occur: excluded from recall
    expected = naive_zero_shot(logits.numpy(), labels.numpy(), k=5)
    streamed = ZeroShotAccumulator(11)
    for start in range(0, 97, 13):
        streamed.update(logits[start : start + 13], labels[start : start + 13])
    for result in (zero_shot_metrics(logits, labels), streamed.compute()):
        assert result.top1 == pytest.approx(expected["top1"])
        assert result.top5 == pytest.approx(expected["topk"])
        assert result.mean_per_class_recall == pytest.approx(expected["mpcr"])
        np.testing.assert_array_equal(result.confusion, expected["confusion"])
        assert result.num_samples == 97


def test_zero_shot_rejects_out_of_range_label() -> None:
    with pytest.raises(ValueError, match="class label 4 outside"):
        zero_shot_metrics(torch.randn(3, 4), torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match=r"logits must be \[B, 4\]"):
        ZeroShotAccumulator(4).update(torch.randn(3, 5), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="no samples"):
        ZeroShotAccumulator(4).compute()


# ---------------------------------------------------------------- retrieval


def test_retrieval_hand_built_case() -> None:
    # Candidates are the basis vectors; query i is rotated so its match lands at a known rank.
    candidates = torch.eye(4)
    queries = torch.tensor([
        [1.0, 0.0, 0.0, 0.0],  # match 0 is 1st
        [0.5, 0.4, 0.3, 0.0],  # match 1 is 2nd
        [0.9, 0.8, 0.1, 0.0],  # match 2 is 3rd
        [0.4, 0.3, 0.2, 0.1],  # match 3 is 4th
    ])
    assert positive_ranks(queries, candidates).tolist() == [0, 1, 2, 3]
    assert recall_at_k(queries, candidates, ks=[1, 2, 3, 10]) == {1: 0.25, 2: 0.5, 3: 0.75, 10: 1.0}


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64, 500])
def test_retrieval_matches_brute_force_for_every_chunk_size(chunk_size: int) -> None:
    a, b = unit(150, 8, seed=1), unit(150, 8, seed=2)
    b = F.normalize(b + 1.2 * a, dim=-1)  # correlated pairs, so recalls are neither 0 nor 1
    ks = [1, 5, 10]
    metrics = retrieval_metrics(a, b, a_name="image", b_name="text", ks=ks, chunk_size=chunk_size)
    expected_ab = naive_recall(a.numpy(), b.numpy(), ks)
    expected_ba = naive_recall(b.numpy(), a.numpy(), ks)
    for k in ks:
        assert metrics[f"image_to_text_R@{k}"] == pytest.approx(expected_ab[k])
        assert metrics[f"text_to_image_R@{k}"] == pytest.approx(expected_ba[k])
    assert 0.0 < metrics["image_to_text_R@1"] < 1.0
    unchunked = positive_ranks(a, b, chunk_size=len(a))
    assert torch.equal(positive_ranks(a, b, chunk_size=chunk_size), unchunked)


def test_retrieval_duplicate_candidates_count_in_favour_of_the_match() -> None:
    # Two identical captions: whichever query is asked, the tie with the duplicate must not cost a rank.
    b = unit(5, 6, seed=3)
    b[1] = b[0]
    a = b.clone()
    assert positive_ranks(a, b).tolist() == [0, 0, 0, 0, 0]


def test_retrieval_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="equal shapes"):
        positive_ranks(unit(4, 3, 0), unit(5, 3, 0))
    with pytest.raises(ValueError, match="chunk_size"):
        positive_ranks(unit(4, 3, 0), unit(4, 3, 0), chunk_size=0)
    with pytest.raises(ValueError, match="cut-offs"):
        recall_at_k(unit(4, 3, 0), unit(4, 3, 0), ks=[0])


# ---------------------------------------------------------------- templates


def test_template_sets_and_explicit_templates() -> None:
    assert {"openai", "simple", "audio"} <= set(list_template_sets())
    openai = resolve_templates("openai")
    assert len(openai) == 80 and render(openai[0], "dog") == "a bad photo of a dog."
    assert [render(t, "rain") for t in resolve_templates("audio")][:3] == [
        "this is a sound of rain.", "someone saying rain.", "the sound of rain."]
    mixed = resolve_templates(["simple", "a {} with {braces}."])
    assert len(mixed) == 8 and render(mixed[-1], "cat") == "a cat with {braces}."


@pytest.mark.parametrize("bad", ["imagenet", ["a photo of a dog"], []])
def test_bad_templates_are_named(bad: object) -> None:
    with pytest.raises(ValueError, match="template"):
        resolve_templates(bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------- label-level retrieval (binding on scenes)


def naive_label_recall(queries: np.ndarray, candidates: np.ndarray, labels: np.ndarray, ks: list[int]) -> dict:
    hits = []
    for i in range(len(queries)):
        order = np.argsort(-(candidates @ queries[i]), kind="stable")
        same = np.where(labels[order] == labels[i])[0]
        hits.append(same[0] if len(same) else len(order))
    return {k: float(np.mean(np.array(hits) < k)) for k in ks}


def test_label_recall_matches_brute_force_in_chunks_and_both_directions() -> None:
    from mmembed.eval.retrieval import label_recall_at_k, label_retrieval_metrics

    a, b = unit(61, 8, 1), unit(61, 8, 2)
    labels = torch.randint(0, 7, (61,), generator=torch.Generator().manual_seed(3))
    want = naive_label_recall(a.numpy(), b.numpy(), labels.numpy(), [1, 3, 10])
    for chunk in (5, 61, 1000):
        assert label_recall_at_k(a, b, labels, labels, [1, 3, 10], chunk) == pytest.approx(want)
    named = label_retrieval_metrics(a, b, labels, a_name="audio", b_name="image", ks=[1, 3])
    assert named["audio_to_image_label_R@1"] == pytest.approx(want[1])
    assert named["image_to_audio_label_R@3"] == pytest.approx(naive_label_recall(b.numpy(), a.numpy(),
                                                                                 labels.numpy(), [3])[3])
    # A label shared by every item makes every query a hit; unique labels reduce it to plain recall.
    assert label_recall_at_k(a, b, torch.zeros(61), torch.zeros(61), [1])[1] == 1.0
    unique = torch.arange(61)
    assert label_recall_at_k(a, b, unique, unique, [1, 3]) == pytest.approx(recall_at_k(a, b, [1, 3]))


def test_label_chance_is_the_exact_expectation_of_a_random_ranking() -> None:
    from mmembed.eval.retrieval import label_chance

    labels = torch.tensor([0] * 5 + [1] * 3 + [2] * 2)  # N = 10
    # Exact: mean over queries of 1 - C(10 - n, k) / C(10, k).
    from math import comb

    for k in (1, 2, 4):
        exact = np.mean([1 - comb(10 - n, k) / comb(10, k) for n in [5] * 5 + [3] * 3 + [2] * 2])
        assert label_chance(labels, labels, k) == pytest.approx(exact)
    rng = np.random.default_rng(0)
    simulated = np.mean([labels[rng.permutation(10)[:2]].eq(labels[q]).any().item()
                         for q in rng.integers(0, 10, 20000)])
    assert label_chance(labels, labels, 2) == pytest.approx(simulated, abs=0.01)
