"""Super-resolution: y = noise(D_s(x)), D_s the ×1/s antialiased bicubic downsampling; the model's
D_s is that one too, or the Deep Image Prior's Lanczos-2 kernel (``--downsampler lanczos2``: the
random projector's code, Li et al., CVPR 2023, 2_Super_Resolution)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from tasks.operators import DOWNSAMPLERS, Downsample, Operator
from tasks.task import Fit, Task
from utils import InputError

# The random projector's SR (2_Super_Resolution/Main_Start.py:34-39, 90-94; train_sr.py:43, 128,
# 198-200): width 128, a 1-channel seed, √MSE + 0.75·TV, Adam 0.5, the Lanczos-2 downsampler.
PROJECTOR_SR = {"width": 128, "tv": 0.75, "lr": 0.5, "downsampler": "lanczos2"}


class SuperResolution(Task):
    """``--factor s`` must divide the sides of x (the image after its crops). The observation is
    made by the antialiased bicubic ``Downsample``; the model's downsampling is ``--downsampler``
    (default bicubic; the random projector's own, Lanczos-2, with its SR settings)."""

    name = "sr"
    own_settings = ("factor", "downsampler")
    defaults = {"downsampler": "bicubic"}
    prior_settings = {"drp": PROJECTOR_SR}
    prior_options = {"drp": {"seed_channels": 1}}
    keeps_shape = False

    def check(self, cfg: Any) -> None:
        if cfg.factor < 1:
            raise InputError("--factor must be a positive integer")
        if cfg.downsampler == "lanczos2" and cfg.factor % 2:
            raise InputError("--downsampler lanczos2 needs an even --factor")

    def inputs(self, cfg: Any, shape: Sequence[int], fit: Fit, data_dir: Path
               ) -> tuple[dict[str, np.ndarray], dict]:  # fmt: skip
        if cfg.observed is None and (shape[1] % cfg.factor or shape[2] % cfg.factor):
            raise InputError(f"--factor {cfg.factor} does not divide the image's size "
                             f"{shape[1]}x{shape[2]} (after crops); use --crop")  # fmt: skip
        return {}, {}

    def operator(self, cfg: Any, inputs: dict[str, Tensor], seeds: Sequence[int]) -> Operator:
        return DOWNSAMPLERS[cfg.downsampler](cfg.factor)

    def physics(self, cfg: Any, inputs: dict[str, np.ndarray]) -> Operator:
        return Downsample(cfg.factor)  # every variant sees the same observation
