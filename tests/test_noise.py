import numpy as np
import pytest
from skimage.util import random_noise

from utils.noise import salt_and_pepper


@pytest.mark.parametrize("amount", [0.0, 0.1, 0.5, 0.7, 1.0])
def test_equals_skimage_random_noise_with_the_same_seed(rng, amount: float) -> None:
    clean = rng.random((3, 37, 50)).astype(np.float32)
    ours = salt_and_pepper(clean, amount, seed=7).noisy
    theirs = random_noise(clean, mode="s&p", amount=amount, rng=7)
    np.testing.assert_allclose(ours, theirs, atol=1e-7)


def test_fraction_and_values(rng) -> None:
    clean = rng.uniform(0.1, 0.9, (3, 128, 128)).astype(np.float32)
    p = 0.3
    noise = salt_and_pepper(clean, p, seed=0)
    n = clean.size
    hit = noise.salt | noise.pepper
    # binomial: mean p n, sd sqrt(p(1-p)n); 5 sd is a test that cannot flake
    assert abs(hit.sum() - p * n) < 5 * np.sqrt(p * (1 - p) * n)
    assert abs(noise.salt.sum() - noise.pepper.sum()) < 5 * np.sqrt(p * n)
    assert not (noise.salt & noise.pepper).any()
    assert np.all(noise.noisy[noise.salt] == 1) and np.all(noise.noisy[noise.pepper] == 0)
    assert np.array_equal(noise.noisy[~hit], clean[~hit])


def test_channels_are_corrupted_independently(rng) -> None:
    clean = np.full((3, 64, 64), 0.5, np.float32)
    hit = salt_and_pepper(clean, 0.5, seed=3).noisy != 0.5
    all_three = hit.all(axis=0).mean()
    assert abs(all_three - 0.5**3) < 0.03  # independent per channel, not per pixel


def test_seed_fixes_the_realization(rng) -> None:
    clean = rng.random((1, 40, 40)).astype(np.float32)
    a, b, c = (salt_and_pepper(clean, 0.5, s).noisy for s in (1, 1, 2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("amount", [-0.1, 1.5])
def test_level_outside_unit_interval_rejected(amount: float) -> None:
    with pytest.raises(ValueError):
        salt_and_pepper(np.zeros((1, 4, 4), np.float32), amount, seed=0)
