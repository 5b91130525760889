"""Inpainting: y = m ⊙ noise(x) with a binary pixel mask m (Ulyanov, Vedaldi, Lempitsky, CVPR
2018), the same for every channel; the loss sees the observed pixels only."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tasks.operators import Mask, Operator, bernoulli_mask
from tasks.task import Fit, Task
from utils import InputError
from utils.images import resolve_image
from utils.noise import Corruption
from utils.seeding import derive_seed

# The random projector's inpainting (3_Inpainting/Main_Start.py:32-33, 40-43; train_ip.py:44-49,
# 134-144): width 128 with as many skip channels, a 2-channel meshgrid seed, √MSE + 0.01·TV,
# Adam 0.05.
PROJECTOR_INPAINT = {"width": 128, "tv": 0.01, "lr": 0.05}


class Inpaint(Task):
    """``--keep p``: a Bernoulli mask from the run's "pixel_mask" stream; ``--pixel_mask PATH``:
    a mask image (white = observed; needed with --observed), cropped as the image."""

    name = "inpaint"
    own_settings = ("keep", "pixel_mask")
    prior_settings = {"drp": PROJECTOR_INPAINT}
    prior_options = {"drp": {"seed": "meshgrid", "skip": None}}

    def check(self, cfg: Any) -> None:
        if not 0 < cfg.keep <= 1:
            raise InputError("--keep must be a fraction in (0, 1]")
        if cfg.observed is not None and cfg.pixel_mask is None:
            raise InputError("--task inpaint with --observed needs the --pixel_mask of the "
                             "observed pixels")  # fmt: skip

    def inputs(self, cfg: Any, shape: Sequence[int], fit: Fit, data_dir: Path
               ) -> tuple[dict[str, np.ndarray], dict]:  # fmt: skip
        """The mask (1, H, W) of 0/1 and its file's identity."""
        if cfg.pixel_mask is None:  # the "pixel_mask" stream derived twice: the masks of every
            seed = derive_seed(cfg.seed, "pixel_mask")  # run since the first version
            return {"mask": bernoulli_mask(shape, cfg.keep, seed).numpy()}, {}
        loaded = resolve_image(cfg.pixel_mask, data_dir)
        mask = fit(loaded.pixels.mean(0, keepdims=True), cfg.pixel_mask)
        if mask.shape[1:] != tuple(shape[1:]):
            raise InputError(f"--pixel_mask {cfg.pixel_mask} is {mask.shape[1]}x{mask.shape[2]} "
                             f"after the crops, the image {shape[1]}x{shape[2]}; give a mask of "
                             "the image's size")  # fmt: skip
        identity = {"pixel_mask": loaded.source, "pixel_mask_sha256": loaded.sha256}
        return {"mask": (mask > 0.5).astype(np.float32)}, identity

    def operator(self, cfg: Any, inputs: dict[str, Tensor], seeds: Sequence[int]) -> Operator:
        return Mask(inputs["mask"])

    def observe(self, cfg: Any, x: np.ndarray, physics: Operator, seed: int
                ) -> tuple[np.ndarray, Corruption]:  # fmt: skip
        """m ⊙ noise(x): the noise first, so that unobserved pixels stay 0."""
        _, noise = super().observe(cfg, x, Operator(), seed)
        with torch.no_grad():
            return physics(torch.from_numpy(noise.noisy)[None]).numpy()[0], noise

    def saved(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"pixel_mask": inputs["mask"]}
