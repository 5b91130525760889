"""Forward operators A: the model of the observation is y ≈ A(x) [+ g⊙g − h⊙h].

An operator is an ``nn.Module`` that maps image estimates x of shape (K, C, H, W) (K runs) to
predictions of the observations. Whatever it holds per run (a mask, a kernel) is a buffer with the
runs along dimension 0, so it moves, checkpoints and batches with the model. The loop only calls
it forward; it never needs an adjoint.
"""

from __future__ import annotations

from torch import Tensor, nn


class Identity(nn.Module):
    """A(x) = x: denoising, where y is the image plus noise."""

    def forward(self, x: Tensor) -> Tensor:
        return x
