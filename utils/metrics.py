"""Image quality against a clean reference, computed on whatever device the tensors live on.

Both metrics work in float64 and return tensors (no host sync); the loop reads them only at its
logged rows, and only when a clean image exists.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import shift
from torch import Tensor


def psnr(
    x: Tensor, ref: Tensor, data_range: float = 1.0, dim: tuple[int, ...] | None = None
) -> Tensor:
    """Peak signal-to-noise ratio 10 log10(range² / MSE(x, ref)) in dB: a 0-dim tensor, or one
    value per image when ``dim`` names the dimensions of an image (e.g. (1, 2, 3) for K×C×H×W).

    Agrees with skimage's ``peak_signal_noise_ratio`` to well under 1e-4 dB (tested).
    """
    mse = ((x.detach().double() - ref.detach().double()) ** 2).mean(dim=dim)
    return 10.0 * torch.log10(data_range**2 / mse)


def ssim(x: Tensor, ref: Tensor, data_range: float = 1.0, sigma: float = 1.5) -> Tensor:
    """``ssim_of`` in float64 on detached tensors: the metric (see there)."""
    return ssim_of(x.detach().double(), ref.detach().double(), data_range, sigma)


SSIM_PADDINGS = ("zero", "valid")


def ssim_of(x: Tensor, ref: Tensor, data_range: float = 1.0, sigma: float = 1.5,
            padding: str = "valid") -> Tensor:  # fmt: skip
    """Structural similarity of Wang, Bovik, Sheikh, Simoncelli (IEEE TIP 2004), one value per
    image of a (K, C, H, W) batch: local means, variances and covariance under an 11×11 Gaussian
    window (σ = 1.5, population statistics), constants (0.01 L)² and (0.03 L)², averaged over
    the window's positions and over the channels.

    ``padding="valid"`` (the metric): the positions where the window fits inside the image. It
    equals ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, channel_axis=0)`` per image (tested), the setting skimage names
    as Wang et al.'s, and MATLAB's ssim.m ('valid' filtering); both sides must be at least 11
    pixels. ``padding="zero"``: every pixel, the statistics of the border windows computed with
    zeros outside the image (``F.conv2d(..., padding=5)``), as SelfDeblur's SSIM.py, whose
    1 − SSIM is its loss (Ren et al., CVPR 2020). Differentiable, in x's dtype (the 1 − SSIM
    loss of ``utils.losses``).
    """
    if padding not in SSIM_PADDINGS:
        raise ValueError(f"padding must be one of {SSIM_PADDINGS}, got {padding!r}")
    radius = int(3.5 * sigma + 0.5)  # skimage's (scipy's) truncation of the Gaussian
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    window = torch.exp(-(t**2) / (2 * sigma**2))
    window = window / window.sum()
    k, c, h, w = x.shape
    if padding == "valid" and min(h, w) < 2 * radius + 1:
        raise ValueError(f"SSIM needs images of at least {2 * radius + 1} pixels, got {h}x{w}")
    pad = (radius,) * 4 if padding == "zero" else None

    def blur(image: Tensor) -> Tensor:  # separable filtering of every channel
        flat = image.reshape(k * c, 1, image.shape[-2], image.shape[-1])
        if pad is not None:  # zeros outside: the 2-D window's zero-padded convolution
            flat = F.pad(flat, pad)
        flat = F.conv2d(flat, window.view(1, 1, -1, 1))
        return F.conv2d(flat, window.view(1, 1, 1, -1))

    a, b = x, ref.to(x.dtype)
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return index.reshape(k, -1).mean(1)


class OraclePeak(torch.nn.Module):
    """The best PSNR against the clean image over **every** iteration, and its iteration, of
    each named estimate (the output x, the moving average, ...) of K runs, kept on the device
    (no host sync): an oracle, as it uses the ground truth. The lottery image prior's paper
    reports it for the 0.99 moving average (Chasing-Better-DIPs, 3_init_Eval_LIP.py:221-224:
    ``best_psnr_gt = max(psrn_gt, best_psnr_gt)`` of ``out_avg`` at every iteration)."""

    def __init__(self, names: list[str], runs: int) -> None:
        super().__init__()
        self.names = list(names)
        for name in self.names:
            self.register_buffer(f"psnr{name}", torch.full((runs,), -math.inf, dtype=torch.float64))
            self.register_buffer(f"iteration{name}", torch.full((runs,), -1, dtype=torch.long))

    def update(self, iteration: int, images: dict[str, Tensor], clean: Tensor) -> None:
        for name in self.names:
            value = psnr(images[name], clean, dim=(1, 2, 3))
            best = getattr(self, f"psnr{name}")
            better = value > best  # NaN (a diverged run) never is
            setattr(self, f"psnr{name}", torch.where(better, value, best))
            when = getattr(self, f"iteration{name}")
            setattr(self, f"iteration{name}", torch.where(better, iteration, when))

    def outcome(self, run: int) -> dict[str, float | int]:
        """Run ``run``'s peaks (a host sync: after the loop)."""
        out = {}
        for name in self.names:
            best, when = getattr(self, f"psnr{name}")[run], getattr(self, f"iteration{name}")[run]
            out[f"oracle_every_iteration_best_psnr{name}"] = float(best)
            out[f"oracle_every_iteration_best_iteration{name}"] = int(when)
        return out


# Per-image metrics of a (K, C, H, W) batch against its clean reference: (K,) tensors.
METRICS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "psnr": lambda x, clean: psnr(x, clean, dim=(1, 2, 3)),
    "ssim": ssim,
}


def kernel_correlation(estimate: np.ndarray, true: np.ndarray) -> float:
    """How well a blur kernel estimate matches the true kernel, up to a shift and a size: the
    largest normalised cross-correlation max_t <k̂, k(· − t)> / (‖k̂‖ ‖k‖) over every relative
    position t of the two 2-D arrays (``scipy.signal.correlate`` in 'full' mode), in [0, 1] for
    non-negative kernels, 1 when one is a shifted copy of the other. A shift of the kernel is
    undone by an opposite shift of the image in blind deblurring, and an over-specified kernel
    size leaves the estimate anywhere in its larger box, so both are ignored."""
    from scipy.signal import correlate

    a, b = np.asarray(estimate, np.float64), np.asarray(true, np.float64)
    return float(correlate(a, b, mode="full").max() / (np.linalg.norm(a) * np.linalg.norm(b)))


@dataclass(frozen=True)
class Aligned:
    """An estimate aligned to its reference by ``align``: the two scored crops (C, h, w), the
    shift applied to the estimate (rows, columns; ``scipy.ndimage.shift``'s sign: the content
    moves by +shift) and the sum of squared differences of the crops."""

    estimate: np.ndarray
    reference: np.ndarray
    shift: tuple[float, float]
    ssd: float

    def psnr(self, data_range: float = 1.0) -> float:
        """10 log10(range² / (ssd / n)) over the n entries of the crops (∞ when ssd = 0)."""
        if self.ssd == 0:
            return math.inf
        return float(10 * np.log10(data_range**2 * self.reference.size / self.ssd))

    def ssim(self, data_range: float = 1.0) -> float:
        pair = [torch.from_numpy(a)[None] for a in (self.estimate, self.reference)]
        return ssim(*pair, data_range).item()

    def spectral(self) -> float:
        """The largest singular value of the difference of the crops (MATLAB's ``norm`` of a
        matrix), the channels stacked as rows: (C·h) × w."""
        difference = (self.estimate - self.reference).reshape(-1, self.reference.shape[-1])
        return float(np.linalg.norm(difference, 2))


# Levin et al.'s evaluation (comp_upto_shift.m): border cropped, shift range and step, in pixels.
LEVIN_BORDER, LEVIN_SHIFT, LEVIN_STEP = 15, 5.0, 0.25


def align(estimate: np.ndarray, reference: np.ndarray, border: int = LEVIN_BORDER,
          max_shift: float = LEVIN_SHIFT, step: float = LEVIN_STEP) -> Aligned:  # fmt: skip
    """Levin et al.'s evaluation of blind deblurring (CVPR 2009, ``comp_upto_shift.m``; used by
    SelfDeblur): the estimate x̂ shifted by the t that minimises the sum of squared differences

        SSD(t) = Σ_{p ∈ Ω} (x̂(p − t) − x(p))²,   t ∈ {−m, −m + s, …, m}²,

    over Ω, the reference without a border of ``border`` pixels on every side, then both cropped
    to Ω. Blind deblurring recovers x and k only up to a shift (x(· − t) ∗ k(· + t) = x ∗ k), so
    a shifted estimate is not an error. Levin et al.'s setting is the default: border 15,
    m = 5 px, s = 0.25 px (41² shifts), bilinear interpolation (MATLAB's ``interp2``), so that
    scores compare with published ones; a kernel of the true size leaves the estimate a few
    pixels off at most, an over-specified one can leave it further (pass a larger m, ≤ border).

    x̂(p − t) is ``scipy.ndimage.shift(x̂, t, order=1)`` (bilinear, as Levin's code), computed as
    an integer shift (a slice) of x̂ shifted by t's fractional part: the same numbers (bilinear
    weights depend on the fractional part only) from 1/s² SciPy calls instead of (2m/s + 1)².
    With m ≤ border every pixel read lies inside the image, so the boundary mode never matters.
    ``estimate`` and ``reference``: (H, W) or (C, H, W) of one shape, any H, W > 2·border."""
    est, ref = (np.asarray(a, np.float64) for a in (estimate, reference))
    if est.shape != ref.shape:
        raise ValueError(f"the estimate is {est.shape} but the reference {ref.shape}")
    est, ref = (a[None] if a.ndim == 2 else a for a in (est, ref))
    h, w = ref.shape[-2:]
    if max_shift > border or min(h, w) <= 2 * border:
        raise ValueError(f"need max_shift <= border < side / 2, got {max_shift}, {border}, {h}x{w}")
    target = ref[:, border : h - border, border : w - border]
    offsets = np.arange(round(2 * max_shift / step) + 1) * step - max_shift
    moved: dict[tuple[float, float], np.ndarray] = {}
    best = Aligned(est, ref, (0.0, 0.0), math.inf)
    for dy in offsets:
        for dx in offsets:
            (ny, fy), (nx, fx) = ((int(math.floor(d)), d - math.floor(d)) for d in (dy, dx))
            if (fy, fx) not in moved:
                moved[fy, fx] = shift(est, (0, fy, fx), order=1, mode="nearest", prefilter=False)
            crop = moved[fy, fx][:, border - ny : h - border - ny, border - nx : w - border - nx]
            ssd = float(((crop - target) ** 2).sum())
            if ssd < best.ssd:
                best = Aligned(crop, target, (float(dy), float(dx)), ssd)
    return best


ERROR_RATIOS = ("ssd", "spectral")


def error_ratio(estimate: Aligned, true_kernel: Aligned, kind: str = "ssd") -> float:
    """The error ratio of a blind estimate x̂ over the non-blind deconvolution x̂_k with the
    true kernel, each ``align``-ed on its own to the cropped ground truth x:

    * ``ssd``: Levin et al.'s (CVPR 2009, their code and tables), SSD(x̂) / SSD(x̂_k) =
      ‖x̂ − x‖²_F / ‖x̂_k − x‖²_F, a ratio of squared Frobenius norms;
    * ``spectral``: SelfDeblur's (statistic_levin.m:103, ``norm(tI - x_c) / norm(tI_groundk -
      x_c)``): MATLAB's ``norm`` of a matrix is its largest singular value, so the ratio of the
      spectral norms ‖x̂ − x‖₂ / ‖x̂_k − x‖₂, not squared (``Aligned.spectral``).

    The two are different statistics: tables of one are not comparable with the other's.
    ``success_share`` counts the cases below Levin et al.'s threshold 3 for either. 1 when both
    errors are equal (0/0 included), infinite when only the reference is exact."""
    if kind not in ERROR_RATIOS:
        raise ValueError(f"kind must be one of {ERROR_RATIOS}, got {kind!r}")
    pair = (estimate, true_kernel)
    a, b = (e.ssd for e in pair) if kind == "ssd" else (e.spectral() for e in pair)
    if a == b:
        return 1.0
    return a / b if b > 0 else math.inf


def success_share(ratios, threshold: float = 3.0) -> float:
    """The fraction of error ratios below ``threshold`` (Levin et al.'s 'below 3' success)."""
    ratios = list(ratios)
    return sum(r < threshold for r in ratios) / len(ratios) if ratios else math.nan


def twin(x: Tensor) -> Tensor:
    """The twin image of Fourier phase retrieval, conj(x(−r mod N)) over the last two
    dimensions: |F(twin(x))| = |F(x)| (the flip that maps index i to −i mod N, conjugated)."""
    return x.flip(-2, -1).roll((1, 1), (-2, -1)).conj()


def align_fourier(estimate: Tensor, reference: Tensor, phase: bool = True) -> Tensor:
    """``estimate`` moved onto ``reference`` over the trivial ambiguities of Fourier phase
    retrieval, which every object of the same |F(x)| on a canvas shares (Fienup, 1982; Bates,
    1982): the circular shifts x(r − t), the twin conj(x(−r)) (``twin``) and, with ``phase``,
    the global phase e^{iθ} x. Of these the one closest to the reference in the Frobenius norm:

        min_{x', t, θ} ‖e^{iθ} x'(· − t) − x‖²,   x' ∈ {x̂, twin(x̂)},

    = ‖x̂‖² + ‖x‖² − 2 max |c(t)|, c(t) = Σ_r conj(x'(r − t)) x(r) = F⁻¹(conj(F x') F x)(t), so every
    shift is scored at once by FFTs, and θ = arg c(t). Without ``phase`` (real images, e.g.
    magnitudes, where −x is no candidate) the score is Re c(t), θ = 0. (K, C, H, W) tensors, real
    or complex, any H, W; the shift is common to the C channels; on the device, without a host
    sync. prDeep's disambig2Drfft.m (ricedsp/prDeep) does this search one shift at a time and
    flips without conjugating (right for real images only)."""
    k, c, h, w = estimate.shape
    candidates = torch.stack([estimate, twin(estimate)])  # (2, K, C, H, W)
    spectrum = torch.fft.fft2(reference.to(candidates.dtype))
    corr = torch.fft.ifft2(torch.fft.fft2(candidates).conj() * spectrum).sum(2)  # (2, K, H, W)
    score = corr.abs() if phase else corr.real
    best = score.transpose(0, 1).reshape(k, -1).argmax(1)  # (K,) over (twin?, row, column)
    which, shift = best // (h * w), best % (h * w)
    ti, tj = shift // w, shift % w
    device = estimate.device
    runs, channels = torch.arange(k, device=device), torch.arange(c, device=device)
    rows = (torch.arange(h, device=device) - ti[:, None]) % h  # r − t
    cols = (torch.arange(w, device=device) - tj[:, None]) % w
    chosen = candidates[which, runs]  # (K, C, H, W)
    moved = chosen[runs[:, None, None, None], channels[:, None, None], rows[:, None, :, None],
                   cols[:, None, None, :]]  # fmt: skip
    if not phase:
        return moved
    at = corr[which, runs, ti, tj]
    return moved * torch.where(at.abs() > 0, at / at.abs(), 1).view(k, 1, 1, 1)
