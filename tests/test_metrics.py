import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from tests.conftest import DEVICES
from utils.metrics import psnr, ssim


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
