"""The Deep Random Projector (Li, Zhuang, Liang, Sun, "Deep Random Projector: Accelerated Deep
Image Prior", CVPR 2023; code sun-umn/Deep-Random-Projector, 1_Denoising).

A DIP skip net whose convolutions are never trained: one scale, width 64, 4 skip channels, every
convolution's weights and biases left at their random initialisation. What gradient descent
moves is the input and the normalisation:

    x = f_W(BN₀(z)),    trained: z ∈ ℝ^{3×H×W} (started at 0.1·N(0, 1)), the input BatchNorm
    BN₀ (3 channels) and the affine scale and shift of every BatchNorm of f; W fixed.

So the net is a fixed random map ("projector") from a trained seed, shallow and cheap per
iteration. Its reference fit: Adam, lr 0.1 for all of them, no input perturbation, loss
√MSE(y, x) + 0.45·TV(x) (``utils.losses.rmse``, ``total_variation``; the TV term is what stops
the trained seed from reproducing the noise), 5000 iterations, paired with ES-EMV as its
stopping rule (``--stop emv``). The frozen tensors are not handed to the optimizer at all.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.prior import per_run_input
from models.skip import SkipPrior, min_input_size
from utils.images import centre_crop

SCALES = 1  # one scale of the skip net
SEED_CHANNELS = 3  # the trained input z
SEED_SCALE = 0.1  # z ~ 0.1·N(0, 1)


class ProjectorPrior(SkipPrior):
    """The random projector on K runs: one grouped skip net of one scale (frozen convolutions),
    z of shape (K, 3, H, W) trained, and the input BatchNorm of 3K channels (per run)."""

    defaults = {"method": "dip", "alg": "adam", "lr": 0.1, "reg_noise_std": 0.0, "width": 64,
                "loss": "rmse", "tv": 0.45}  # fmt: skip
    # Under DOP: plain gradient descent on the squared error, for which lr_c's ratio is tuned.
    dop_defaults = {"alg": "sgd", "lr": 1.0, "loss": "l2", "tv": 0.0}
    multiple = 1  # a one-scale skip net maps any H x W >= 3 to H x W
    memory_scale = 0.8  # one scale (measured at width 64: docs/RESULTS.md, "Deep decoder")

    def __init__(self, image_shape: Sequence[int], *, width: int = 64,
                 seeds: Sequence[int] = (0,), pad: bool = False) -> None:  # fmt: skip
        super().__init__(image_shape, width=width, seeds=seeds, pad=pad, scales=SCALES, skip=4,
                         input_depth=SEED_CHANNELS)  # fmt: skip
        z = per_run_input(seeds, (SEED_CHANNELS, *self.input.shape[-2:]), torch.randn)
        del self.input  # the skip prior's fixed buffer becomes the trained seed
        self.input = nn.Parameter(z * SEED_SCALE)
        self.input_norm = nn.BatchNorm2d(SEED_CHANNELS * len(seeds))
        for conv in (m for m in self.net.modules() if isinstance(m, nn.Conv2d)):
            conv.requires_grad_(False)

    def forward(self, eta: Tensor | None) -> Tensor:
        z = self.input if eta is None else self.input + eta
        out = self.net(self.input_norm(z.reshape(1, -1, *z.shape[-2:])))
        return centre_crop(out.reshape(self.runs, -1, *out.shape[-2:]), *self.image_size)

    @classmethod
    def smallest_side(cls, pad: bool) -> int:
        return min_input_size(SCALES)
