import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from tests.conftest import DEVICES
from utils.metrics import align, error_ratio, psnr, ssim


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(3, 512, 512), (1, 33, 47), (3, 5, 7)])
def test_agrees_with_skimage(rng, shape: tuple[int, ...], device: str) -> None:
    ref = rng.random(shape).astype(np.float32)
    x = np.clip(ref + rng.normal(0, 0.1, shape), 0, 1).astype(np.float32)
    ours = psnr(torch.from_numpy(x).to(device), torch.from_numpy(ref).to(device))
    assert ours.device.type == device  # computed where the tensors live
    assert abs(ours.item() - peak_signal_noise_ratio(ref, x, data_range=1.0)) < 1e-4


def test_identical_images_give_infinity() -> None:
    x = torch.rand(1, 3, 8, 8)
    assert psnr(x, x).item() == float("inf")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(2, 3, 37, 50), (1, 1, 11, 64), (3, 3, 64, 64)])
def test_ssim_is_wang_et_al_as_skimage_computes_it(rng, shape, device: str) -> None:
    ref = rng.random(shape)
    x = np.clip(ref + rng.normal(0, 0.2, shape), 0, 1)
    ours = ssim(torch.from_numpy(x).to(device), torch.from_numpy(ref).to(device))
    assert ours.shape == (shape[0],) and ours.device.type == device
    for k in range(shape[0]):
        theirs = structural_similarity(x[k], ref[k], data_range=1.0, channel_axis=0,
                                       gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False)  # fmt: skip
        assert abs(ours[k].item() - theirs) < 1e-6


def test_ssim_of_an_image_with_itself_is_one_and_small_images_are_refused() -> None:
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(ssim(x, x), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least 11"):
        ssim(torch.rand(1, 1, 10, 40), torch.rand(1, 1, 10, 40))


def smooth_field(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A smooth random image in [0, 1] with structure everywhere (white noise blurred, σ = 2):
    bilinear interpolation is accurate on it, so alignment has one clear optimum."""
    from scipy.ndimage import gaussian_filter

    sigma = (0,) * (len(shape) - 2) + (2, 2)  # each channel on its own
    field = gaussian_filter(np.random.default_rng(seed).random(shape), sigma)
    return (field - field.min()) / (field.max() - field.min())


@pytest.mark.parametrize("shape", [(67, 53), (3, 45, 71)])
@pytest.mark.parametrize("moved", [(3.0, -4.0), (1.25, -2.5), (-4.75, 0.5)])
def test_align_undoes_a_known_shift_on_odd_sizes(shape, moved) -> None:
    """An image moved by a known integer or sub-pixel shift (a sub-pixel one by a cubic spline,
    not the bilinear interpolation the search uses) is moved back by the opposite shift, and
    scores far higher after the alignment than without it."""
    from scipy.ndimage import shift

    x = smooth_field(shape)
    integer = moved == (3.0, -4.0)
    estimate = shift(x, (0,) * (len(shape) - 2) + moved, order=1 if integer else 3)
    aligned, unaligned = align(estimate, x), align(estimate, x, max_shift=0)
    assert aligned.shift == (-moved[0], -moved[1])
    assert aligned.psnr() > unaligned.psnr() + 15
    assert aligned.ssim() > unaligned.ssim()
    if integer:  # undone exactly
        assert aligned.ssd < 1e-20 and aligned.psnr() > 150


def test_align_crops_exactly_the_border() -> None:
    x = smooth_field((2, 41, 37))
    a = align(x + 0.01, x)  # a constant offset: the best shift is none
    assert a.shift == (0.0, 0.0)
    assert a.reference.shape == a.estimate.shape == (2, 11, 7)  # 15 pixels off every side
    np.testing.assert_array_equal(a.reference, x[:, 15:-15, 15:-15])
    np.testing.assert_array_equal(a.estimate, x[:, 15:-15, 15:-15] + 0.01)
    assert a.ssd == pytest.approx(0.01**2 * 2 * 11 * 7)
    assert align(x, x, border=4, max_shift=1).reference.shape == (2, 33, 29)


def test_error_ratio_is_a_ratio_of_aligned_squared_errors() -> None:
    x = smooth_field((35, 33))
    noise = np.random.default_rng(1).normal(0, 0.01, x.shape)
    once, twice = align(x + noise, x, max_shift=0), align(x + 2 * noise, x, max_shift=0)
    assert error_ratio(twice, once) == pytest.approx(4.0)  # squared norms, as Levin et al.
    assert error_ratio(once, once) == 1.0
    exact = align(x, x)  # an image with itself: no error on either side
    assert exact.ssd == 0 and exact.psnr() == np.inf and error_ratio(exact, exact) == 1.0
    assert error_ratio(once, exact) == np.inf


@pytest.mark.parametrize(
    "estimate,kwargs,message",
    [((30, 40), {}, "border"), ((40, 40), {"max_shift": 16}, "border"), ((40, 41), {}, "refer")],
)
def test_align_refuses_what_it_cannot_score(estimate, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        align(np.zeros(estimate), np.zeros((estimate[0], 40)), **kwargs)
