"""Classical denoisers a user tries first, from well-kept libraries (no training, no network).

* median filters (SciPy's ``ndimage.median_filter``, each channel separately, borders mirrored):
  3×3 and 5×5, the textbook remedy for impulse noise. Neither SciPy nor scikit-image has an
  adaptive or iterated median, so none is offered.
* BM3D (Dabov, Foi, Katkovnik, Egiazarian, IEEE TIP 2007; the ``bm3d`` package of Mäkinen, Azzari
  and Foi, an optional extra: ``pip install -e ".[baselines]"``), the reference for Gaussian noise.
  It needs the noise std σ: the true σ for Gaussian noise (as in the BM3D paper), otherwise the
  wavelet estimate of scikit-image's ``estimate_sigma`` (Donoho's MAD), which uses no ground truth.

Each maps a noisy (C, H, W) float image in [0, 1] (and σ, or None) to the estimate, clipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from scipy import ndimage

from utils import InputError
from utils.metrics import METRICS


def median(noisy: np.ndarray, size: int) -> np.ndarray:
    """The median over a size×size window, channel by channel."""
    return ndimage.median_filter(noisy, size=(1, size, size), mode="mirror")


def estimated_sigma(noisy: np.ndarray) -> float:
    """The noise std estimated from the finest wavelet band (scikit-image), averaged over
    channels."""
    from skimage.restoration import estimate_sigma

    return float(estimate_sigma(noisy, channel_axis=0, average_sigmas=True))


def bm3d_denoise(noisy: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """BM3D with noise std ``sigma`` (None: estimated); colour images through ``bm3d_rgb``."""
    try:
        import bm3d
    except ImportError:
        raise InputError('BM3D needs the bm3d package: pip install -e ".[baselines]"') from None
    sigma = estimated_sigma(noisy) if sigma is None else sigma
    image = np.moveaxis(noisy, 0, -1).astype(np.float64)
    denoise = bm3d.bm3d_rgb if noisy.shape[0] == 3 else bm3d.bm3d
    out = np.asarray(denoise(image, sigma)).reshape(image.shape)
    return np.clip(np.moveaxis(out, -1, 0), 0.0, 1.0).astype(np.float32)


# name -> (noisy, sigma or None) -> estimate
BASELINES: dict[str, Callable[[np.ndarray, float | None], np.ndarray]] = {
    "median3": lambda noisy, sigma: median(noisy, 3),
    "median5": lambda noisy, sigma: median(noisy, 5),
    "bm3d": bm3d_denoise,
}


def evaluate(noisy: np.ndarray, clean: np.ndarray, sigma: float | None) -> dict[str, dict]:
    """Every baseline on one observation: its metrics against ``clean`` and its wall time."""
    rows = {}
    reference = torch.from_numpy(clean)[None]
    for name, denoise in BASELINES.items():
        start = time.perf_counter()
        out = torch.from_numpy(denoise(noisy, sigma))[None]
        seconds = time.perf_counter() - start
        rows[name] = {m: metric(out, reference).item() for m, metric in METRICS.items()}
        rows[name]["seconds"] = round(seconds, 3)
    return rows
