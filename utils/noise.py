"""Sparse corruption: salt-and-pepper noise with the semantics of DOP's public code.

The public code calls ``skimage.util.random_noise(img, mode='s&p', amount=p)`` on the (C, H, W)
array: every entry (every channel of every pixel, independently) is corrupted with probability p,
and a corrupted entry becomes 1 ("salt") or 0 ("pepper") with equal chance. We draw the two
Bernoulli fields in the same order from the same generator, so for an integer seed the result equals
``random_noise(img, mode='s&p', amount=p, rng=seed)`` exactly (tests check this), while the seed
makes the realization reproducible and the masks say which entries were hit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SparseNoise:
    """A salt-and-pepper realization: ``noisy = where(salt, 1, where(pepper, 0, clean))``."""

    noisy: np.ndarray  # float32, same shape as the clean image
    salt: np.ndarray  # bool, entries set to 1
    pepper: np.ndarray  # bool, entries set to 0


def salt_and_pepper(clean: np.ndarray, amount: float, seed: int) -> SparseNoise:
    """Corrupt each entry of ``clean`` (values in [0, 1]) with probability ``amount``."""
    if not 0.0 <= amount <= 1.0:
        raise ValueError(f"noise level must be in [0, 1], got {amount}")
    rng = np.random.default_rng(seed)
    # The draws and their order are skimage's: `flipped`, then `salted`, each random(shape) <= q.
    flipped = _bernoulli(rng, amount, clean.shape)
    salted = _bernoulli(rng, 0.5, clean.shape)
    salt, pepper = flipped & salted, flipped & ~salted
    noisy = np.where(salt, 1.0, np.where(pepper, 0.0, clean)).astype(np.float32)
    return SparseNoise(noisy, salt, pepper)


def _bernoulli(rng: np.random.Generator, p: float, shape: tuple[int, ...]) -> np.ndarray:
    if p == 0:
        return np.zeros(shape, dtype=bool)
    if p == 1:
        return np.ones(shape, dtype=bool)
    return rng.random(shape) <= p
