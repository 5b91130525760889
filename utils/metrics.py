"""Image quality metrics, computed on whatever device the tensors live on."""

from __future__ import annotations

import torch
from torch import Tensor


def psnr(
    x: Tensor, ref: Tensor, data_range: float = 1.0, dim: tuple[int, ...] | None = None
) -> Tensor:
    """Peak signal-to-noise ratio 10 log10(range^2 / MSE(x, ref)) in dB: a 0-dim tensor, or one
    value per image when ``dim`` names the dimensions of an image (e.g. (1, 2, 3) for N×C×H×W).

    The MSE is accumulated in float64 so the value agrees with skimage's
    ``peak_signal_noise_ratio`` (which works in float64) to well under 1e-4 dB; it stays on the
    device, so calling it does not synchronise with the host.
    """
    mse = ((x.detach().double() - ref.detach().double()) ** 2).mean(dim=dim)
    return 10.0 * torch.log10(data_range**2 / mse)
