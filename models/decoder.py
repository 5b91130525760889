"""The deep decoder (Heckel, Hand, "Deep Decoder: Concise Image Representations from Untrained
Non-convolutional Networks", ICLR 2019; code reinhardh/supplement_deep_decoder, decoder.py).

An under-parameterized generator: no 3x3 convolution at all, only 1x1 convolutions (channel
mixing, k → k, without bias), fixed bilinear ×2 upsampling, ReLU and BatchNorm::

    z (k, H/32, W/32) ─► [conv1x1 ─ up×2 ─ ReLU ─ BN] ×5 ─► conv1x1 ─ ReLU ─ BN ─► conv1x1 ─ sigmoid

Its parameters are 6k² (the hidden convolutions) + 12k (the BatchNorms' affine pairs) + Ck (the
output convolution): 100,224 at k = 128 for a colour image, against 2.2M for the DIP skip net of
width 128 — fewer than the image has pixels, so it cannot fit noise as well as the image
(Heckel, Soltanolkotabi, ICLR 2020, explain why: the fixed upsampling is a low-pass bias).

Its input z is fixed, uniform [0, 0.1); its reference fit is Adam, lr 0.01, no input
perturbation, 1900 iterations (the denoising example, denoising.ipynb:195-196), and the image it
reports is ``find_best``'s (include/fit.py:84-86, 130-136): the net after the last step that
lowered the training loss below best/1.005 (``utils.stopping.LowestLoss``, ``--stop
find_best``, the default; ``--stop none`` reports the last iterate only). The net works on sides
that divide by 32; other sizes run on the canvas rounded up to a multiple of 32 and are
centre-cropped back, so any H x W is produced. ``groups`` = K stacks K
independent decoders as the skip net does (grouped convolutions, K times the BatchNorm channels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from models.prior import Prior, per_run_input, per_run_net
from utils.images import centre_crop

UPSAMPLINGS = 5  # the reference code's num_channels_up = [k] * 5: inputs of H/32 x W/32
INPUT_SCALE = 0.1  # z ~ uniform[0, 0.1)


def parameter_count(width: int, channels: int = 3, upsamplings: int = UPSAMPLINGS) -> int:
    """Trained parameters of one deep decoder of k = ``width`` channels: (u+1)k² for the hidden
    1x1 convolutions (no bias), 2(u+1)k for their BatchNorms' scale and shift, Ck for the output
    convolution; 6k² + 12k + Ck with the reference u = 5 upsamplings (Heckel, Hand, 2019)."""
    layers = upsamplings + 1
    return layers * width**2 + 2 * layers * width + channels * width


def width_for(count: int, channels: int = 3, upsamplings: int = UPSAMPLINGS) -> int:
    """The width k >= 1 whose decoder has the parameter count closest to ``count`` (the smaller
    k on a tie): a deep decoder "of a similar number of parameters" as another net."""
    k = 1
    while parameter_count(k + 1, channels, upsamplings) <= count:
        k += 1
    above = parameter_count(k + 1, channels, upsamplings)
    below = parameter_count(k, channels, upsamplings)
    return k + 1 if above - count < count - below else k


class DecoderNet(nn.Module):
    """The deep decoder with k = ``width`` channels (K = ``groups`` decoders side by side)."""

    def __init__(self, width: int = 128, out_channels: int = 3, upsamplings: int = UPSAMPLINGS,
                 groups: int = 1) -> None:  # fmt: skip
        super().__init__()
        if min(width, out_channels, groups) < 1 or upsamplings < 0:
            raise ValueError(f"bad DecoderNet size: {width=} {upsamplings=} {groups=}")
        layers: list[nn.Module] = []
        for i in range(upsamplings + 1):
            layers.append(nn.Conv2d(groups * width, groups * width, 1, bias=False, groups=groups))
            if i < upsamplings:
                layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            layers += [nn.ReLU(), nn.BatchNorm2d(groups * width)]
        layers += [nn.Conv2d(groups * width, groups * out_channels, 1, bias=False, groups=groups),
                   nn.Sigmoid()]  # fmt: skip
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.body(z)


class DecoderPrior(Prior):
    """x = f(θ; z), f the deep decoder, z fixed (K runs: one grouped decoder, z of shape
    (K, k, H'/32, W'/32) with H', W' the sides rounded up to multiples of 32)."""

    defaults = {"method": "dip", "alg": "adam", "lr": 0.01, "reg_noise_std": 0.0, "width": 128,
                "num_iter": 1900, "stop": "find_best"}  # fmt: skip
    dop_defaults = {"alg": "sgd", "lr": 1.0}  # DOP's plain gradient descent
    multiple = 2**UPSAMPLINGS
    memory_scale = 0.35  # 1x1 convs (measured at k = 128: docs/RESULTS.md, "Deep decoder")

    def __init__(self, image_shape: Sequence[int], *, width: int = 128,
                 seeds: Sequence[int] = (0,), pad: bool = False) -> None:  # fmt: skip
        super().__init__()
        channels, h, w = image_shape
        self.image_size = (h, w)
        coarse = [-(-side // self.multiple) for side in (h, w)]  # the canvas's sides / 32
        self.net = per_run_net(lambda groups: DecoderNet(width, channels, groups=groups), seeds)
        self.register_buffer("input", per_run_input(seeds, (width, *coarse)) * INPUT_SCALE)

    def forward(self, eta: Tensor | None) -> Tensor:
        z = self.input if eta is None else self.input + eta
        out = self.net(z.reshape(1, -1, *z.shape[-2:]))  # the K runs' inputs as channel groups
        return centre_crop(out.reshape(self.runs, -1, *out.shape[-2:]), *self.image_size)

    @classmethod
    def indexed_elements(cls, width: int, canvas: Sequence[int], options: dict[str, Any]
                         ) -> int:  # fmt: skip
        """No padding (1x1 convolutions); the last upsampling's output, k channels on the canvas
        (sides rounded up to multiples of 32), is what CUDA's channels-last bilinear
        upsampling (--fast) indexes with 32 bits."""
        return width * math.prod(-(-side // cls.multiple) * cls.multiple for side in canvas)

    @classmethod
    def smallest_side(cls, pad: bool) -> int:
        """Any side with --pad; without, the crop to multiples of 32 must leave one."""
        return 1 if pad else cls.multiple
