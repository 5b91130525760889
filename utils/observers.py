"""Observers: they see every iterate of the loop and use no ground truth.

An observer is an ``nn.Module`` that the loop calls with the image estimate x_j of every iteration j
(shape (K, C, H, W), detached, on the device, in the observation's dtype), right after the forward
pass of that iteration. It must not synchronise with the host there (no ``.item()``, no Python
branch on a tensor's value): it keeps what it needs in buffers, with the K runs along dimension 0,
so that its state moves to the device, is saved in every run's checkpoint, and stacks and unstacks
for batched runs like the model's. At logged rows the loop asks it for ``columns()``, named (K,)
tensors that become columns of the history; that is where its values reach the host. Early stopping
and an output moving average hook in here.
"""

from __future__ import annotations

from torch import Tensor, nn


class Observer(nn.Module):
    """Base class: override ``update`` and, to log values, ``columns``."""

    def update(self, iteration: int, x: Tensor) -> None:
        raise NotImplementedError

    def columns(self) -> dict[str, Tensor]:
        return {}
