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
image, and a K-group net computes what K separate nets compute (tested: equal up to rounding,
since grouped and plain convolutions may sum in other orders); its parameters are the K nets'
parameters concatenated along dimension 0 (``utils.state.stack_states``).

The network maps an H x W input to an H x W output for any H, W >= ``min_input_size(scales)``:
where a downsampled size is odd, the upsampled branch is one pixel larger than the skip branch
and is centre-cropped to it before the concat, as in the original code.

SelfDeblur's image generator (Ren et al., CVPR 2020, networks/skip.py:71-78) is this net with a
dot-product non-local block (``NonLocal``) in the deeper branch of every scale from the third on
(its ``if i>1``: scales 3 to 5 of 5), after the first conv-BN-act: ``nonlocal_from=2`` (0-based),
which the deblurring tasks ask for.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import prune
from torch.utils.checkpoint import checkpoint

from models.prior import Prior, per_run_input, per_run_net
from utils.images import centre_crop

SCALES = 5  # the public code's depth: image sides are cropped to multiples of 2**SCALES = 32
INPUT_DEPTH = 32  # channels of the fixed input z
INPUT_SCALE = 0.1  # z ~ uniform[0, 0.1)
# oneDNN's fast kernels for a convolution's weight gradient take an input of at most INT_MAX
# bytes; past it (3x3, width 128, 2048x2048) it falls back to its reference kernel, which stalls
# a low-memory run. _SplitConv sums a larger input's weight gradient over bands of rows.
ONEDNN_INPUT_LIMIT = 2**31 - 1  # bytes
WEIGHT_GRADIENT_BAND = 2**28  # bytes of input per band, past the limit


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


class NonLocal(nn.Module):
    """The dot-product non-local block (Wang, Girshick, Gupta, He, CVPR 2018) as SelfDeblur's
    generator has it (networks/non_local_dot_product.py, ``NONLocalBlock2D`` with its defaults:
    inter = c // 2 channels, sub-sampling, a BatchNorm in W), for K groups of c channels each::

        θ = conv1x1(x),  φ = maxpool2×2(conv1x1(x)),  g = maxpool2×2(conv1x1(x))   (c → c/2)
        y = (θᵀφ / N) g,   z = BN(conv1x1(y)) + x                                (c/2 → c)

    θᵀφ is the (HW × N) matrix of dot products between every position and the N = ⌊H/2⌋⌊W/2⌋
    pooled ones, divided by N (no softmax). Every 1×1 convolution has a bias and PyTorch's
    initialisation; the BatchNorm's scale and shift start at 0, so the block starts as the
    identity and its gradient reaches them (BatchNorm in training mode). Group k's channels are
    k·c..(k+1)·c − 1, as everywhere in the grouped net."""

    def __init__(self, channels: int, groups: int = 1) -> None:
        super().__init__()
        self.groups, self.inter = groups, max(1, channels // 2)
        wide, narrow = groups * channels, groups * self.inter
        self.g = nn.Sequential(nn.Conv2d(wide, narrow, 1, groups=groups), nn.MaxPool2d(2))
        self.theta = nn.Conv2d(wide, narrow, 1, groups=groups)
        self.phi = nn.Sequential(nn.Conv2d(wide, narrow, 1, groups=groups), nn.MaxPool2d(2))
        self.W = nn.Sequential(nn.Conv2d(narrow, wide, 1, groups=groups), nn.BatchNorm2d(wide))
        nn.init.zeros_(self.W[1].weight)
        nn.init.zeros_(self.W[1].bias)

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        runs = n * self.groups  # one attention per image and group
        g = self.g(x).reshape(runs, self.inter, -1).transpose(1, 2)  # (runs, N, c/2)
        theta = self.theta(x).reshape(runs, self.inter, h * w).transpose(1, 2)  # (runs, HW, c/2)
        phi = self.phi(x).reshape(runs, self.inter, -1)  # (runs, c/2, N)
        f = torch.matmul(theta, phi)
        y = torch.matmul(f / f.shape[-1], g)  # (runs, HW, c/2)
        y = y.transpose(1, 2).reshape(n, self.groups * self.inter, h, w)
        return self.W(y) + x


def nonlocal_parameters(channels: int) -> int:
    """Parameters of one ``NonLocal`` block of c channels: θ, φ, g (c → c/2, with bias), W's
    conv (c/2 → c, with bias) and BatchNorm (2c): 33,344 at c = 128."""
    inter = max(1, channels // 2)
    return 3 * (channels * inter + inter) + inter * channels + channels + 2 * channels


class _Scale(nn.Module):
    """One scale of the U-Net; ``inner`` is the next (coarser) scale, or None at the bottom;
    ``nonlocal_block``: a ``NonLocal`` block after the deeper branch's first conv-BN-act."""

    def __init__(
        self, c_in: int, width: int, skip: int, inner: _Scale | None, groups: int = 1,
        nonlocal_block: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self.groups = groups
        self.second = 4 if nonlocal_block else 3  # index of the deeper branch's second conv
        self.skip = nn.Sequential(*_conv_bn_act(c_in, skip, 1, 1, groups)) if skip else None
        self.deeper = nn.Sequential(
            *_conv_bn_act(c_in, width, 3, 2, groups),
            *([NonLocal(width, groups)] if nonlocal_block else []),
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
        """The same layers in the same order, run as segments whose insides are not kept but
        recomputed in the backward (``torch.utils.checkpoint``), so that what is alive at once
        in the backward is a few tensors of the largest size (docs/RESULTS.md, "Memory"):

        * at the outermost scale (the one with ``tail``) the deeper branch (down and the inner
          scales, as segments) is also one segment around them: between the forward and the
          backward only its input and its output are kept, not the boundaries of its segments,
          all alive while the full-size layers' backward runs. Its forward runs once more (about
          a seventh of an iteration's work); at the inner scales that would cost as much again
          and save nothing at the peak, which is in the full-size layers' backward;
        * each other segment ends with a convolution or a BatchNorm-activation pair; a segment's
          recomputation stops before its last convolution (``_SplitConv``), which the backward
          needs the input of, not the output;
        * up, concat and BatchNorm before the first merge convolution are a segment inside its
          segment, so the concat is not alive during that convolution's backward;
        * ``tail`` (the net's head: a 1x1 conv, then the sigmoid) ends the last segment with its
          conv, so the outermost scale's full-size output is not kept; the sigmoid, which keeps
          only its 3-channel output, runs after it."""
        outermost = tail is not None
        d = _segment(self._descend, x, owner=self.deeper) if outermost else self._descend(x)
        s = _segment(self.skip, x) if self.skip is not None else None
        up, norm = self.deeper[-1], self.merge[0]

        def join(d: Tensor, s: Tensor | None) -> Tensor:
            return norm(self._join(s, up(d)))

        m = _segment(lambda d, s: _segment(join, d, s, owner=norm), d, s, conv=self.merge[1],
                     owner=norm)  # fmt: skip
        m = _segment(self.merge[2:4], m, conv=self.merge[4])  # BN, act, conv
        if tail is None:
            return _segment(self.merge[5:7], m)  # BN, act
        return tail[1:](_segment(self.merge[5:7], m, conv=tail[0]))  # BN, act, head conv

    def _descend(self, x: Tensor) -> Tensor:
        """The deeper branch without its upsampling, as segments: stride-2 conv (its padded copy
        of x is not kept), BN-act(-non-local)-conv, BN-act, the inner scale."""
        second = self.second
        down, inner = self.deeper[: second + 3], self.deeper[second + 3 : -1]
        d = _segment(None, x, conv=down[0])
        d = _segment(down[1:second], d, conv=down[second])
        d = _segment(down[second + 1 : second + 3], d)
        return inner(d) if len(inner) else d


_RECOMPUTING: ContextVar[object | None] = ContextVar("recomputing", default=None)


def _segment(
    function: Callable[..., Tensor] | None,
    *inputs: Tensor | None,
    conv: nn.Conv2d | None = None,
    owner: nn.Module | None = None,
) -> Tensor:
    """``conv(function(*inputs))`` (either may be None), its activations recomputed in the
    backward. The recomputation runs the same kernels on the same inputs, so it is
    bit-identical (tested on the CPU); it stops before ``conv``, whose backward needs its input
    only (torch's checkpoint stops at the last saved tensor, but a custom Function saves after
    computing). BatchNorm (always in training mode: it normalises by the batch's statistics)
    would update its running statistics a second time, which the loop never reads but
    checkpoints store, so the recomputation leaves them as they are. The net draws no random
    numbers: no RNG state is stashed. ``owner``: the module whose layers ``function`` runs
    (``function`` itself when it is a module). A Sequential ``function`` runs through
    ``_layers``."""
    owner = owner if owner is not None else function
    norms = [m for o in (owner, conv) if isinstance(o, nn.Module) for m in o.modules()
             if isinstance(m, nn.BatchNorm2d)]  # fmt: skip
    token = object()  # this segment, while it is recomputed

    def run(*inputs: Tensor | None) -> Tensor:
        if function is None:
            h = inputs[0]
        elif isinstance(function, nn.Sequential):
            h = _layers(function, inputs[0])
        else:
            h = function(*inputs)
        return h if conv is None else _convolve(conv, h, skip=_RECOMPUTING.get() is token)

    return checkpoint(
        run,
        *inputs,
        use_reentrant=False,
        preserve_rng_state=False,
        context_fn=lambda: (contextlib.nullcontext(), _recomputation(norms, token)),
    )


def _layers(layers: nn.Sequential, h: Tensor) -> Tensor:
    """The layers applied in order, as their Sequential would, with two savings that change
    no bit: a LeakyReLU right after a BatchNorm runs in place (BatchNorm's backward does not
    read its output, and LeakyReLU's backward reads the sign, the same in its output as in its
    input), and convolutions run through ``_convolve``."""
    previous = None
    for layer in layers:
        if isinstance(layer, nn.LeakyReLU) and isinstance(previous, nn.BatchNorm2d):
            h = F.leaky_relu(h, layer.negative_slope, inplace=True)
        elif isinstance(layer, nn.Conv2d):
            h = _convolve(layer, h)
        else:
            h = layer(h)
        previous = layer
    return h


def _convolve(conv: nn.Conv2d, h: Tensor, skip: bool = False) -> Tensor:
    """``conv(h)`` as the module computes it (reflection padding, then the convolution without
    padding), through ``_SplitConv``; a 1x1 conv skips its padding by zero (a copy). ``skip``:
    recomputing, the output is not needed. A pruned conv (models/lip.py) recomputes its weight
    in a forward pre-hook: it is called as a module."""
    if prune.is_pruned(conv):
        return conv(h)
    if conv.padding_mode != "reflect":
        raise ValueError(f"the skip net pads by reflection, not {conv.padding_mode!r}")
    (ph, pw), (sh, sw), (dh, dw) = conv.padding, conv.stride, conv.dilation
    padding = (pw, pw, ph, ph) if ph or pw else None
    return _SplitConv.apply(h, conv.weight, conv.bias, padding, (sh, sw), (dh, dw), conv.groups,
                            skip)  # fmt: skip


class _SplitConv(torch.autograd.Function):
    """``conv2d(pad(h), weight, bias)``, reflection padding by ``padding`` (or none), with the
    kernels autograd runs for the module, so the same bits (tested on the CPU; on a GPU the
    padding's backward adds with atomics in no fixed order, so two runs of either path may
    differ in the last bits), in an order that keeps fewer full-size tensors alive in the
    backward (docs/RESULTS.md, "Memory"):

    * the padding's backward needs only h's shape, but autograd's keeps h itself: here only
      the padded input is kept (1 full-size tensor less while the convolution's backward runs);
    * the gradient of the weight and bias is computed first, then that of the input, in two
      calls of the convolution's backward: the weight pass's reordered copies of the input and
      of the output's gradient (oneDNN, on the CPU) are freed before the input's gradient is
      allocated (1 full-size tensor less at the peak).

    On the CPU an input larger than ``ONEDNN_INPUT_LIMIT`` has its weight gradient summed over
    bands of rows (``_weight_gradient``): equal up to rounding, not bit-identical.

    Under autocast the convolution runs in the autocast dtype and the gradients return in the
    dtypes of h and the parameters, as autocast's casts would return them."""

    @staticmethod
    def forward(ctx, h, weight, bias, padding, stride, dilation, groups, skip):  # noqa: ANN001, ANN205
        x = h if padding is None else F.pad(h, padding, mode="reflect")
        ctx.save_for_backward(x, weight, bias)
        ctx.arguments = (h.shape, padding, stride, dilation, groups)
        if skip:  # a recomputation that ends here: only the saved tensors are wanted
            return x.new_empty(0)
        return F.conv2d(x, weight, bias, stride, 0, dilation, groups)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x, weight, bias = ctx.saved_tensors
        shape, padding, stride, dilation, groups = ctx.arguments
        needs_h, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        xc, wc = x.to(grad.dtype), weight.to(grad.dtype)
        sizes = None if bias is None else [bias.shape[0]]
        arguments = (sizes, stride, (0, 0), dilation, False, (0, 0), groups)
        backward = torch.ops.aten.convolution_backward
        grad_h = grad_weight = grad_bias = None
        if needs_weight or needs_bias:
            mask = [False, needs_weight, needs_bias and bias is not None]
            grad_weight, grad_bias = _weight_gradient(grad, xc, wc, arguments, mask)
            grad_weight = None if grad_weight is None else grad_weight.to(weight.dtype)
            grad_bias = None if grad_bias is None else grad_bias.to(bias.dtype)
        if needs_h:
            grad_h = backward(grad, xc, wc, *arguments, [True, False, False])[0].to(x.dtype)
            if padding is not None:  # h's shape, without h: a tensor of that shape, no memory
                like = grad_h.new_empty(()).expand(shape)
                grad_h = torch.ops.aten.reflection_pad2d_backward(grad_h, like, padding)
        return grad_h, grad_weight, grad_bias, None, None, None, None, None


def _bands(x: Tensor) -> int:
    """Into how many bands of rows a convolution's weight gradient over input x is split: 1 up
    to ``ONEDNN_INPUT_LIMIT`` bytes and off the CPU (the limit is oneDNN's), else bands of
    about ``WEIGHT_GRADIENT_BAND`` bytes."""
    size = x.numel() * x.element_size()
    if size <= ONEDNN_INPUT_LIMIT or x.device.type != "cpu":
        return 1
    return -(-size // WEIGHT_GRADIENT_BAND)


def _weight_gradient(grad: Tensor, x: Tensor, weight: Tensor, arguments: tuple,
                     mask: list[bool]) -> tuple[Tensor | None, Tensor | None]:  # fmt: skip
    """The gradients of a convolution's weight and bias (``mask``), as one call of its backward
    when x is at most ``ONEDNN_INPUT_LIMIT`` bytes or not on the CPU (the limit is oneDNN's),
    else summed over bands of output rows of about ``WEIGHT_GRADIENT_BAND`` bytes of input,
    each with the input rows it reads (the same sum in another order: equal up to rounding)."""
    backward = torch.ops.aten.convolution_backward
    bands = _bands(x)
    if bands == 1:
        return tuple(backward(grad, x, weight, *arguments, mask)[1:])
    stride, dilation = arguments[1][0], arguments[3][0]
    reach = dilation * (weight.shape[-2] - 1) + 1  # input rows under one output row
    rows = grad.shape[-2]
    step = -(-rows // bands)
    total = [None, None]
    for start in range(0, rows, step):
        end = min(rows, start + step)
        band = x[..., start * stride : (end - 1) * stride + reach, :]
        parts = backward(grad[..., start:end, :], band, weight, *arguments, mask)[1:]
        total = [p if t is None else t + p for t, p in zip(total, parts, strict=True)]
    return tuple(total)


@contextlib.contextmanager
def _recomputation(norms: list[nn.BatchNorm2d], token: object) -> Iterator[None]:
    """While a segment is recomputed: ``_RECOMPUTING`` names it, and its BatchNorms update
    throwaway copies of their running statistics, so the real ones are updated once per
    iteration, as without checkpointing. (Turning the update off instead would change which
    tensors the backward saves, which checkpointing refuses.)"""
    names = ("running_mean", "running_var", "num_batches_tracked")
    saved = [{name: getattr(norm, name) for name in names} for norm in norms]
    for norm, buffers in zip(norms, saved, strict=True):
        for name, buffer in buffers.items():
            setattr(norm, name, None if buffer is None else buffer.clone())
    reset = _RECOMPUTING.set(token)
    try:
        yield
    finally:
        _RECOMPUTING.reset(reset)
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
    input and output then have K·in_channels and K·out_channels channels. ``nonlocal_from``:
    the scales from this one on (0-based, outermost 0) have a ``NonLocal`` block in their deeper
    branch after its first conv-BN-act (SelfDeblur's generator: 2; None, none: DIP and DOP).
    """

    def __init__(
        self,
        in_channels: int = INPUT_DEPTH,
        out_channels: int = 3,
        width: int = 128,
        scales: int = SCALES,
        skip: int = 4,
        groups: int = 1,
        nonlocal_from: int | None = None,
    ) -> None:
        super().__init__()
        if min(width, scales, in_channels, out_channels, groups) < 1 or skip < 0:
            raise ValueError(f"bad SkipNet size: {width=} {scales=} {skip=} {groups=}")
        self.scales, self.groups = scales, groups
        inner = None
        for i in reversed(range(scales)):
            block = nonlocal_from is not None and i >= nonlocal_from
            inner = _Scale(in_channels if i == 0 else width, width, skip, inner, groups,
                           nonlocal_block=block)  # fmt: skip
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
    ``input_depth`` and ``skip`` change z's channels and the skip channels, ``nonlocal_from``
    the first scale with a non-local block (SelfDeblur: 8, 16, 2: ``tasks/deblur.py``).
    ``generators`` = G splits the C output channels among G independent nets with inputs of
    their own (z of G·32 channels), each making C/G channels: two for phase retrieval's "double
    DIP" (the magnitude and the phase, Zhuang et al., 2022). A run is then G groups of the
    grouped net (KG groups for K runs), so its state stacks and splits by runs as before.
    """

    defaults = {"method": "dop", "alg": "sgd", "lr": 1.0, "reg_noise_std": 1.0 / 30.0}
    multiple = 2**SCALES
    checkpointing = True

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
        nonlocal_from: int | None = None,
        generators: int = 1,
    ) -> None:
        super().__init__()
        channels, h, w = image_shape
        if generators < 1 or channels % generators:
            raise ValueError(f"{generators} generators cannot share {channels} channels")
        self.image_size = (h, w)
        step, least = 2**scales, min_input_size(scales)
        canvas = [max(least, -(-s // step) * step) for s in (h, w)] if pad else [h, w]
        sizes = dict(in_channels=input_depth, out_channels=channels // generators, width=width,
                     scales=scales, skip=skip, nonlocal_from=nonlocal_from)  # fmt: skip
        g = generators
        self.net = per_run_net(lambda groups: SkipNet(**sizes, groups=groups * g), seeds)
        depth = g * input_depth  # the G nets' inputs side by side
        self.register_buffer("input", per_run_input(seeds, (depth, *canvas)) * INPUT_SCALE)

    def forward(self, eta: Tensor | None) -> Tensor:
        z = self.input if eta is None else self.input + eta
        # The K runs' inputs side by side as the channels of one image for the grouped net.
        out = self.net(z.reshape(1, -1, *z.shape[-2:]))
        x = out.reshape(self.runs, -1, *out.shape[-2:])
        return centre_crop(x, *self.image_size)

    @classmethod
    def indexed_elements(cls, width: int, canvas: Sequence[int], options: dict[str, Any]
                         ) -> int:  # fmt: skip
        """The largest tensor CUDA's reflection padding gets: the outermost merge convolution's
        padded input, the skip and deeper branches concatenated (width + skip channels) and one
        pixel added on every side (or, narrower nets, the input's padded copy); G
        ``generators`` side by side make it G times as large."""
        channels = max(width + options.get("skip", 4), options.get("input_depth", INPUT_DEPTH))
        return options.get("generators", 1) * channels * math.prod(side + 2 for side in canvas)

    @classmethod
    def smallest_side(cls, pad: bool) -> int:
        """With --pad any side; without, a multiple of 32 that the 5-scale net accepts (64)."""
        return 1 if pad else -(-min_input_size(SCALES) // cls.multiple) * cls.multiple
