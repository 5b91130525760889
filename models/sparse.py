"""The sparse-outlier term of DOP: s = g⊙g − h⊙h (You, Zhu, Qu, Ma, NeurIPS 2020).

g and h have the observation's shape, one pair per run (runs along dimension 0), and start at
N(0, 1)·1e-5: the small initialisation under which gradient descent with the discrepant step
α = lr_c / lr is implicitly biased towards a sparse s (an ℓ1 penalty of weight 1/α in the paper's
low-rank analysis), so that s absorbs the outliers and the prior fits the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from utils.seeding import derive_seed

INIT_STD = 1e-5


class SparseTerm(nn.Module):
    def __init__(self, shape: Sequence[int], seeds: Sequence[int]) -> None:
        """``shape``: one run's observation (C, H, W); ``seeds``: the runs' seeds."""
        super().__init__()
        gs, hs = [], []
        for seed in seeds:
            generator = torch.Generator().manual_seed(derive_seed(seed, "sparse"))
            gs.append(torch.randn(1, *shape, generator=generator) * INIT_STD)
            hs.append(torch.randn(1, *shape, generator=generator) * INIT_STD)
        self.g = nn.Parameter(torch.cat(gs))
        self.h = nn.Parameter(torch.cat(hs))

    def forward(self) -> Tensor:
        return self.g * self.g - self.h * self.h
