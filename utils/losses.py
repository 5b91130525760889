"""Data-fit losses of the prediction A(x) [+ s] against the observation y, one value per run.

``l2`` and ``l1`` map the residual r = prediction − y of shape (K, ...) to a (K,) tensor: the mean
over each run's entries, as ``torch.nn.MSELoss()`` / ``L1Loss()`` with mean reduction in the public
code; ``rmse`` is the square root of ``l2`` (the deep random projector's, Li, Zhuang, Liang, Sun,
CVPR 2023).
``l2_then_ssim`` is SelfDeblur's (Ren et al., CVPR 2020): the mean squared error for the first
``--loss_switch`` iterations (1000 there), then 1 − SSIM(prediction, y) (Wang et al.'s SSIM,
``utils.metrics.ssim_of``; by default with SelfDeblur's zero padding, SSIM.py: the map has the
image's size, ``--ssim_padding valid``: the metric's windows inside the image). ``--tv`` adds
λ·TV(x) of the image estimate (``total_variation``), ``--l1l2`` λ·‖∇x‖₁/‖∇x‖₂
(``gradient_l1_over_l2``, Zhuang et al.'s regulariser). The loop minimises the sum over runs, so
each run's parameters get the gradient of its own loss only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from utils.metrics import ssim_of


def l2(residual: Tensor) -> Tensor:
    """Mean squared error (1/n) Σ r_i²."""
    return residual.square().flatten(1).mean(1)


def l1(residual: Tensor) -> Tensor:
    """Mean absolute error (1/n) Σ |r_i|."""
    return residual.abs().flatten(1).mean(1)


def rmse(residual: Tensor) -> Tensor:
    """Root mean squared error ((1/n) Σ r_i²)^½."""
    return l2(residual).sqrt()


def total_variation(x: Tensor) -> Tensor:
    """The anisotropic total variation of each run's image x (K, C, H, W), normalised by its
    entries as in the random projector's code: (Σ |x[i+1, j] − x[i, j]| + Σ |x[i, j+1] − x[i, j]|)
    / (C·H·W)."""
    vertical = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).sum(1)
    horizontal = (x[..., 1:] - x[..., :-1]).abs().flatten(1).sum(1)
    return (vertical + horizontal) / x[0].numel()


L1L2_EPS = 1e-8  # ours: only a constant image (∇x = 0) feels it, where it makes 0/0 a 0


def gradient_l1_over_l2(x: Tensor, eps: float = L1L2_EPS) -> Tensor:
    """The ℓ1/ℓ2 ratio of each run's image gradient, a scale-invariant sparsity measure (Krishnan,
    Tay, Fergus, CVPR 2011, "Blind deconvolution using a normalized sparsity measure"; the
    regulariser λ‖∇x‖₁/‖∇x‖₂ of Zhuang et al., IJCV 2023, arXiv 2208.09483), with both norms
    taken as means over the m differences, as the data fit (a mean) and ``total_variation``:

        ∇x = (x[i+1, j] − x[i, j], x[i, j+1] − x[i, j])   (anisotropic forward differences, every
                                                          channel, no boundary term),
        ratio = (1/m) Σ|∇x| / sqrt((1/m) Σ (∇x)² + ε²) = ‖∇x‖₁ / (√m ‖∇x‖₂)   (ε → 0),

    for x (K, C, H, W) → (K,). It lies in [1/√m, 1] (1/√m: one nonzero difference; 1: all of
    equal size) and ratio(c·x) = ratio(x) for c ≠ 0, so unlike TV it does not favour shrinking
    the image's contrast, only fewer edges. The paper's exact form could not be read. The
    differences are Krishnan et al.'s; the means (the plain ratio over √m) are our reading of the
    talk's λ: with them λ = 1e-4 weighs as much as TV's 2e-3 beside a mean squared misfit, while
    the plain ratio at 1e-4 held a blind run's misfit at 20 times the noise variance
    (docs/RESULTS.md); ε is ours, small enough to leave the ratio exact in float32 for any
    non-constant image while its gradient stays finite (0) at a constant one."""
    vertical = (x[..., 1:, :] - x[..., :-1, :]).flatten(1)
    horizontal = (x[..., 1:] - x[..., :-1]).flatten(1)
    differences = torch.cat([vertical, horizontal], 1)
    return differences.abs().mean(1) / (differences.square().mean(1) + eps**2).sqrt()


LOSSES: dict[str, Callable[[Tensor], Tensor]] = {"l2": l2, "l1": l1, "rmse": rmse}
LOSS_NAMES = (*LOSSES, "l2_then_ssim")


def objective(prediction: Tensor, y: Tensor, x: Tensor, iteration: int, *, loss: str,
              tv: float = 0.0, loss_switch: int = 0, ssim_padding: str = "zero",
              l1l2: float = 0.0) -> Tensor:  # fmt: skip
    """The K values the loop minimises at ``iteration``: the data fit of ``loss``, plus ``tv``
    times the total variation of the image estimates x and ``l1l2`` times their gradient's
    ℓ1/ℓ2 ratio, each when it is not 0."""
    fit = data_fit(prediction, y, iteration, loss, loss_switch, ssim_padding)
    fit = fit + tv * total_variation(x) if tv else fit
    return fit + l1l2 * gradient_l1_over_l2(x) if l1l2 else fit


def data_fit(prediction: Tensor, y: Tensor, iteration: int, loss: str, loss_switch: int = 0,
             ssim_padding: str = "zero") -> Tensor:  # fmt: skip
    """The K losses of ``loss`` at ``iteration`` (``l2_then_ssim``: l2 before ``loss_switch``,
    then 1 − SSIM with ``ssim_padding``)."""
    if loss != "l2_then_ssim":
        return LOSSES[loss](prediction - y)
    if iteration < loss_switch:
        return l2(prediction - y)
    return 1.0 - ssim_of(prediction, y, padding=ssim_padding)
