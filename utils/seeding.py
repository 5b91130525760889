"""One ``--seed``, independent random streams for every random thing a run draws.

The network's weights, its input z, the sparse term's g and h, the corruption, the input
perturbation η, the inpainting mask, the kernel generator and the self-validation autoencoder
(its weights and its shuffles, ``utils.stopping.SelfValidation``) each get a seed of their own,
derived from the run's seed by numpy's ``SeedSequence`` (spawn key = the stream's index in
``STREAMS``). Streams are statistically independent, so no tensor is a function of another's
draws, and adding a stream at the end of ``STREAMS`` leaves the others as they were.
"""

from __future__ import annotations

import numpy as np

STREAMS = ("weights", "input", "sparse", "noise", "eta", "pixel_mask", "kernel", "sv")


def derive_seed(seed: int, stream: str) -> int:
    """The seed of ``stream`` for a run of ``seed`` (a non-negative integer below 2**63)."""
    if seed < 0:
        raise ValueError(f"seeds are non-negative integers, got {seed}")
    return seed_of(np.random.SeedSequence(seed, spawn_key=(STREAMS.index(stream),)))


def seed_of(sequence: np.random.SeedSequence) -> int:
    """A torch seed (below 2**63) from the first two 32-bit words of ``sequence``."""
    high, low = sequence.generate_state(2)
    return (int(high) << 31) | (int(low) >> 1)
