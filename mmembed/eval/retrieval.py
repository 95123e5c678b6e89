"""Paired retrieval: item i of modality a matches item i of modality b; Recall@k in both directions.

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
