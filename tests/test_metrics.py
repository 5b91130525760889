import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

from tests.conftest import DEVICES
from utils.metrics import psnr


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
