"""The Deep Random Projector (Li, Zhuang, Liang, Sun, "Deep Random Projector: Accelerated Deep
Image Prior", CVPR 2023; code sun-umn/Deep-Random-Projector, 1_Denoising).

A DIP skip net whose convolutions are never trained: one scale, width 64, 4 skip channels, every
convolution's weights and biases left at their random initialisation. What gradient descent
moves is the input and the normalisation:

    x = f_W(BN₀(z)),    trained: z ∈ ℝ^{3×H×W} (started at 0.1·N(0, 1)), the input BatchNorm
    BN₀ (3 channels) and the affine scale and shift of every BatchNorm of f; W fixed.

So the net is a fixed random map ("projector") from a trained seed, shallow and cheap per
iteration. Its reference fit (1_Denoising): Adam, lr 0.1 for all of them, no input perturbation,
loss √MSE(y, x) + 0.45·TV(x) (``utils.losses.rmse``, ``total_variation``; the TV term is what
stops the trained seed from reproducing the noise), 5001 iterations (``int(5000/1)*1 + 1``). Its
code uses no stopping rule (it logs every iteration's PSNR); ES-EMV (``--stop emv``) is a
pairing of this code's. The frozen tensors are not handed to the optimizer at all.

Its other tasks' settings are the tasks' (``Task.prior_settings``, ``prior_options``):
super-resolution (2_Super_Resolution) width 128, a 1-channel seed, TV 0.75, lr 0.5 and the
Lanczos-2 downsampler in the model; inpainting (3_Inpainting) width 128 with as many skip
channels, a 2-channel meshgrid seed (``seed="meshgrid"``), TV 0.01, lr 0.05. Not reproduced: the
inpainting script's 10⁻³ Gaussian noise added to the frozen convolutions at every iteration (its
"restore" does not restore, so they drift as a random walk: docs/FIDELITY.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from models.prior import per_run_input
from models.skip import SkipPrior, min_input_size
from utils.images import centre_crop

SCALES = 1  # one scale of the skip net
SEED_CHANNELS = 3  # the trained input z
SEED_SCALE = 0.1  # z ~ 0.1·N(0, 1)
SEEDS = ("noise", "meshgrid")


def meshgrid(runs: int, h: int, w: int) -> torch.Tensor:
    """The inpainting seed (3_Inpainting/train_ip.py:134-144): two ramps from 0 to 1, across the
    columns and down the rows, X[r, c] = c / (W − 1), Y[r, c] = r / (H − 1), (runs, 2, H, W).
    (Theirs reshapes a (2, W, H) array to (2, H, W), the same on their square images.)"""
    rows = torch.arange(h, dtype=torch.float32) / max(1, h - 1)
    cols = torch.arange(w, dtype=torch.float32) / max(1, w - 1)
    grid = torch.stack([cols.expand(h, w), rows[:, None].expand(h, w)])
    return grid.expand(runs, 2, h, w).clone()


class ProjectorPrior(SkipPrior):
    """The random projector on K runs: one grouped skip net of one scale (frozen convolutions),
    z of shape (K, c, H, W) trained, and the input BatchNorm of cK channels (per run). ``seed``:
    noise (c = ``seed_channels`` of 0.1·N(0, 1) from the run's input stream) or meshgrid (c = 2,
    ``meshgrid``); ``skip``: the skip channels (None: the width)."""

    defaults = {"method": "dip", "alg": "adam", "lr": 0.1, "reg_noise_std": 0.0, "width": 64,
                "loss": "rmse", "tv": 0.45, "num_iter": 5001}  # fmt: skip
    # Under DOP: plain gradient descent on the squared error, for which lr_c's ratio is tuned.
    dop_defaults = {"alg": "sgd", "lr": 1.0, "loss": "l2", "tv": 0.0}
    multiple = 1  # a one-scale skip net maps any H x W >= 3 to H x W
    memory_scale = 0.8  # one scale (measured at width 64: docs/RESULTS.md, "Deep decoder")

    def __init__(self, image_shape: Sequence[int], *, width: int = 64,
                 seeds: Sequence[int] = (0,), pad: bool = False, seed: str = "noise",
                 seed_channels: int = SEED_CHANNELS, skip: int | None = 4) -> None:  # fmt: skip
        if seed not in SEEDS:
            raise ValueError(f"seed must be one of {SEEDS}, got {seed!r}")
        channels = 2 if seed == "meshgrid" else seed_channels
        super().__init__(image_shape, width=width, seeds=seeds, pad=pad, scales=SCALES,
                         skip=width if skip is None else skip, input_depth=channels)  # fmt: skip
        canvas = self.input.shape[-2:]
        if seed == "meshgrid":
            z = meshgrid(len(seeds), *canvas)
        else:
            z = per_run_input(seeds, (channels, *canvas), torch.randn) * SEED_SCALE
        del self.input  # the skip prior's fixed buffer becomes the trained seed
        self.input = nn.Parameter(z)
        self.input_norm = nn.BatchNorm2d(channels * len(seeds))
        for conv in (m for m in self.net.modules() if isinstance(m, nn.Conv2d)):
            conv.requires_grad_(False)

    def forward(self, eta: Tensor | None) -> Tensor:
        z = self.input if eta is None else self.input + eta
        out = self.net(self.input_norm(z.reshape(1, -1, *z.shape[-2:])))
        return centre_crop(out.reshape(self.runs, -1, *out.shape[-2:]), *self.image_size)

    @classmethod
    def indexed_elements(cls, width: int, canvas: Sequence[int], options: dict[str, Any]
                         ) -> int:  # fmt: skip
        skip = options.get("skip", 4)
        channels = (
            2 if options.get("seed") == "meshgrid" else options.get("seed_channels", SEED_CHANNELS)
        )
        options = {"skip": width if skip is None else skip, "input_depth": channels}
        return super().indexed_elements(width, canvas, options)

    @classmethod
    def smallest_side(cls, pad: bool) -> int:
        return min_input_size(SCALES)
