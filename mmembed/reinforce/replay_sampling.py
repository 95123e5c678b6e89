"""Which samples `mmembed reinforce --verify` replays through the teachers, and what that proves.

Checksums prove that the shards are the bytes the build wrote (or that the manifest was rewritten along with
them); only re-running the teachers proves that the stored embeddings are the teachers' outputs. Replaying
every sample costs as much as the build, so verify replays a uniformly random, seeded subset. If a fraction f
of the N samples is corrupted (a stored embedding off by more than the codec tolerance), a draw of n samples
without replacement misses all of them with the hypergeometric probability

    P(miss) = C(N - k, n) / C(N, n) = prod_{i<n} (N - k - i) / (N - i),   k = ceil(f N),

which `samples_needed` drives below 1 - confidence. For large N this is n ~ ln(1 - confidence) / ln(1 - f):
459 samples catch a 1% corruption with probability >= 99%, whatever the dataset size.
"""

from __future__ import annotations

import math
import random
import secrets
from dataclasses import dataclass

from mmembed.errors import UsageError


def miss_probability(total: int, corrupted: int, drawn: int) -> float:
    """Probability that `drawn` samples picked without replacement from `total` include none of `corrupted`."""
    if not 0 <= corrupted <= total or not 0 <= drawn <= total:
        raise ValueError(f"need 0 <= corrupted, drawn <= total; got {corrupted}, {drawn}, {total}")
    if drawn > total - corrupted:
        return 0.0
    log_p = sum(math.log((total - corrupted - i) / (total - i)) for i in range(drawn))
    return math.exp(log_p)


def corrupted_count(total: int, fraction: float) -> int:
    """The smallest corrupted-sample count that makes up at least `fraction` of `total` (at least one)."""
    return max(1, math.ceil(fraction * total - 1e-9))


def samples_needed(total: int, fraction: float, confidence: float) -> int:
    """The fewest samples to replay so that a corrupted fraction >= `fraction` is caught with >= `confidence`."""
    if not 0 < fraction <= 1 or not 0 < confidence < 1:
        raise UsageError(f"--detect must lie in (0, 1] and --confidence in (0, 1), got {fraction} and {confidence}")
    if total == 0:
        return 0
    corrupted = corrupted_count(total, fraction)
    low, high = 0, total - corrupted + 1  # drawing more than total - corrupted cannot miss
    while low < high:
        mid = (low + high) // 2
        if miss_probability(total, corrupted, mid) <= 1 - confidence:
            high = mid
        else:
            low = mid + 1
    return min(low, total)


@dataclass(frozen=True)
class ReplayPlan:
    """The replayed sample indices (0-based over the manifest's shard order) and the guarantee they give."""

    total: int
    indices: frozenset[int]
    seed: int
    fraction: float
    confidence: float

    @classmethod
    def build(cls, total: int, *, count: int | None = None, fraction: float = 0.01, confidence: float = 0.99,
              seed: int | None = None) -> ReplayPlan:
        """`count` samples if given, else as many as the (fraction, confidence) guarantee needs."""
        seed = secrets.randbelow(2**63) if seed is None else seed
        n = samples_needed(total, fraction, confidence) if count is None else min(max(count, 0), total)
        chosen = random.Random(seed).sample(range(total), n) if total else []
        return cls(total, frozenset(chosen), seed, fraction, confidence)

    def detection_probability(self) -> float:
        """Probability that a corruption of `fraction` of the samples hits at least one replayed sample."""
        if self.total == 0:
            return 0.0
        return 1.0 - miss_probability(self.total, corrupted_count(self.total, self.fraction), len(self.indices))

    def describe(self) -> str:
        return (f"replayed {len(self.indices)} of {self.total} samples drawn at random (seed {self.seed}): a "
                f"corruption of >= {self.fraction:.2%} of the samples is caught with probability "
                f">= {self.detection_probability():.2%}")
