"""Observers: they see every iterate of the loop and use no ground truth.

An observer is an ``nn.Module`` that the loop calls with the image estimate x_j of every iteration j
(shape (K, C, H, W), detached, on the device, in the observation's dtype) and the K training
losses of that iteration ((K,), detached), right after the forward pass of that iteration. It
must not synchronise with the host there (no ``.item()``, no Python branch on a tensor's value):
it keeps what it needs in buffers, with the K runs along dimension 0, so that its state moves to
the device, is saved in every run's checkpoint, and stacks and unstacks for batched runs like the
model's. At logged rows the loop asks it for ``columns()``, named (K,)
tensors that become columns of the history; that is where its values reach the host. An observer
may also offer an image ``estimate()`` of its own (the moving average below): the loop evaluates it
with the metrics beside x at logged rows (columns ``psnr_NAME``, ...) and returns it with the run.
The early-stopping rules (utils/stopping.py) are observers too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class Observer(nn.Module):
    """Base class: override ``update`` and, to log values, ``columns``."""

    name: str = "observer"
    # Buffers whose NaN or infinity means "no value yet" (a score before its first window, a
    # minimum before its first score), not a run gone wrong: a checkpoint is kept with them.
    unset: tuple[str, ...] = ()

    def update(self, iteration: int, x: Tensor, loss: Tensor | None = None) -> None:
        raise NotImplementedError

    def pending(self) -> Tensor | None:
        """(K,) bool: runs whose estimate waits for the image of the net after the last step
        (the deep decoder's find_best); the loop then runs one more forward pass, without η,
        and calls ``finish``. None: never."""
        return None

    def finish(self, iteration: int, x: Tensor) -> None:
        """The image of the net after the last step (iteration = the steps taken)."""

    def columns(self) -> dict[str, Tensor]:
        return {}

    def estimate(self) -> Tensor | None:
        """An image estimate (K, C, H, W) of this observer's, or None."""
        return None


class MovingAverage(Observer):
    """The output's exponential moving average, the DIP paper's smoothing (Ulyanov, Vedaldi,
    Lempitsky, CVPR 2018; its notebooks use weight w = 0.99):

        x̄_0 = x_0,    x̄_j = w x̄_{j−1} + (1 − w) x_j.
    """

    name = "ema"

    def __init__(self, weight: float, shape: Sequence[int], dtype: torch.dtype = torch.float32
                 ) -> None:  # fmt: skip
        super().__init__()
        self.weight = weight
        self.register_buffer("average", torch.zeros(tuple(shape), dtype=dtype))

    def update(self, iteration: int, x: Tensor, loss: Tensor | None = None) -> None:
        if iteration == 0:
            self.average.copy_(x)
        else:
            self.average.mul_(self.weight).add_(x, alpha=1.0 - self.weight)

    def estimate(self) -> Tensor:
        return self.average
