"""Fienup's classical phase retrieval, the baselines of ``--task phase-retrieval``: error
reduction (ER) and hybrid input-output (HIO) with the support constraint (Fienup, "Phase
retrieval algorithms: a comparison", Appl. Opt. 21:2758, 1982). No well-kept Python package
provides them, so they are written here (a few lines each, after ricedsp/prDeep's HIO.m and
leeneil/ghio-matlab's hio2d.m).

With y the measured magnitudes on the canvas and S the known support (the object's box):

    P_M(x) = F⁻¹(y ⊙ e^{i∠F x})                         the magnitudes replaced by y
    ER:   x ← 1_S ⊙ P_M(x)                              the support enforced (Gerchberg-Saxton)
    HIO:  x ← P_M(x) on S,  x − β P_M(x) off S          β = 0.9 (ghio-matlab's beta1)

The object is complex, so the support is the only object-domain constraint (the positivity and
realness of a real object's HIO are not used: the double DIP does not know them either). Each
start is a random object on S (magnitudes uniform in [0, 1), phases uniform), from a seed; HIO
runs ``hio`` iterations and ER ``er`` more to finish (blocks of HIO ending with ER: common
practice; the schedule is ours). Of several starts the one with the best data fit
‖y − |F(1_S x)|‖ is kept: no ground truth is used. The starts run as one batch of tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

BETA = 0.9


def fourier_projection(x: Tensor, y: Tensor) -> Tensor:
    """P_M(x) = F⁻¹(y e^{i∠F x}) (orthonormal DFT over the last two dimensions; where F x = 0
    the phase is taken as 0)."""
    spectrum = torch.fft.fft2(x, norm="ortho")
    phase = torch.where(spectrum == 0, 1, spectrum / spectrum.abs())
    return torch.fft.ifft2(y * phase, norm="ortho")


def error_reduction(x: Tensor, y: Tensor, support: Tensor) -> Tensor:
    return support * fourier_projection(x, y)


def hybrid_input_output(x: Tensor, y: Tensor, support: Tensor, beta: float = BETA) -> Tensor:
    projected = fourier_projection(x, y)
    return torch.where(support > 0, projected, x - beta * projected)


def data_fit(x: Tensor, y: Tensor, support: Tensor) -> Tensor:
    """‖y − |F(1_S x)|‖ per start (the ranking of the starts: no ground truth)."""
    residual = y - torch.fft.fft2(support * x, norm="ortho").abs()
    return torch.linalg.vector_norm(residual.flatten(-2), dim=-1)


@dataclass
class Fienup:
    """``starts`` random starts of ``hio`` HIO iterations (β) and then ``er`` ER iterations
    (``hio`` = 0: ER alone)."""

    hio: int = 900
    er: int = 100
    starts: int = 10
    beta: float = BETA

    @property
    def name(self) -> str:
        return "ER" if self.hio == 0 else "HIO+ER"

    def run(self, y: np.ndarray, support: np.ndarray, seed: int = 0) -> Recovered:
        """The best start's object (complex, on the canvas, zero off S) for measured
        magnitudes ``y`` (N1, N2) and the support (N1, N2) of 0/1."""
        ys = torch.from_numpy(np.asarray(y, np.float64))
        s = torch.from_numpy(np.asarray(support, np.float64))
        g = torch.Generator().manual_seed(seed)
        shape = (self.starts, *ys.shape)
        x = s * torch.polar(torch.rand(shape, generator=g, dtype=torch.float64),
                            2 * torch.pi * torch.rand(shape, generator=g, dtype=torch.float64)
                            )  # fmt: skip
        for _ in range(self.hio):
            x = hybrid_input_output(x, ys, s, self.beta)
        for _ in range(self.er):
            x = error_reduction(x, ys, s)
        x = s * x
        fits = data_fit(x, ys, s)
        best = int(fits.argmin())
        return Recovered(x[best].numpy(), float(fits[best]), fits.numpy())


@dataclass
class Recovered:
    """The object kept (complex (N1, N2)), its data fit and every start's."""

    x: np.ndarray
    fit: float
    fits: np.ndarray
