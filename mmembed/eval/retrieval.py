"""Paired retrieval: item i of modality a matches item i of modality b; Recall@k in both directions.
With labels, label_R@k also counts any candidate of the query's label as a match (sets where many items
show the same thing, e.g. the demo's scenes).

Scores are computed one block of queries at a time against all candidates, so memory is
O(chunk_size x N) instead of O(N^2): 100k pairs never build a 100k x 100k matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)


def positive_ranks(queries: torch.Tensor, candidates: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """For each query i, the number of candidates scoring strictly higher than its match, candidate i.

    Rank 0 means the match is first; Recall@k is then mean(rank < k) for every k at once, with no top-k
    sort. Ties with the match count in its favour, so the result does not depend on sort order (exact
    duplicates, e.g. repeated captions, would otherwise be scored by an arbitrary tie-break).
    """
    if queries.ndim != 2 or candidates.ndim != 2:
        raise ValueError(f"expected [N, D] embeddings, got {list(queries.shape)} "
                         f"and {list(candidates.shape)}")
    if queries.shape != candidates.shape:
        raise ValueError(f"retrieval pairs item i with item i: need equal shapes, got {list(queries.shape)} "
                         f"queries and {list(candidates.shape)} candidates")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    ranks = []
    for start in range(0, queries.shape[0], chunk_size):
        scores = queries[start : start + chunk_size] @ candidates.T
        rows = torch.arange(scores.shape[0], device=scores.device)
        # The match's score is read from the same matmul, so it is bitwise comparable with its competitors.
        positive = scores[rows, rows + start]
        ranks.append((scores > positive[:, None]).sum(dim=1))
    return torch.cat(ranks)


def recall_at_k(
    queries: torch.Tensor, candidates: torch.Tensor, ks: Sequence[int] = DEFAULT_KS, chunk_size: int = 1024
) -> dict[int, float]:
    """{k: fraction of queries whose match is among the top k candidates}."""
    if any(k < 1 for k in ks):
        raise ValueError(f"recall cut-offs must be >= 1, got {list(ks)}")
    ranks = positive_ranks(queries, candidates, chunk_size)
    return {k: float((ranks < k).float().mean()) for k in ks}


def retrieval_metrics(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    a_name: str = "image",
    b_name: str = "text",
    ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Recall@k for a->b and b->a, named like "image_to_text_R@1" (embeddings should be unit vectors)."""
    a, b = a.float(), b.float()
    metrics = {}
    for (query_name, queries), (cand_name, cands) in (((a_name, a), (b_name, b)), ((b_name, b), (a_name, a))):
        for k, value in recall_at_k(queries, cands, ks, chunk_size).items():
            metrics[f"{query_name}_to_{cand_name}_R@{k}"] = value
    return metrics


def label_recall_at_k(queries: torch.Tensor, candidates: torch.Tensor, query_labels: torch.Tensor,
                      candidate_labels: torch.Tensor, ks: Sequence[int] = DEFAULT_KS,
                      chunk_size: int = 1024) -> dict[int, float]:
    """{k: fraction of queries with a candidate of their own label among their top k candidates}.

    Ties at the k-th score are broken by candidate order (torch.topk); with float scores they are rare."""
    if any(k < 1 for k in ks):
        raise ValueError(f"recall cut-offs must be >= 1, got {list(ks)}")
    top = min(max(ks), candidates.shape[0])
    first_hit = []
    for start in range(0, queries.shape[0], chunk_size):
        scores = queries[start : start + chunk_size] @ candidates.T
        order = scores.topk(top, dim=1).indices
        same = candidate_labels[order] == query_labels[start : start + chunk_size, None]
        # Position of the first same-label candidate (top when there is none within the top).
        first_hit.append(torch.where(same.any(dim=1), same.float().argmax(dim=1), torch.full_like(order[:, 0], top)))
    hits = torch.cat(first_hit)
    return {k: float((hits < k).float().mean()) for k in ks}


def label_chance(query_labels: torch.Tensor, candidate_labels: torch.Tensor, k: int) -> float:
    """Expected label_R@k of a random ranking: mean over queries of 1 - C(N - n, k) / C(N, k), n = candidates
    sharing the query's label."""
    total = candidate_labels.numel()
    counts = (candidate_labels[None, :] == query_labels[:, None]).sum(dim=1).double()
    miss = torch.ones_like(counts)
    for i in range(min(k, total)):  # C(N-n, k)/C(N, k) = prod_i (N-n-i)/(N-i)
        miss = miss * ((total - counts - i).clamp(min=0) / (total - i))
    return float((1 - miss).mean())


def label_retrieval_metrics(a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor, *, a_name: str, b_name: str,
                            ks: Sequence[int] = DEFAULT_KS, chunk_size: int = 1024) -> dict[str, float]:
    """label_R@k for a->b and b->a, named like "audio_to_image_label_R@1"."""
    a, b, labels = a.float(), b.float(), labels.to(a.device)
    metrics = {}
    for (query_name, queries), (cand_name, cands) in (((a_name, a), (b_name, b)), ((b_name, b), (a_name, a))):
        for k, value in label_recall_at_k(queries, cands, labels, labels, ks, chunk_size).items():
            metrics[f"{query_name}_to_{cand_name}_label_R@{k}"] = value
    return metrics
