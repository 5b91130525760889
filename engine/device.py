"""Where a run computes, and whether it fits there: the device of ``--gpu`` and the memory
estimate of a run on it (``utils.memory``, with the prior's scale and checkpointing)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from engine.config import RunConfig
from engine.loop import cpu_has_bf16
from models import PRIORS
from utils import InputError, memory, sv


def pick_device(gpu: str | None) -> tuple[torch.device, str]:
    """``--gpu``: a CUDA index or ``cpu``; None: GPU 0 when there is one, else the CPU. Returns
    the device and its description (printed, and recorded with every run)."""
    if gpu == "cpu" or (gpu is None and not torch.cuda.is_available()):
        why = " (no CUDA GPU found)" if gpu is None else ""
        return torch.device("cpu"), f"cpu{why}, {torch.get_num_threads()} threads"
    if not torch.cuda.is_available():
        raise InputError(f"--gpu {gpu}: no CUDA GPU is available here; use --gpu cpu")
    count = torch.cuda.device_count()
    if gpu is not None and not (gpu.isdigit() and int(gpu) < count):
        raise InputError(f"--gpu must be cpu or a GPU index below {count}, got {gpu!r}")
    device = torch.device(f"cuda:{gpu or 0}")
    return device, f"{device} ({torch.cuda.get_device_name(device)})"


def memory_need(cfg: RunConfig, shape: Sequence[int], device: torch.device,
                runs: int = 1) -> memory.Need:  # fmt: skip
    """The estimated peak memory of ``runs`` runs of ``cfg`` (resolved) on images of ``shape``
    (C, H, W): on the net's canvas (--pad rounds the sides up to the prior's multiple), on this
    path; with --stop sv, SV-ES's windows and autoencoder too (``utils.sv.memory``)."""
    prior = PRIORS[cfg.prior]
    multiple = prior.multiple if cfg.pad else 1
    pixels = math.prod(-(-side // multiple) * multiple for side in shape[1:])
    bf16 = device.type == "cuda" or cpu_has_bf16()
    path = memory.path_name(cfg.fast, cfg.low_memory and prior.checkpointing, bf16)
    states = 2 if cfg.alg == "adam" else 0
    need = memory.estimate(pixels, cfg.width, runs=runs, path=path, optimizer_states=states,
                           scale=prior.memory_scale)  # fmt: skip
    extra = 0
    if cfg.stop == "sv":  # the window and the autoencoder, on the reported x (about the image)
        extra = sv.memory(shape[0], shape[1], shape[2], cfg.sv_window, runs)
    return memory.Need(need + extra, pixels, cfg.width, runs, path, states, prior.memory_scale,
                       prior.checkpointing, extra)  # fmt: skip


def check_fits(cfg: RunConfig, shape: Sequence[int], device: torch.device, name: str) -> None:
    """Print the estimate beside the memory the device has; InputError (naming what would fit)
    when one run does not fit, before anything is written."""
    need, have = memory_need(cfg, shape, device), memory.available(device)
    print(f"device: {name}; memory: {memory.fits_message(need, have)}", flush=True)
    if need.bytes > have:
        raise InputError(
            f"{cfg.ckpt}: {shape[1]}x{shape[2]} at --width {cfg.width} needs about {need}, more "
            f"than the {memory.gigabytes(have)} available on {device}; would fit: "
            + memory.advice(need, have, min(shape[1:]), PRIORS[cfg.prior].multiple)
        )


def fitting_batch(cfg: RunConfig, shape: Sequence[int], device: torch.device, most: int) -> int:
    """The largest number of runs like ``cfg`` (at most ``most``) whose estimated peak memory fits
    the device (one run alone was checked by ``check_fits``)."""
    have = memory.available(device)
    size = memory.largest(lambda k: memory_need(cfg, shape, device, k).bytes <= have, 1, most)
    if (size or 1) < most:
        print(f"batches of {size or 1}, not {most}: a larger batch would not fit in memory",
              flush=True)  # fmt: skip
    return size or 1
