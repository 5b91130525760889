"""Data-fit losses of the residual r = prediction − y, one value per run.

Each maps r of shape (K, ...) to a (K,) tensor: the mean over each run's entries, as
``torch.nn.MSELoss()`` / ``L1Loss()`` with mean reduction in the public code. The loop minimises
the sum over runs, so each run's parameters get the gradient of its own loss only.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor


def l2(residual: Tensor) -> Tensor:
    """Mean squared error (1/n) Σ r_i²."""
    return residual.square().flatten(1).mean(1)


def l1(residual: Tensor) -> Tensor:
    """Mean absolute error (1/n) Σ |r_i|."""
    return residual.abs().flatten(1).mean(1)


LOSSES: dict[str, Callable[[Tensor], Tensor]] = {"l2": l2, "l1": l1}
