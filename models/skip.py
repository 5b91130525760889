"""The Deep Image Prior "skip" encoder-decoder (Ulyanov, Vedaldi, Lempitsky, CVPR 2018).

DOP (You, Zhu, Qu, Ma, NeurIPS 2020) uses it unchanged except for its width. One scale of the
U-Net, from the outside in::

    x ──► skip:   conv1x1(→skip) ─ BN ─ act ──────────────────────────────────────┐
      └─► deeper: conv3x3/s2(→w) ─ BN ─ act ─ conv3x3 ─ BN ─ act ─ [next scale] ─ up×2 ─┤
                                                                               concat
    ◄── act ─ BN ─ conv1x1 ─ act ─ BN ─ conv3x3(→w) ─ BN ◄──────────────────────────┘

followed by a 1x1 conv to the image channels and a sigmoid. Every 3x3 conv pads by reflection,
downsampling is a stride-2 conv, upsampling is bilinear, the activation is LeakyReLU(0.2), and
BatchNorm is used in training mode throughout (the statistics of the one image are the batch).

The network maps an H x W input to an H x W output for any H, W >= ``min_input_size(scales)``:
where a downsampled size is odd, the upsampled branch is one pixel larger than the skip branch
and is centre-cropped to it before the concat, as in the original code.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def min_input_size(scales: int) -> int:
    """Smallest side the net accepts: after ``scales`` stride-2 convs (each giving ceil(s/2)) a
    side of at least 2 must remain, since reflection padding needs a neighbour to reflect."""
    return 2**scales + 1


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, padding_mode="reflect")


def _conv_bn_act(c_in: int, c_out: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [_conv(c_in, c_out, kernel, stride), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)]


def _centre_crop(x: Tensor, h: int, w: int) -> Tensor:
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., top : top + h, left : left + w]


class _Scale(nn.Module):
    """One scale of the U-Net; ``inner`` is the next (coarser) scale, or None at the bottom."""

    def __init__(self, c_in: int, width: int, skip: int, inner: _Scale | None) -> None:
        super().__init__()
        self.skip = nn.Sequential(*_conv_bn_act(c_in, skip, 1)) if skip else None
        self.deeper = nn.Sequential(
            *_conv_bn_act(c_in, width, 3, stride=2),
            *_conv_bn_act(width, width, 3),
            *([inner] if inner is not None else []),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        )
        self.merge = nn.Sequential(
            nn.BatchNorm2d(skip + width),
            *_conv_bn_act(skip + width, width, 3),
            *_conv_bn_act(width, width, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        deep = self.deeper(x)
        if self.skip is not None:
            s = self.skip(x)
            h, w = min(s.shape[-2], deep.shape[-2]), min(s.shape[-1], deep.shape[-1])
            deep = torch.cat([_centre_crop(s, h, w), _centre_crop(deep, h, w)], dim=1)
        return self.merge(deep)


class SkipNet(nn.Module):
    """DIP skip net with ``[width] * scales`` channels down and up and ``skip`` skip channels.

    Defaults are those of DOP's public code: 32 input channels, 3 output channels, width 128,
    5 scales, 4 skip channels (about 2.22M parameters).
    """

    def __init__(
        self,
        in_channels: int = 32,
        out_channels: int = 3,
        width: int = 128,
        scales: int = 5,
        skip: int = 4,
    ) -> None:
        super().__init__()
        if width < 1 or scales < 1 or skip < 0 or in_channels < 1 or out_channels < 1:
            raise ValueError(f"bad SkipNet size: {width=} {scales=} {skip=}")
        self.scales = scales
        inner = None
        for i in reversed(range(scales)):
            inner = _Scale(in_channels if i == 0 else width, width, skip, inner)
        self.body = inner
        self.head = nn.Sequential(nn.Conv2d(width, out_channels, 1), nn.Sigmoid())

    def forward(self, z: Tensor) -> Tensor:
        return self.head(self.body(z))
