"""Seeds derived from stable identities (seed, rank, worker, epoch, sample number), never from time.

Python's built-in `hash()` is salted per process for strings, so seeds are derived with blake2b instead:
the same parts give the same seed in every process, run and machine.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed that depends on every part (and their order)."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def derive_rng(*parts: int | str) -> random.Random:
    return random.Random(derive_seed(*parts))


@contextmanager
def seeded_global_rngs(seed: int, restore: bool = True) -> Iterator[None]:
    """Seed `random`, `numpy.random` and torch's CPU generator for one sample, then (optionally) restore them.

    Preprocessors draw their augmentations from these global generators. Seeding them per sample makes
    a sample's augmentation independent of how many samples came before it, which is what lets a resumed
    stream (that skipped samples without preprocessing them) reproduce the uninterrupted one bit for bit.
    Restoring keeps the caller's generators untouched when this runs in the main process (num_workers=0);
    a DataLoader worker owns its generators and skips it (numpy's get/set_state cost ~80 us a sample).
    Only the CPU generator is seeded: `torch.manual_seed` would also reseed CUDA.
    """
    saved = None
    if restore:
        saved = (random.getstate(), np.random.get_state(), torch.default_generator.get_state())
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        if saved is not None:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.default_generator.set_state(saved[2])
