import numpy as np
import pytest
from skimage.util import random_noise

from utils.noise import NOISES, corrupt, gaussian, salt_and_pepper


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
    salt, pepper = noise.fields["salt"], noise.fields["pepper"]
    n = clean.size
    hit = salt | pepper
    # binomial: mean p n, sd sqrt(p(1-p)n); 5 sd is a test that cannot flake
    assert abs(hit.sum() - p * n) < 5 * np.sqrt(p * (1 - p) * n)
    assert abs(salt.sum() - pepper.sum()) < 5 * np.sqrt(p * n)
    assert not (salt & pepper).any()
    assert np.all(noise.noisy[salt] == 1) and np.all(noise.noisy[pepper] == 0)
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


def test_gaussian_has_the_asked_sigma_and_is_clipped(rng) -> None:
    clean = rng.uniform(0.3, 0.7, (3, 96, 96)).astype(np.float32)
    sigma = 0.18
    noise = gaussian(clean, sigma, seed=4)
    n = noise.fields["gaussian"]
    assert abs(n.std() - 1) < 0.02 and abs(n.mean()) < 0.02  # 27 648 draws: sd of std ~0.004
    assert noise.noisy.min() >= 0 and noise.noisy.max() <= 1
    np.testing.assert_allclose(noise.noisy, np.clip(clean + sigma * n, 0, 1), atol=1e-6)
    inside = (clean + sigma * n > 0) & (clean + sigma * n < 1)
    assert abs((noise.noisy - clean)[inside].std() - sigma) < 0.02 * sigma + 0.01
    assert (clean + sigma * n > 1).any() and (noise.noisy == 1).any()  # clipping happened
    shared = gaussian(clean, sigma, seed=4, same_in_channels=True).fields["gaussian"]
    assert np.array_equal(shared[0], shared[2]) and not np.array_equal(n[0], n[2])


@pytest.mark.parametrize("noise", sorted(NOISES))
def test_every_noise_is_seeded_bounded_and_refuses_bad_levels(rng, noise: str) -> None:
    clean = rng.uniform(0.0, 1.0, (3, 20, 24)).astype(np.float32)
    level = NOISES[noise].default
    a, b = (corrupt(clean, noise, level, seed=5).noisy for _ in range(2))
    assert np.array_equal(a, b) and a.dtype == np.float32 and a.shape == clean.shape
    assert a.min() >= 0 and a.max() <= 1 and not np.array_equal(a, clean)
    with pytest.raises(ValueError):
        corrupt(clean, noise, -1.0, seed=5)


def test_mixture_is_gaussian_plus_sparse_outliers(rng) -> None:
    clean = rng.uniform(0.2, 0.8, (3, 64, 64)).astype(np.float32)
    noise = corrupt(clean, "mixture", 0.3, seed=1, mixture_sigma=0.05)
    hit = noise.fields["salt"] | noise.fields["pepper"]
    assert abs(hit.mean() - 0.3) < 0.02
    dense = np.clip(clean + 0.05 * noise.fields["gaussian"], 0, 1)
    np.testing.assert_allclose(noise.noisy[~hit], dense[~hit], atol=1e-6)
