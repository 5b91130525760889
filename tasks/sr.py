"""Super-resolution: y = noise(D_s(x)), D_s the ×1/s antialiased bicubic downsampling."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from tasks.operators import Downsample, Operator
from tasks.task import Fit, Task
from utils import InputError


class SuperResolution(Task):
    """``--factor s`` must divide the sides of x (the image after its crops)."""

    name = "sr"
    own_settings = ("factor",)
    keeps_shape = False

    def check(self, cfg: Any) -> None:
        if cfg.factor < 1:
            raise InputError("--factor must be a positive integer")

    def inputs(self, cfg: Any, shape: Sequence[int], fit: Fit, data_dir: Path
               ) -> tuple[dict[str, np.ndarray], dict]:  # fmt: skip
        if cfg.observed is None and (shape[1] % cfg.factor or shape[2] % cfg.factor):
            raise InputError(f"--factor {cfg.factor} does not divide the image's size "
                             f"{shape[1]}x{shape[2]} (after crops); use --crop")  # fmt: skip
        return {}, {}

    def operator(self, cfg: Any, inputs: dict[str, Tensor], seeds: Sequence[int]) -> Operator:
        return Downsample(cfg.factor)
