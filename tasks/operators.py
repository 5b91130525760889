"""Forward operators A: the model of the observation is y ≈ A(x) [+ g⊙g − h⊙h].

An operator is an ``nn.Module`` that maps image estimates x of shape (K, C, H, W) (K runs) to
predictions of the observations. Whatever it holds per run (a mask, a kernel) is a buffer with the
runs along dimension 0, so it moves, checkpoints and batches with the model. The loop only calls
it forward; it never needs an adjoint. Besides ``forward`` an operator says

* ``output_shape((C, H, W))``: the shape of one run's A(x), which the sparse term g⊙g − h⊙h takes
  (the observation's: smaller than x for super-resolution and a 'valid' blur), and its inverse
  ``input_shape``: the shape of x for an observation of a given shape;
* ``crop(x)``: the part of x that is reported and compared with the clean image (all of x, except
  for a 'valid' blur: the centre of the observation's size, as SelfDeblur reports it; phase
  retrieval: the magnitude), of shape ``crop_shape((C, H, W))``;
* ``align(x, reference)``: that part moved onto the clean reference over what the observation
  cannot tell apart, before any metric (the identity, except for phase retrieval's shifts and
  twin image).

=============== ============================================== =====================================
operator        A(x)                                            shapes
=============== ============================================== =====================================
``Identity``    x (denoising)                                   (C, H, W) → (C, H, W)
``Mask``        m ⊙ x, m ∈ {0, 1} per pixel (inpainting)        (C, H, W) → (C, H, W)
``Downsample``  antialiased bicubic ×1/s (super-resolution)     (C, H, W) → (C, H/s, W/s)
``Lanczos2``    Lanczos-2 ×1/s, strided (the DIP's, DRP's SR)    (C, H, W) → (C, H/s, W/s)
``Blur``        x ∗ k, 'valid' (deblurring)                     (C, H, W) → (C, H−kh+1, W−kw+1)
``KernelNet``   x ∗ G_k(z_k), 'valid' (blind deblurring)        as ``Blur``
``FarField``    |F(pad(m e^{iφ}))| (phase retrieval), x = (m, φ)  (2C, n, n) → (C, N, N), N ≥ 2n
=============== ============================================== =====================================
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from utils.metrics import align_fourier
from utils.seeding import derive_seed


class Operator(nn.Module):
    """A(x) = x, and the defaults of the interface above: denoising, where y is x plus noise."""

    def forward(self, x: Tensor) -> Tensor:
        return x

    def output_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        return tuple(shape)

    def input_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The shape of x whose A(x) has ``shape`` (the inverse of ``output_shape``)."""
        return tuple(shape)

    def crop(self, x: Tensor) -> Tensor:
        return x

    def crop_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The shape of ``crop(x)`` for x of ``shape``."""
        return tuple(shape)

    def align(self, x: Tensor, reference: Tensor) -> Tensor:
        """``crop(x)`` (K, ...) moved onto the clean reference before the metrics."""
        return x


class Identity(Operator):
    """A(x) = x: denoising, where y is the image plus noise."""


class Mask(Operator):
    """Inpainting: A(x) = m ⊙ x with a binary pixel mask m (1: observed), the same for every
    channel; the loss then sees the observed pixels only (the unobserved ones are 0 on both sides),
    as in the Deep Image Prior's inpainting (Ulyanov et al., CVPR 2018). ``masks``: (K, 1, H, W)."""

    def __init__(self, masks: Tensor) -> None:
        super().__init__()
        if masks.dim() != 4 or masks.shape[1] != 1:
            raise ValueError(f"masks must be (K, 1, H, W), got {tuple(masks.shape)}")
        self.register_buffer("mask", masks.float())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.mask.to(x.dtype)


def bernoulli_mask(shape: Sequence[int], keep: float, seed: int) -> Tensor:
    """A (1, H, W) pixel mask keeping each pixel with probability ``keep``, drawn from the run's
    "pixel_mask" stream (``utils.seeding``)."""
    generator = torch.Generator().manual_seed(derive_seed(seed, "pixel_mask"))
    return (torch.rand(1, *shape[-2:], generator=generator) < keep).float()


class Downsample(Operator):
    """Super-resolution: A(x) = D_s(x), a ×s reduction with the antialiased bicubic kernel of
    ``torch.nn.functional.interpolate(mode="bicubic", antialias=True)``: Keys' cubic (a = −0.5)
    stretched by s, so 4s taps per output pixel, with its weights renormalised where the support
    leaves the image (no padding assumption). It equals PIL's ``Image.resize(..., BICUBIC)`` on
    float images (tested), the usual way SR benchmarks make their low-resolution inputs.

    The Deep Image Prior's code uses its own Lanczos-2 kernel (support 2 lobes, also stretched by
    s) as a strided convolution with replicate padding; Lanczos-2 and Keys' cubic are both
    two-lobe approximations of the ideal low-pass filter and differ by a few percent in their
    weights. We use the library call because it is tested against a reference (PIL) and needs no
    kernel of our own; the choice is the same for the observation and the model, so the fit is
    consistent either way. The map is linear (no clamping on floating-point tensors)."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        if factor < 1:
            raise ValueError(f"the factor must be a positive integer, got {factor}")
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        h, w = self.output_shape(x.shape[-3:])[-2:]
        return F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)

    def output_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        c, h, w = shape
        if h % self.factor or w % self.factor:
            raise ValueError(f"the factor {self.factor} does not divide the size {h}x{w}")
        return c, h // self.factor, w // self.factor

    def input_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        c, h, w = shape
        return c, h * self.factor, w * self.factor


def lanczos2_taps(factor: int) -> Tensor:
    """The 1-D taps of the Deep Image Prior's ``Downsampler(kernel_type='lanczos2', phase=0.5)``
    (models/downsampler.py of DIP, DOP and the random projector), normalised to sum 1: 4s taps
    l_i = L(|i + ½ − (2s + 1)| / s), i = 1..4s, with the Lanczos-2 window
    L(d) = 2 sin(πd) sin(πd/2) / (π²d²). Its 2-D kernel, l lᵀ, is theirs (they normalise the
    product of the two 1-D values by its sum, which is the product of the sums)."""
    i = torch.arange(1, 4 * factor + 1, dtype=torch.float64)
    d = (i + 0.5 - (2 * factor + 1)).abs() / factor  # never 0 at phase ½
    taps = 2 * torch.sin(math.pi * d) * torch.sin(math.pi * d / 2) / (math.pi**2 * d**2)
    return taps / taps.sum()


class Lanczos2(Downsample):
    """Super-resolution as the random projector's code (2_Super_Resolution/train_sr.py:43, 128)
    and DIP's fit it: A(x) = the 4s × 4s Lanczos-2 kernel (``lanczos2_taps``) applied to every
    channel alone with stride s after padding by (4s − s)/2 = 3s/2 pixels that repeat the border
    (``nn.ReplicationPad2d``), so an H × W image gives H/s × W/s; even s only (an odd s gives
    neither an integer padding nor H/s). Linear. The observation itself is made by the task's
    antialiased bicubic ``Downsample`` (theirs by PIL's Lanczos-3), so the model's kernel is not
    the observation's, as in their code."""

    def __init__(self, factor: int) -> None:
        super().__init__(factor)
        if factor % 2:
            raise ValueError(f"the Lanczos-2 downsampler needs an even factor, got {factor}")
        taps = lanczos2_taps(factor)
        kernel = torch.outer(taps, taps).float()[None, None]  # a constant, not a run's state
        self.register_buffer("kernel", kernel, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        runs, channels, h, w = x.shape
        self.output_shape(x.shape[-3:])  # refuses sizes the factor does not divide
        pad = 3 * self.factor // 2
        flat = F.pad(x.reshape(runs * channels, 1, h, w), (pad,) * 4, mode="replicate")
        out = F.conv2d(flat, self.kernel.to(x.dtype), stride=self.factor)
        return out.reshape(runs, channels, *out.shape[-2:])


DOWNSAMPLERS = {"bicubic": Downsample, "lanczos2": Lanczos2}  # --downsampler


# Kernels of more entries than this are applied by FFT (``fft_convolve_valid``): on one CPU thread,
# forward and backward of a 31x31 kernel on a 158x158 x took 55 ms directly and 3.4 ms by FFT,
# 65x65 on 192x192 409 ms and 1.4 ms (2026-12-06). Levin's true kernels (13 to 27) stay direct.
FFT_ABOVE = 31 * 31


def convolve_valid(x: Tensor, kernels: Tensor) -> Tensor:
    """(x_k ∗ k_k) for each run k, every channel alike, 'valid': x (K, C, H, W), kernels
    (K, kh, kw) → (K, C, H − kh + 1, W − kw + 1). A true convolution (the kernel flipped, as
    ``scipy.signal.convolve2d(x, k, mode="valid")``): output pixel (i, j) is
    Σ_{a,b} k[a, b] x[i + kh − 1 − a, j + kw − 1 − b], so only pixels of x enter it and no border
    is assumed. The K runs are one grouped convolution, or for kernels of more than ``FFT_ABOVE``
    entries (over-specified kernel boxes) the same sums by FFT."""
    if kernels.shape[-2] * kernels.shape[-1] > FFT_ABOVE:
        return fft_convolve_valid(x, kernels)
    runs, channels, h, w = x.shape
    weight = kernels.flip(-2, -1).to(x.dtype).repeat_interleave(channels, dim=0)
    out = F.conv2d(x.reshape(1, runs * channels, h, w), weight[:, None], groups=runs * channels)
    return out.reshape(runs, channels, *out.shape[-2:])


def fft_convolve_valid(x: Tensor, kernels: Tensor) -> Tensor:
    """``convolve_valid`` by FFT: the circular convolution of x with the kernel zero-padded to
    x's size, whose entries (i, j) with i ≥ kh − 1 and j ≥ kw − 1 are the 'valid' ones (no index
    wraps around there), in float32 at least (cuFFT and PocketFFT take no bfloat16), returned
    in x's dtype. O(HW log HW) per image instead of O(HW·kh·kw)."""
    h, w = x.shape[-2:]
    kh, kw = kernels.shape[-2:]
    work = torch.promote_types(x.dtype, torch.float32)
    spectrum = torch.fft.rfft2(x.to(work)) * torch.fft.rfft2(kernels[:, None].to(work), s=(h, w))
    return torch.fft.irfft2(spectrum, s=(h, w))[..., kh - 1 :, kw - 1 :].to(x.dtype)


class Blur(Operator):
    """Deblurring with a known kernel: A(x) = x ∗ k, 'valid' (``convolve_valid``). x is larger
    than the observation by the kernel's size less one, as in SelfDeblur (Ren et al., CVPR 2020):
    the observation's borders need no boundary condition (no wrap-around, no padding), and the
    image reported is the centre of x of the observation's size. ``kernels``: (K, kh, kw), each
    non-negative and summing to 1."""

    def __init__(self, kernels: Tensor) -> None:
        super().__init__()
        if kernels.dim() != 3:
            raise ValueError(f"kernels must be (K, kh, kw), got {tuple(kernels.shape)}")
        self.register_buffer("kernels", kernels.float())

    @property
    def kernel_size(self) -> tuple[int, int]:
        return tuple(self.kernels.shape[-2:])

    def kernel(self) -> Tensor:
        """The K kernels (K, kh, kw)."""
        return self.kernels

    def forward(self, x: Tensor) -> Tensor:
        return convolve_valid(x, self.kernel())

    def output_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        c, h, w = shape
        kh, kw = self.kernel_size
        return c, h - kh + 1, w - kw + 1

    def input_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        c, h, w = shape
        kh, kw = self.kernel_size
        return c, h + kh - 1, w + kw - 1

    def crop_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        return self.output_shape(shape)

    def crop(self, x: Tensor) -> Tensor:
        kh, kw = self.kernel_size
        top, left = kh // 2, kw // 2  # SelfDeblur's padh // 2, padw // 2
        return x[..., top : x.shape[-2] - (kh - 1 - top), left : x.shape[-1] - (kw - 1 - left)]


KERNEL_INPUT = 200  # SelfDeblur's fcn: a fixed 200-d input
KERNEL_HIDDEN = 1000


class KernelNet(Blur):
    """Blind deblurring: A(x) = x ∗ G_k(z_k), 'valid', with the kernel made by a generator of its
    own (SelfDeblur, Ren, Zhang, Wang, Hu, Zuo, CVPR 2020, networks/fcn.py):
    G_k = Linear(200 → 1000) − ReLU6 − Linear(1000 → kh·kw) − Softmax on a fixed input
    z_k ~ uniform[0, 0.1)^200, so every kernel is non-negative and sums to 1. K runs hold K nets
    as batched weights (K, out, in), each initialised as ``nn.Linear`` from the run's "kernel"
    stream; the weights are trained (``trainable()``, a third optimizer group with its own step).

    ``window``: the reported x (``crop``) is the observation-sized window of x at the kernel
    box's centre ("centre", SelfDeblur's), or the window that the estimated kernel's centre of
    mass aligns with y ("kernel"): with y(i) = Σ_a k(a) x(i + n − 1 − a), a kernel whose mass
    sits at c in its n-box sees x from row n − 1 − c on, so an off-centre kernel in an
    over-specified box (Zhuang et al.) shifts x the other way by up to (n − 1) / 2 pixels, and
    this window follows it (c rounded per run, detached, no host sync).
    """

    def __init__(self, kernel_size: Sequence[int], seeds: Sequence[int], window: str = "centre"
                 ) -> None:  # fmt: skip
        Operator.__init__(self)
        if window not in ("centre", "kernel"):
            raise ValueError(f"window must be centre or kernel, got {window}")
        self.size, self.window = tuple(kernel_size), window
        params: dict[str, list[Tensor]] = {"w1": [], "b1": [], "w2": [], "b2": []}
        inputs = []
        for seed in seeds:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(seed, "kernel"))
                first = nn.Linear(KERNEL_INPUT, KERNEL_HIDDEN)
                second = nn.Linear(KERNEL_HIDDEN, math.prod(self.size))
                inputs.append(torch.rand(KERNEL_INPUT) * 0.1)
            for name, tensor in zip(params, (first.weight, first.bias, second.weight,
                                             second.bias), strict=True):  # fmt: skip
                params[name].append(tensor.detach())
        for name, tensors in params.items():
            self.register_parameter(name, nn.Parameter(torch.stack(tensors)))
        self.register_buffer("input", torch.stack(inputs))

    @property
    def kernel_size(self) -> tuple[int, int]:
        return self.size

    def kernel(self) -> Tensor:
        hidden = F.relu6(torch.baddbmm(self.b1[..., None], self.w1, self.input[..., None]))
        logits = torch.baddbmm(self.b2[..., None], self.w2, hidden)[..., 0]
        return logits.softmax(-1).reshape(-1, *self.size)

    def trainable(self) -> list[nn.Parameter]:
        return [self.w1, self.b1, self.w2, self.b2]

    def centre_of_mass(self) -> Tensor:
        """(K, 2): each kernel's centre of mass (row, column) in its box, detached."""
        with torch.no_grad():
            k = self.kernel()
            rows = torch.arange(self.size[0], device=k.device, dtype=k.dtype)
            cols = torch.arange(self.size[1], device=k.device, dtype=k.dtype)
            return torch.stack([(k.sum(2) * rows).sum(1), (k.sum(1) * cols).sum(1)], 1)

    def crop(self, x: Tensor) -> Tensor:
        if self.window == "centre":
            return super().crop(x)
        runs, channels = x.shape[:2]
        h, w = self.output_shape(x.shape[-3:])[-2:]
        box = torch.tensor(self.size, device=x.device) - 1
        start = (box - self.centre_of_mass().round().long()).clamp(min=0)
        rows = start[:, :1] + torch.arange(h, device=x.device)  # (K, h)
        cols = start[:, 1:] + torch.arange(w, device=x.device)  # (K, w)
        k = torch.arange(runs, device=x.device)[:, None, None, None]
        c = torch.arange(channels, device=x.device)[None, :, None, None]
        return x[k, c, rows[:, None, :, None], cols[:, None, None, :]]


class FarField(Operator):
    """Far-field (Fourier) phase retrieval, as in coherent diffraction imaging (CDI): the object
    o = m ⊙ e^{iφ} (n1 x n2, complex) is zero-padded into an N1 x N2 canvas (the known support S,
    a box; oversampling N/n ≥ 2 per side, so that |F| determines o up to the trivial ambiguities)
    and only the magnitudes of its discrete Fourier transform are measured:

        A(x) = |F(P o)|,  F the orthonormal 2-D DFT (Σ|A(x)|² = Σ|o|², Parseval).

    x (K, 2C, n1, n2) holds the magnitude m = x[:, :C] and the phase in [0, 1] (a sigmoid's
    output): φ = π (2 x[:, C:] − 1) ∈ (−π, π) (Zhuang et al.'s two generators, models/skip.py
    ``generators``). ``supports`` (K, N1, N2): each run's box (the same box for every run). The
    reported image is m (``crop``), aligned to the clean one over the shifts and the twin image
    (``utils.metrics.align_fourier``) before any metric; the global phase leaves m unchanged."""

    def __init__(self, supports: Tensor) -> None:
        super().__init__()
        if supports.dim() != 3:
            raise ValueError(f"supports must be (K, N1, N2), got {tuple(supports.shape)}")
        rows, cols = (supports[0].any(axis).nonzero()[:, 0] for axis in (1, 0))
        self.canvas = tuple(supports.shape[-2:])
        self.top, self.left = int(rows[0]), int(cols[0])
        self.size = (int(rows[-1]) - self.top + 1, int(cols[-1]) - self.left + 1)
        self.register_buffer("support", supports.float())

    def pad(self, o: Tensor) -> Tensor:
        """P: the object (…, n1, n2) in its box of the canvas (…, N1, N2), zero outside."""
        (big_h, big_w), (h, w) = self.canvas, self.size
        return F.pad(o, (self.left, big_w - w - self.left, self.top, big_h - h - self.top))

    def unpad(self, canvas: Tensor) -> Tensor:
        """The box of a canvas: P's adjoint."""
        h, w = self.size
        return canvas[..., self.top : self.top + h, self.left : self.left + w]

    def object(self, x: Tensor) -> Tensor:
        """o = m e^{iφ} (K, C, n1, n2), complex, in float32 at least (FFTs under autocast)."""
        c = x.shape[1] // 2
        magnitude, phase = x[:, :c].float(), x[:, c:].float()
        return torch.polar(magnitude, torch.pi * (2 * phase - 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.fft.fft2(self.pad(self.object(x)), norm="ortho").abs()

    def output_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        return shape[0] // 2, *self.canvas

    def input_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        return 2 * shape[0], *self.size

    def crop(self, x: Tensor) -> Tensor:
        return x[:, : x.shape[1] // 2]

    def crop_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        return shape[0] // 2, *shape[1:]

    def align(self, x: Tensor, reference: Tensor) -> Tensor:
        """The magnitudes x (K, C, n1, n2) on the canvas, moved onto the reference's over the
        circular shifts and the twin, back in the box (what shifts out of it is lost)."""
        moved = align_fourier(self.pad(x), self.pad(reference.to(x.dtype)), phase=False)
        return self.unpad(moved)


class KnownPhase(FarField):
    """The far-field measurement of a true object: x (K, C, n1, n2) is its magnitude, ``phase``
    (n1, n2) its phase, A(x) = |F(P(x e^{iφ}))|; what makes a synthetic observation."""

    def __init__(self, supports: Tensor, phase: Tensor) -> None:
        super().__init__(supports)
        self.register_buffer("phase", phase.float())

    def object(self, x: Tensor) -> Tensor:
        return torch.polar(x.float(), self.phase.expand_as(x))

    def output_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        return shape[0], *self.canvas

    def input_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        return shape[0], *self.size

    def crop(self, x: Tensor) -> Tensor:
        return x

    def crop_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        return tuple(shape)
