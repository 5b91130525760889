"""Data-fit losses of the prediction A(x) [+ s] against the observation y, one value per run.

``l2`` and ``l1`` map the residual r = prediction − y of shape (K, ...) to a (K,) tensor: the mean
over each run's entries, as ``torch.nn.MSELoss()`` / ``L1Loss()`` with mean reduction in the public
code; ``rmse`` is the square root of ``l2`` (the deep random projector's, Li, Zhuang, Liang, Sun,
CVPR 2023). ``l2_then_ssim`` is SelfDeblur's (Ren et al., CVPR 2020): the mean squared error for
the first ``--loss_switch`` iterations (1000 there), then 1 − SSIM(prediction, y) (Wang et al.'s
SSIM, ``utils.metrics.ssim_of``; by default with SelfDeblur's zero padding, SSIM.py: the map has
the image's size, ``--ssim_padding valid``: the metric's windows inside the image). ``--tv`` adds
λ·TV(x) of the image estimate (``total_variation``). The loop minimises the sum over runs, so
each run's parameters get the gradient of its own loss only.
"""

from __future__ import annotations

from collections.abc import Callable

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


LOSSES: dict[str, Callable[[Tensor], Tensor]] = {"l2": l2, "l1": l1, "rmse": rmse}
LOSS_NAMES = (*LOSSES, "l2_then_ssim")


def objective(prediction: Tensor, y: Tensor, x: Tensor, iteration: int, *, loss: str,
              tv: float = 0.0, loss_switch: int = 0, ssim_padding: str = "zero"
              ) -> Tensor:  # fmt: skip
    """The K values the loop minimises at ``iteration``: the data fit of ``loss``, plus ``tv``
    times the total variation of the image estimates x when it is not 0."""
    fit = data_fit(prediction, y, iteration, loss, loss_switch, ssim_padding)
    return fit + tv * total_variation(x) if tv else fit


def data_fit(prediction: Tensor, y: Tensor, iteration: int, loss: str, loss_switch: int = 0,
             ssim_padding: str = "zero") -> Tensor:  # fmt: skip
    """The K losses of ``loss`` at ``iteration`` (``l2_then_ssim``: l2 before ``loss_switch``,
    then 1 − SSIM with ``ssim_padding``)."""
    if loss != "l2_then_ssim":
        return LOSSES[loss](prediction - y)
    if iteration < loss_switch:
        return l2(prediction - y)
    return 1.0 - ssim_of(prediction, y, padding=ssim_padding)
