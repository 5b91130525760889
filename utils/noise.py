"""Synthetic corruptions y = corrupt(x): the noise types of DOP's paper and of the early-stopping
paper (Wang, Li, Zhuang, Chen, Liang, Sun, TMLR 2023, arXiv 2112.06074), each seeded and saved.

Every corruption maps a clean (C, H, W) image in [0, 1] and a level to a ``Corruption``: the noisy
image, clipped to [0, 1], and the arrays that make the realization (saved in the run's noise.npz).
Every entry (every channel of every pixel) is corrupted independently, as in both papers' code,
except ``gaussian_shared``.

=============== ========================================================= ======================
``--noise``     y                                                         ``--nlevel``
=============== ========================================================= ======================
salt_pepper     entry → 1 or 0 (equal chance) with probability p; DOP's   p ∈ [0, 1], default 0.5
gaussian        clip(x + σ n), n ~ N(0, 1)                                σ ≥ 0, default 0.18
gaussian_shared clip(x + σ n), one n per pixel for every channel (the     σ ≥ 0, default 25/255
                deep decoder's experiments, Heckel & Hand, ICLR 2019)
mixture         salt_pepper(p) of clip(x + σ n), σ = ``--mixture_sigma``  p ∈ [0, 1], default 0.3
shot            clip(Poisson(c x) / c)                                    c > 0, default 12
speckle         clip(x + σ x n), n ~ N(0, 1)                              σ ≥ 0, default 0.35
=============== ========================================================= ======================

The early-stopping paper's levels: Gaussian σ 0.12 / 0.18 / 0.26, impulse 30 / 50 / 70%, shot
c ≈ 25 / 12 / 5, speckle 0.20 / 0.35 / 0.45 (REFERENCE.md §3); the defaults are the middle ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np


@dataclass(frozen=True)
class Corruption:
    """A realization: the noisy image (float32) and the arrays it was made from."""

    noisy: np.ndarray
    fields: dict[str, np.ndarray] = field(default_factory=dict)


def salt_and_pepper(clean: np.ndarray, amount: float, seed: int) -> Corruption:
    """Each entry set to 1 ("salt") or 0 ("pepper") with probability ``amount``, masks saved.

    The public code calls ``skimage.util.random_noise(img, mode='s&p', amount=p)``; we draw the two
    Bernoulli fields in the same order from the same generator, so for an integer seed the result
    equals ``random_noise(img, mode='s&p', amount=p, rng=seed)`` exactly (tested).
    """
    return _salt_and_pepper(clean, amount, np.random.default_rng(seed))


def gaussian(clean: np.ndarray, sigma: float, seed: int, same_in_channels: bool = False
             ) -> Corruption:  # fmt: skip
    """clip(x + σ n) with n ~ N(0, 1) per entry (or one n per pixel for every channel,
    ``same_in_channels``, as in the deep decoder's experiments); n is saved."""
    rng = np.random.default_rng(seed)
    shape = (1, *clean.shape[1:]) if same_in_channels else clean.shape
    n = np.broadcast_to(rng.standard_normal(shape, dtype=np.float32), clean.shape)
    return Corruption(_clip(clean + sigma * n), {"gaussian": np.ascontiguousarray(n)})


def mixture(clean: np.ndarray, amount: float, seed: int, sigma: float) -> Corruption:
    """Gaussian noise of std σ, then salt-and-pepper outliers on a fraction ``amount`` of entries:
    dense noise plus sparse outliers, DOP's model y = x + s + n."""
    rng = np.random.default_rng(seed)
    n = rng.standard_normal(clean.shape, dtype=np.float32)
    corrupted = _salt_and_pepper(_clip(clean + sigma * n), amount, rng)
    return Corruption(corrupted.noisy, corrupted.fields | {"gaussian": n})


def shot(clean: np.ndarray, c: float, seed: int) -> Corruption:
    """Poisson (shot) noise with c photons at full intensity: clip(Poisson(c x) / c)."""
    counts = np.random.default_rng(seed).poisson(c * clean.astype(np.float64))
    return Corruption(_clip(counts / c), {"counts": counts.astype(np.int32)})


def speckle(clean: np.ndarray, sigma: float, seed: int) -> Corruption:
    """Multiplicative noise: clip(x + σ x n), n ~ N(0, 1) per entry."""
    n = np.random.default_rng(seed).standard_normal(clean.shape, dtype=np.float32)
    return Corruption(_clip(clean + sigma * clean * n), {"gaussian": n})


@dataclass(frozen=True)
class NoiseType:
    make: Callable[..., Corruption]  # (clean, level, seed[, sigma]) -> Corruption
    default: float  # the default --nlevel
    valid: Callable[[float], bool]
    meaning: str  # what --nlevel is, for messages


FRACTION = lambda p: 0.0 <= p <= 1.0  # noqa: E731
NOISES: dict[str, NoiseType] = {
    "salt_pepper": NoiseType(salt_and_pepper, 0.5, FRACTION, "a fraction in [0, 1]"),
    "gaussian": NoiseType(gaussian, 0.18, lambda s: s >= 0, "a std >= 0"),
    "gaussian_shared": NoiseType(
        partial(gaussian, same_in_channels=True), 25 / 255, lambda s: s >= 0, "a std >= 0"
    ),  # fmt: skip
    "mixture": NoiseType(mixture, 0.3, FRACTION, "a fraction in [0, 1]"),
    "shot": NoiseType(shot, 12.0, lambda c: c > 0, "a photon count > 0"),
    "speckle": NoiseType(speckle, 0.35, lambda s: s >= 0, "a std >= 0"),
}


def corrupt(clean: np.ndarray, noise: str, level: float, seed: int, mixture_sigma: float = 0.05
            ) -> Corruption:  # fmt: skip
    """The corruption ``noise`` of ``clean`` at ``level`` from the seed's generator."""
    kind = NOISES[noise]
    if not kind.valid(level):
        raise ValueError(f"the {noise} level must be {kind.meaning}, got {level}")
    if noise == "mixture":
        return mixture(clean, level, seed, mixture_sigma)
    return kind.make(clean, level, seed)


def _salt_and_pepper(clean: np.ndarray, amount: float, rng: np.random.Generator) -> Corruption:
    if not 0.0 <= amount <= 1.0:
        raise ValueError(f"noise level must be in [0, 1], got {amount}")
    # The draws and their order are skimage's: `flipped`, then `salted`, each random(shape) <= q.
    flipped = _bernoulli(rng, amount, clean.shape)
    salted = _bernoulli(rng, 0.5, clean.shape)
    salt, pepper = flipped & salted, flipped & ~salted
    noisy = np.where(salt, 1.0, np.where(pepper, 0.0, clean)).astype(np.float32)
    return Corruption(noisy, {"salt": salt, "pepper": pepper})


def _bernoulli(rng: np.random.Generator, p: float, shape: tuple[int, ...]) -> np.ndarray:
    if p == 0:
        return np.zeros(shape, dtype=bool)
    if p == 1:
        return np.ones(shape, dtype=bool)
    return rng.random(shape) <= p


def _clip(image: np.ndarray) -> np.ndarray:
    return np.clip(image, 0.0, 1.0).astype(np.float32)
