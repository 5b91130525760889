"""Far-field (Fourier) phase retrieval, as in coherent diffraction imaging, with two generators
(Zhuang, Yang, Hofmann, Barmherzig, Sun, "Practical phase retrieval using double deep image
priors", arXiv 2211.00799, 2022; its text could not be reached: every choice below is ours,
following the DIP's conventions where nothing else applies; docs/RESULTS.md, "Phase
retrieval").

The object: a grayscale image as the magnitude m (its luminance, in [0, 1]) with a smooth
synthetic phase, a centred Gaussian bump φ(u, v) = φ₀ exp(−(u² + v²) / (2 · 0.25²)), u, v ∈
[−½, ½] across the object (``--object_phase`` φ₀, default π/2; 0 gives a real non-negative
object). It is zero-padded into a canvas ``--oversampling`` s ≥ 2 times larger per side
(N = ⌈s n⌉, the object in the centre box, which is the known support), and the magnitudes of
its orthonormal DFT are measured: y = |F(P(m e^{iφ}))| (``tasks.operators.FarField``).

The noise: ``--noise shot --nlevel c``: photon counts on the intensities, Poisson with c photons
per unit of intensity, n ~ Poisson(c |F(P o)|²), y = √(n / c) (so the total count is c ‖o‖²,
c photons per object pixel of magnitude 1); ``--outliers p``: a fraction p of the detector pixels
read 0 (dead) or the largest clean magnitude (hot), with equal chance, after the counts: the
sparse corruption DOP's g⊙g − h⊙h is for. Both from the run's "noise" stream; saved in
noise.npz with the counts and the outlier masks.

The model: x = (m, φ) from the prior (2 channels); the skip prior runs two generators, one for the
magnitude, one for the phase (sigmoid outputs, φ = π (2 s − 1)), each the DIP skip net with its
own input, trained together by Adam 0.01 with the DIP's input perturbation 1/30 (the DIP
conventions, the paper's being unknown), on the mean squared error of the magnitudes. The
reported image is m, aligned to the clean one over the shifts and the twin image before any
metric (``FarField.align``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tasks.operators import FarField, KnownPhase, Operator
from tasks.task import Fit, Task
from utils import InputError
from utils.noise import Corruption

PHASE_WIDTH = 0.25  # the synthetic phase's Gaussian width, in object sides
LUMINANCE = np.array([0.2125, 0.7154, 0.0721], np.float32)  # skimage.color.rgb2gray's weights
DOUBLE_DIP = {"alg": "adam", "lr": 0.01, "reg_noise_std": 1.0 / 30.0}


def canvas_side(n: int, oversampling: float) -> int:
    """N = ⌈s n⌉: the canvas side for an object side n."""
    return math.ceil(oversampling * n - 1e-9)


def synthetic_phase(shape: Sequence[int], peak: float) -> np.ndarray:
    """φ(u, v) = φ₀ exp(−(u² + v²) / (2 · 0.25²)) over an (n1, n2) object, u, v ∈ [−½, ½]."""
    u, v = (np.linspace(-0.5, 0.5, n) for n in shape)
    r2 = u[:, None] ** 2 + v[None, :] ** 2
    return (peak * np.exp(-r2 / (2 * PHASE_WIDTH**2))).astype(np.float32)


def box_support(shape: Sequence[int], oversampling: float) -> np.ndarray:
    """The (N1, N2) canvas with the (n1, n2) object's box in its centre: 1 inside, 0 outside."""
    n1, n2 = shape
    big = [canvas_side(n, oversampling) for n in shape]
    support = np.zeros(big, np.float32)
    top, left = ((b - n) // 2 for b, n in zip(big, shape, strict=True))
    support[top : top + n1, left : left + n2] = 1
    return support


def measure(clean: np.ndarray, photons: float, outliers: float, seed: int
            ) -> tuple[np.ndarray, dict[str, np.ndarray]]:  # fmt: skip
    """y from the clean magnitudes |F(P o)|: Poisson counts with ``photons`` per unit of
    intensity (0: none), then a fraction ``outliers`` of dead (0) and hot (max) pixels."""
    rng = np.random.default_rng(seed)
    y, fields = clean.astype(np.float64), {}
    if photons > 0:
        counts = rng.poisson(photons * y**2)
        y = np.sqrt(counts / photons)
        fields["counts"] = counts.astype(np.int64)
    if outliers > 0:
        hit = rng.random(y.shape) < outliers
        hot = hit & (rng.random(y.shape) < 0.5)
        y = np.where(hot, clean.max(), np.where(hit, 0.0, y))
        fields |= {"dead": hit & ~hot, "hot": hot}
    return y.astype(np.float32), fields


class PhaseRetrieval(Task):
    """``--oversampling s`` (≥ 2), ``--object_phase φ₀``, ``--outliers p``; noise ``--noise shot
    --nlevel c`` (photons per unit of intensity) or none. Synthetic observations only."""

    name = "phase-retrieval"
    own_settings = ("oversampling", "object_phase", "outliers")
    defaults = {"method": "dip", "num_iter": 5000}
    prior_settings = {"skip": DOUBLE_DIP}
    prior_options = {"skip": {"generators": 2}}  # the double DIP: magnitude and phase
    keeps_shape = False
    measures_image = False

    def check(self, cfg: Any) -> None:
        if not cfg.oversampling >= 2 or not math.isfinite(cfg.oversampling):
            raise InputError(f"--oversampling must be at least 2 per side (got "
                             f"{cfg.oversampling:g}): below it |F(x)| does not determine x up to "
                             "the trivial ambiguities")  # fmt: skip
        if not 0 <= cfg.outliers < 1:
            raise InputError("--outliers must be a fraction in [0, 1)")
        if not math.isfinite(cfg.object_phase):
            raise InputError("--object_phase must be a number (radians)")
        if cfg.observed is not None:
            raise InputError("--task phase-retrieval makes its own measurements from --image; "
                             "it takes no --observed image")  # fmt: skip
        if cfg.nlevel and cfg.noise != "shot":
            raise InputError(f"--task phase-retrieval counts photons: its noise is --noise shot "
                             f"--nlevel C (Poisson on the intensities), not {cfg.noise}; "
                             "outliers are --outliers")  # fmt: skip

    def image(self, pixels: np.ndarray) -> np.ndarray:
        """The object's magnitude: the image's luminance (scikit-image's rgb2gray weights)."""
        if pixels.shape[0] == 1:
            return pixels
        return np.tensordot(LUMINANCE, pixels, axes=1)[None].astype(np.float32)

    def inputs(self, cfg: Any, shape: Sequence[int], fit: Fit, data_dir: Path
               ) -> tuple[dict[str, np.ndarray], dict]:  # fmt: skip
        """The support (the box, (N1, N2)) and the object's phase ((n1, n2))."""
        size = tuple(shape[1:])
        return {"support": box_support(size, cfg.oversampling),
                "phase": synthetic_phase(size, cfg.object_phase)}, {}  # fmt: skip

    def operator(self, cfg: Any, inputs: dict[str, Tensor], seeds: Sequence[int]) -> Operator:
        return FarField(inputs["support"])

    def physics(self, cfg: Any, inputs: dict[str, np.ndarray]) -> Operator:
        support, phase = (torch.from_numpy(inputs[name]) for name in ("support", "phase"))
        return KnownPhase(support[None], phase)

    def observe(self, cfg: Any, x: np.ndarray, physics: Operator, seed: int
                ) -> tuple[np.ndarray, Corruption]:  # fmt: skip
        with torch.no_grad():
            clean = physics(torch.from_numpy(x)[None]).numpy()[0]
        y, fields = measure(clean, cfg.nlevel if cfg.noise == "shot" else 0.0, cfg.outliers, seed)
        return y, Corruption(y, fields | {"clean_magnitudes": clean})

    def display(self, y: np.ndarray) -> np.ndarray:
        """The measured magnitudes on a log scale, log(1 + y) / log(1 + max y)."""
        return np.log1p(y) / np.log1p(max(float(y.max()), 1e-12))

    def saved(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        phase = inputs["phase"]
        span = float(np.abs(phase).max()) or 1.0
        return {"support": inputs["support"][None], "phase": 0.5 + 0.5 * phase[None] / span}
