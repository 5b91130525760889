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

``groups`` = K stacks K independent nets into one: every conv is grouped (K groups), every
BatchNorm has K times the channels, and channel k·C..(k+1)·C-1 of every layer belongs to net k.
BatchNorm statistics are per channel, so each net still normalises by the statistics of its own
image, and a K-group net computes exactly what K separate nets compute (tested); its parameters
are the K nets' parameters concatenated along dimension 0 (``utils.state.stack_states``).

The network maps an H x W input to an H x W output for any H, W >= ``min_input_size(scales)``:
where a downsampled size is odd, the upsampled branch is one pixel larger than the skip branch
and is centre-cropped to it before the concat, as in the original code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from models.prior import Prior, per_run_input, per_run_net
from utils.images import centre_crop

SCALES = 5  # the public code's depth: image sides are cropped to multiples of 2**SCALES = 32
INPUT_DEPTH = 32  # channels of the fixed input z
INPUT_SCALE = 0.1  # z ~ uniform[0, 0.1)


def min_input_size(scales: int) -> int:
    """Smallest side the net accepts: after ``scales`` stride-2 convs (each giving ceil(s/2)) a
    side of at least 2 must remain, since reflection padding needs a neighbour to reflect."""
    return 2**scales + 1


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(
        groups * c_in, groups * c_out, kernel, stride,
        padding=kernel // 2, padding_mode="reflect", groups=groups,
    )  # fmt: skip


def _conv_bn_act(
    c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1
) -> list[nn.Module]:
    return [
        _conv(c_in, c_out, kernel, stride, groups),
        nn.BatchNorm2d(groups * c_out),
        nn.LeakyReLU(0.2),
    ]


class _Scale(nn.Module):
    """One scale of the U-Net; ``inner`` is the next (coarser) scale, or None at the bottom."""

    def __init__(
        self, c_in: int, width: int, skip: int, inner: _Scale | None, groups: int = 1
    ) -> None:
        super().__init__()
        self.groups = groups
        self.skip = nn.Sequential(*_conv_bn_act(c_in, skip, 1, 1, groups)) if skip else None
        self.deeper = nn.Sequential(
            *_conv_bn_act(c_in, width, 3, 2, groups),
            *_conv_bn_act(width, width, 3, 1, groups),
            *([inner] if inner is not None else []),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        )
        self.merge = nn.Sequential(
            nn.BatchNorm2d(groups * (skip + width)),
            *_conv_bn_act(skip + width, width, 3, 1, groups),
            *_conv_bn_act(width, width, 1, 1, groups),
        )

    checkpointed = False  # recompute this scale's activations in the backward (--low_memory)

    def forward(self, x: Tensor, tail: nn.Module | None = None) -> Tensor:
        """This scale's output, followed by ``tail`` (the net's head, at the outermost scale)."""
        if self.checkpointed:
            return self._forward_checkpointed(x, tail)
        if tail is not None:
            return tail(self(x))
        deep = self.deeper(x)
        return self.merge(self._join(self.skip(x) if self.skip is not None else None, deep))

    def _join(self, s: Tensor | None, deep: Tensor) -> Tensor:
        """The skip branch and the upsampled deeper branch, cropped to one size, concatenated."""
        if s is None:
            return deep
        h, w = min(s.shape[-2], deep.shape[-2]), min(s.shape[-1], deep.shape[-1])
        return _cat_groups(centre_crop(s, h, w), centre_crop(deep, h, w), self.groups)

    def _forward_checkpointed(self, x: Tensor, tail: nn.Module | None) -> Tensor:
        """The same layers in the same order, as segments whose inner activations are not kept
        but recomputed in the backward (``torch.utils.checkpoint``). Each segment ends after a
        convolution or a BatchNorm-activation pair, so what stays in memory between the forward
        and the backward is one tensor per segment, and the backward recomputes one segment at a
        time: the convolutions' padded copies and the BatchNorm and activation outputs are never
        all alive at once. The inner scale is called between segments, so its own segments are
        checkpointed once, not nested inside this scale's (each activation is computed twice,
        never more). The head (``tail``) joins the last segment, so the outermost scale's
        full-size output is not kept either."""
        down, inner, up = self.deeper[:6], self.deeper[6:-1], self.deeper[-1]
        d = _segment(down[0:1], x)  # stride-2 conv: its padded copy of x is not kept
        d = _segment(down[1:4], d)  # BN, act, conv
        d = _segment(down[4:6], d)  # BN, act
        if len(inner):
            d = inner(d)
        s = _segment(self.skip, x) if self.skip is not None else None
        first = self.merge[0:2]  # up, cat, BN, conv
        m = _segment(lambda d, s: first(self._join(s, up(d))), d, s, owner=first)
        m = _segment(self.merge[2:5], m)  # BN, act, conv
        last = self.merge[5:7] if tail is None else nn.Sequential(*self.merge[5:7], tail)
        return _segment(last, m)  # BN, act (, head)


def _segment(
    function: Callable[..., Tensor], *inputs: Tensor | None, owner: nn.Module | None = None
) -> Tensor:
    """``function(*inputs)``, its activations recomputed in the backward. The recomputation runs
    the same kernels on the same inputs, so it is bit-identical; BatchNorm (always in training
    mode: it normalises by the batch's statistics) would update its running statistics a second
    time, which the loop never reads but checkpoints store, so the recomputation leaves them as
    they are. The net draws no random numbers: no RNG state is stashed. ``owner``: the module
    whose layers ``function`` runs (``function`` itself when it is a module)."""
    owner = owner if owner is not None else function
    norms = [m for m in owner.modules() if isinstance(m, nn.BatchNorm2d)]
    return checkpoint(
        function,
        *inputs,
        use_reentrant=False,
        preserve_rng_state=False,
        context_fn=lambda: (contextlib.nullcontext(), _frozen_statistics(norms)),
    )


@contextlib.contextmanager
def _frozen_statistics(norms: list[nn.BatchNorm2d]) -> Iterator[None]:
    """Let the recomputation update throwaway copies of the BatchNorms' running statistics, so
    the real ones are updated once per iteration, as without checkpointing. (Turning the update
    off instead would change which tensors the backward saves, which checkpointing refuses.)"""
    names = ("running_mean", "running_var", "num_batches_tracked")
    saved = [{name: getattr(norm, name) for name in names} for norm in norms]
    for norm, buffers in zip(norms, saved, strict=True):
        for name, buffer in buffers.items():
            setattr(norm, name, None if buffer is None else buffer.clone())
    try:
        yield
    finally:
        for norm, buffers in zip(norms, saved, strict=True):
            for name, buffer in buffers.items():
                setattr(norm, name, buffer)


def _cat_groups(a: Tensor, b: Tensor, groups: int) -> Tensor:
    """Concatenate channels group by group: [a_1, b_1, ..., a_K, b_K] for K groups."""
    if groups == 1:
        return torch.cat([a, b], dim=1)
    n, _, h, w = a.shape
    return torch.cat(
        [a.reshape(n, groups, -1, h, w), b.reshape(n, groups, -1, h, w)], dim=2
    ).reshape(n, -1, h, w)


class SkipNet(nn.Module):
    """DIP skip net with ``[width] * scales`` channels down and up and ``skip`` skip channels.

    Defaults are those of DOP's public code: 32 input channels, 3 output channels, width 128,
    5 scales, 4 skip channels (about 2.22M parameters). ``groups`` = K stacks K such nets: the
    input and output then have K·in_channels and K·out_channels channels.
    """

    def __init__(
        self,
        in_channels: int = INPUT_DEPTH,
        out_channels: int = 3,
        width: int = 128,
        scales: int = SCALES,
        skip: int = 4,
        groups: int = 1,
    ) -> None:
        super().__init__()
        if min(width, scales, in_channels, out_channels, groups) < 1 or skip < 0:
            raise ValueError(f"bad SkipNet size: {width=} {scales=} {skip=} {groups=}")
        self.scales, self.groups = scales, groups
        inner = None
        for i in reversed(range(scales)):
            inner = _Scale(in_channels if i == 0 else width, width, skip, inner, groups)
        self.body = inner
        self.head = nn.Sequential(_conv(width, out_channels, 1, 1, groups), nn.Sigmoid())

    def forward(self, z: Tensor) -> Tensor:
        return self.body(z, tail=self.head)


class SkipPrior(Prior):
    """The Deep Image Prior as DOP's public code runs it: x = f(θ; z + η), f the skip net above,
    z ~ uniform[0, 0.1) with 32 channels, fixed, η ~ N(0, (1/30)²) drawn at every iteration; every
    weight of the net is trained; SGD with lr 1 (DOP's defaults; DIP's notebook uses Adam 0.01).

    The net may run on a canvas larger than the image (``pad``: the sides rounded up to a
    multiple of 2**scales); its output is centre-cropped back, so the loss sees exactly the
    image's pixels. K seeds make K runs: one grouped net (K groups), z of shape (K, 32, H, W).
    ``input_depth`` and ``skip`` change z's channels and the skip channels (SelfDeblur: 8, 16).
    """

    defaults = {"method": "dop", "alg": "sgd", "lr": 1.0, "reg_noise_std": 1.0 / 30.0}
    multiple = 2**SCALES

    def __init__(
        self,
        image_shape: Sequence[int],
        *,
        width: int = 128,
        seeds: Sequence[int] = (0,),
        pad: bool = False,
        scales: int = SCALES,
        skip: int = 4,
        input_depth: int = INPUT_DEPTH,
    ) -> None:
        super().__init__()
        channels, h, w = image_shape
        self.image_size = (h, w)
        step, least = 2**scales, min_input_size(scales)
        canvas = [max(least, -(-s // step) * step) for s in (h, w)] if pad else [h, w]
        sizes = dict(in_channels=input_depth, out_channels=channels, width=width, scales=scales,
                     skip=skip)  # fmt: skip
        self.net = per_run_net(lambda groups: SkipNet(**sizes, groups=groups), seeds)
        self.register_buffer("input", per_run_input(seeds, (input_depth, *canvas)) * INPUT_SCALE)

    def forward(self, eta: Tensor | None) -> Tensor:
        z = self.input if eta is None else self.input + eta
        # The K runs' inputs side by side as the channels of one image for the grouped net.
        out = self.net(z.reshape(1, -1, *z.shape[-2:]))
        x = out.reshape(self.runs, -1, *out.shape[-2:])
        return centre_crop(x, *self.image_size)

    @classmethod
    def smallest_side(cls, pad: bool) -> int:
        """With --pad any side; without, a multiple of 32 that the 5-scale net accepts (64)."""
        return 1 if pad else -(-min_input_size(SCALES) // cls.multiple) * cls.multiple
