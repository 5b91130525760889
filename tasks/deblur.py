"""Deblurring with a known kernel: y = noise(x ∗ k), 'valid' (SelfDeblur's forward model and
image generator, Ren, Zhang, Wang, Hu, Zuo, CVPR 2020; REFERENCE.md §7)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from tasks.operators import Blur, Operator
from tasks.task import Fit, Task, load_kernel, shown
from utils import InputError

# SelfDeblur (selfdeblur_levin.py:22, 44-48, 83-92, 107-112, 136-139): the image generator is
# the skip net with 8 input and 16 skip channels and a dot-product non-local block at scales 3-5
# (networks/skip.py:71-78), trained by Adam, lr 0.01, its input perturbed by η of std 0.001; MSE
# for 1000 iterations, then 1 − SSIM (zero-padded, SSIM.py: --ssim_padding's default); every
# step halved at iterations 2000, 3000 and 4000 of 5000. (--loss_switch 1000, --lr_gamma 0.5 and
# --ssim_padding zero are the flags' own defaults.)
SELFDEBLUR = {"method": "dip", "num_iter": 5000, "loss": "l2_then_ssim",
              "lr_milestones": "2000,3000,4000"}  # fmt: skip
SELFDEBLUR_SKIP = {"alg": "adam", "lr": 0.01, "reg_noise_std": 0.001}
SELFDEBLUR_NET = {"input_depth": 8, "skip": 16, "nonlocal_from": 2}  # NL at scales 3-5 of 5
SMALLEST_OBSERVATION = 11  # sides of y: SSIM's window (the l2-then-SSIM loss, the metrics)
# Zhuang et al. (IJCV 2023, arXiv 2208.09483; REFERENCE.md §7): the talk's objective, the squared
# data misfit plus λ‖∇x‖₁/‖∇x‖₂ with λ = 1e-4 at low noise (2e-4 at high noise: --l1l2 2e-4).
# The rest of their recipe could not be read (their repository is empty): SelfDeblur's
# optimizer, schedule and generators are kept, but for the image generator's step, 1e-3
# (ours: with SelfDeblur's 1e-2 x outran the kernel in an over-specified box; docs/FIDELITY.md).
ZHUANG = {"loss": "l2", "l1l2": 1e-4, "lr": 1e-3}


class Deblur(Task):
    """``--kernel PATH`` (a gray image, normalised to sum 1); x is larger than y by the kernel's
    size less one, and the reported image is its centre of y's size, as in SelfDeblur. The
    defaults are SelfDeblur's, so that non-blind deconvolution differs from it by the known
    kernel only. ``--no_nonlocal``: the plain skip net as the generator (this code's before it
    had SelfDeblur's non-local blocks). ``--variant zhuang`` takes Zhuang et al.'s loss and
    regulariser instead."""

    name = "deblur"
    own_settings = ("kernel", "no_nonlocal", "variant")
    defaults = SELFDEBLUR
    prior_settings = {"skip": SELFDEBLUR_SKIP}
    prior_options = {"skip": SELFDEBLUR_NET}
    variants = {"selfdeblur": {}, "zhuang": ZHUANG}
    crops_to_prior = False  # x is larger than the observation: no crop to the prior's multiple
    keeps_shape = False

    def check(self, cfg: Any) -> None:
        if cfg.kernel is None:
            raise InputError("--task deblur needs --kernel PATH")

    def inputs(self, cfg: Any, shape: Sequence[int], fit: Fit, data_dir: Path
               ) -> tuple[dict[str, np.ndarray], dict]:  # fmt: skip
        if cfg.kernel is None:
            return {}, {}
        kernel, identity = load_kernel(cfg.kernel, data_dir)
        if cfg.observed is None and min(shape[1] - kernel.shape[0], shape[2] - kernel.shape[1]
                                        ) + 1 < SMALLEST_OBSERVATION:  # fmt: skip
            raise InputError(f"--kernel {cfg.kernel} is {kernel.shape[0]}x{kernel.shape[1]}: too "
                             f"large for the {shape[1]}x{shape[2]} image")  # fmt: skip
        return {"kernel": kernel}, identity

    def operator(self, cfg: Any, inputs: dict[str, Tensor], seeds: Sequence[int]) -> Operator:
        return Blur(inputs["kernel"])

    def options(self, cfg: Any, prior: str) -> dict[str, Any]:
        options = super().options(cfg, prior)
        if cfg.no_nonlocal:
            options = {k: v for k, v in options.items() if k != "nonlocal_from"}
        return options

    def saved(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"kernel": shown(inputs["kernel"])} if "kernel" in inputs else {}
