"""Memory: what a run will need before it starts, what the device has, and running out of it.

The peak memory of a run of the skip prior is, to a good approximation (docs/RESULTS.md,
"Memory"), a constant (the interpreter, torch and its libraries, the model and its optimizer)
plus a term proportional to the pixels of the net's canvas, the runs K and the width:

    peak ≈ BASE + 4·parameters·(2 + optimizer states) + pixels · K · s · (A[path] · width + B[path])

A and B are bytes per pixel per channel of width and per pixel, measured on each path (faithful,
fast, low-memory, both) with ``benchmarks/memory.py`` and ``denoising.py`` runs from 128×128 to
1024×1024 (below); s is the prior's ``memory_scale`` (1 for the skip net, less for the deep
decoder, whose layers are 1×1 convolutions). The same numbers are used for a GPU, where
the activations are the same tensors; they are marked as estimated there until a GPU run
measures them (the CUDA caching allocator and cuDNN's workspaces differ from the CPU's).

Beside the net, the loop keeps what its observers hold (``kept``: ES-WMV's ring of W outputs, ≈ 315
MB per run at 3×512×512 and W = 100; ES-EMV's average, detected image and the other image reported
beside it; the moving average), counted per run. A checkpoint is copied to host memory
(``utils.state.unstack_state``), between iterations: on a GPU it takes nothing on the device; on the
CPU it is made while the activations of the last iteration are freed, so it raises the peak only
when the state is larger than those (it never is for the skip net).

On a GPU one more limit holds whatever the memory: CUDA's reflection padding (forward and
backward) and channels-last bilinear upsampling index with 32-bit integers and take tensors of
fewer than ``INDEX_LIMIT`` = 2³¹ − 1 elements (torch's ``canUse32BitIndexMath``). The batched net
puts the K runs into one tensor, so K times a run's largest such tensor (``Prior.indexed_elements``:
(width + skip)·(H + 2)·(W + 2) for the skip net) must stay below it (``within_index_limit``):
one run of 4000×4000 at width 128 fits, 4032×4032 does not; 15 runs of 1024×1024 at width 128 fit
in one batch, 16 do not.

``available`` is the device's free memory: on the CPU the kernel's MemAvailable (and a cgroup's
limit, when one is lower), on a GPU the free memory CUDA reports plus what PyTorch's caching
allocator holds reserved but unused in this process (free for this process's next tensors). The
environment variable ``DOP_MEMORY_AVAILABLE`` (bytes, or with a K/M/G suffix) replaces it: to
keep a margin for other jobs on a shared machine, and in the tests.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

GB = 1024**3
ENVIRONMENT = "DOP_MEMORY_AVAILABLE"

# Calibrated on the 2-core CPU machine, torch 2.13.0+cpu (docs/RESULTS.md, "Memory"): the
# constant of each path, and its bytes per canvas pixel per channel of width (A) and per pixel
# (B). Faithful and fast (2026-11-25): A and B from 512x512 and 1024x1024 at width 128 (A·128 + B
# = 10.6 KB per pixel), the constants from 128x128 and 256x256 at widths 32-128. Low-memory paths
# (2026-12-02, the leaner checkpointed net): the constant and A·128 + B from 256x256, 512x512 and
# 1024x1024 at width 128 (3.4 KB per pixel; 2.9 KB with bf16), A from 1024x1024 at widths 64 and
# 128 (bf16: the same split assumed).
MB = 1024**2
BASE = {"faithful": 400 * MB, "fast": 400 * MB, "low_memory": 460 * MB,
        "fast+low_memory": 590 * MB}  # fmt: skip
A = {"faithful": 80.0, "fast": 68.0, "low_memory": 19.0, "fast+low_memory": 16.0}
B = {"faithful": 350.0, "fast": 350.0, "low_memory": 970.0, "fast+low_memory": 875.0}
PATHS = tuple(A)
INDEX_LIMIT = 2**31 - 1  # CUDA kernels with 32-bit index math take fewer elements than this


def within_index_limit(elements: int) -> bool:
    """Whether a tensor of ``elements`` elements can go to a CUDA kernel that indexes with 32-bit
    integers: torch's ``canUse32BitIndexMath`` (aten/src/ATen/cuda/detail/IndexUtils.cu) wants
    fewer than 2³¹ − 1, and CUDA's ``reflection_pad2d`` checks it for its input, its backward for
    the padded gradient (aten/src/ATen/native/cuda/ReflectionPad.cu)."""
    return elements < INDEX_LIMIT


def most_indexable_runs(per_run: int) -> int:
    """The most runs K whose batched tensor of K·``per_run`` elements is within the limit (0:
    not even one run; ``per_run`` 0: any number, returned as INDEX_LIMIT)."""
    return INDEX_LIMIT if per_run <= 0 else (INDEX_LIMIT - 1) // per_run


def path_name(fast: bool, low_memory: bool, bf16: bool) -> str:
    """The memory path of a run: the fast path changes the memory only through bf16."""
    fast = fast and bf16
    if low_memory:
        return "fast+low_memory" if fast else "low_memory"
    return "fast" if fast else "faithful"


@dataclass(frozen=True)
class Need:
    """What a run needs: the estimate and what it is for."""

    bytes: int
    pixels: int  # of the net's canvas, per run
    width: int
    runs: int
    path: str
    optimizer_states: int = 0
    scale: float = 1.0  # the prior's memory_scale
    checkpointing: bool = True  # whether --low_memory changes anything for the prior
    kept: int = 0  # bytes per run the observers keep beside the net
    indexed: int = 0  # elements per run of the largest tensor CUDA indexes with 32 bits
    cuda: bool = False  # on a GPU, where that limit holds

    @property
    def indexable(self) -> bool:
        """Whether the batch is within CUDA's 32-bit index limit (always, off a GPU)."""
        return not self.cuda or within_index_limit(self.runs * self.indexed)

    def fits(self, have: int) -> bool:
        """Whether it fits ``have`` bytes, and (on a GPU) the 32-bit index limit."""
        return self.bytes <= have and self.indexable

    extra: int = 0  # bytes for all runs beside these (SV-ES's windows and autoencoder)

    def __str__(self) -> str:
        return f"{gigabytes(self.bytes)} ({self.path.replace('_', '-')} path)"


def estimate(pixels: int, width: int, *, runs: int = 1, path: str = "faithful",
             parameters: int | None = None, optimizer_states: int = 0,
             scale: float = 1.0, kept: int = 0) -> int:  # fmt: skip
    """The estimated peak memory of a run, in bytes (see the module's docstring).
    ``parameters``: the trained parameters of one run (default: the skip net's at ``width``);
    ``optimizer_states``: tensors the optimizer keeps per parameter (SGD 0, Adam 2);
    ``scale``: the prior's ``memory_scale``; ``kept``: bytes per run its observers keep."""
    if parameters is None:
        parameters = skip_parameters(width)
    weights = 4 * parameters * runs * (2 + optimizer_states)  # the weights, their gradients
    activations = pixels * runs * scale * (A[path] * width + B[path])
    return int(BASE[path] + weights + kept * runs + activations)


def skip_parameters(width: int, channels: int = 3, scales: int = 5, skip: int = 4) -> int:
    """Trained parameters of the skip net (models/skip.py): 2.22M at width 128."""

    def per_scale(c_in: int) -> int:  # each conv's weights and bias, each BatchNorm's two
        return (
            (c_in * skip + 3 * skip) + (9 * c_in * width + 3 * width)
            + (9 * width * width + 3 * width) + 2 * (skip + width)
            + (9 * (skip + width) * width + 3 * width) + (width * width + 3 * width)
        )  # fmt: skip

    return per_scale(32) + (scales - 1) * per_scale(width) + width * channels + channels


def gigabytes(n: float) -> str:
    return f"{n / GB:.1f} GB"


def available(device: torch.device) -> int:
    """Free memory of ``device`` in bytes (``DOP_MEMORY_AVAILABLE`` replaces it). On a GPU: what
    CUDA reports free, plus what PyTorch's caching allocator has reserved in this process and
    not allocated (an earlier batch's, which the next one reuses; CUDA counts it as used)."""
    override = os.environ.get(ENVIRONMENT)
    if override:
        return parse_size(override)
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + cached
    return cpu_available()


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if match is None:
        raise ValueError(f"{ENVIRONMENT}={text!r}: give bytes, or a number with K, M, G or T")
    return int(float(match[1]) * 1024 ** " KMGT".index(match[2].upper() or " "))


def cpu_available() -> int:
    """MemAvailable (Linux: what can be allocated without swapping), or less where a cgroup
    limits this process; elsewhere the free physical pages."""
    try:
        info = Path("/proc/meminfo").read_text()
        free = int(re.search(r"MemAvailable:\s+(\d+) kB", info)[1]) * 1024
    except (OSError, TypeError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            free = min(free, int(limit) - used)
    except (OSError, ValueError):
        pass
    return free


def largest(fits, low: int, high: int) -> int | None:
    """The largest integer n in [low, high] with fits(n) (fits is monotone), or None."""
    if not fits(low):
        return None
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low


def advice(need: Need, have: int, side: int, multiple: int,
           indexed: Callable[[int, int], int] | None = None) -> str:  # fmt: skip
    """What would fit in ``have`` bytes: --low_memory, a smaller --crop, a smaller --width. On a
    GPU (``need.cuda``) also within the 32-bit index limit, ``indexed(side, width)`` being a
    run's largest indexed tensor on a square canvas of that side (``Prior.indexed_elements``)."""
    options = []
    more = {"runs": need.runs, "optimizer_states": need.optimizer_states, "scale": need.scale,
            "kept": need.kept}  # fmt: skip
    have -= need.extra  # (kept as it is: a smaller crop would shrink it a little)
    if "low_memory" not in need.path and need.checkpointing and need.indexable:
        low = "fast+low_memory" if need.path == "fast" else "low_memory"
        low_need = estimate(need.pixels, need.width, path=low, **more)
        if low_need <= have:
            options.append(f"--low_memory (about {gigabytes(low_need + need.extra)})")
    more["path"] = need.path

    def indexable(crop: int, width: int) -> bool:
        if not need.cuda or indexed is None:
            return True
        return within_index_limit(need.runs * indexed(crop, width))

    crop = largest(lambda n: estimate((n * multiple) ** 2, need.width, **more) <= have
                   and indexable(n * multiple, need.width), 1, side // multiple)  # fmt: skip
    if crop is not None:
        options.append(f"--crop {crop * multiple}")
    width = largest(lambda w: estimate(need.pixels, w, **more) <= have
                    and indexable(side, w), 1, need.width)  # fmt: skip
    if width is not None:
        options.append(f"--width {width}")
    return ", ".join(options) if options else "nothing at this size: use a device with more memory"


# How a failed allocation reads where it is not a torch.OutOfMemoryError: the CPU allocator's,
# cuDNN's and cuBLAS's (their workspaces and handles are allocated outside the caching
# allocator), and a CUDA call's ("CUDA error: out of memory").
OUT_OF_MEMORY = ("can't allocate memory", "out of memory", "cudnn_status_alloc_failed",
                 "cublas_status_alloc_failed")  # fmt: skip


def is_out_of_memory(err: BaseException) -> bool:
    """A failed allocation: CUDA's OutOfMemoryError, or a RuntimeError that says so (the CPU
    allocator's, cuDNN's or cuBLAS's allocation failures, a CUDA call out of memory)."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(words in text for words in OUT_OF_MEMORY)


def describe_failure(err: BaseException) -> str:
    """One line from an allocation error: how much it tried to allocate, when it says."""
    text = str(err)
    match = re.search(r"tried to allocate (\d+) bytes", text)
    if match:
        return f"an allocation of {gigabytes(int(match[1]))} failed"
    match = re.search(r"Tried to allocate ([0-9.]+ [KMG]iB)", text)
    if match:
        return f"an allocation of {match[1]} on the GPU failed"
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return first[:160]


def fits_message(need: Need, have: int) -> str:
    return f"estimated peak {need} of {gigabytes(have)} available"
