"""Where a run computes, and whether it fits there: the device of ``--gpu`` and the memory
estimate of a run on it (``utils.memory``, with the prior's scale and checkpointing, the
observers' buffers and, on a GPU, CUDA's 32-bit index limit)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch

from engine.config import RunConfig
from engine.loop import Speed, stopping_observers
from models import PRIORS
from tasks import TASKS
from utils import InputError, memory, sv
from utils.stopping import RULES, StoppingRule


def pick_device(gpu: str | None) -> tuple[torch.device, str]:
    """``--gpu``: a CUDA index or ``cpu``; None: GPU 0 when there is one, else the CPU. Returns
    the device and its description (printed, and recorded with every run); a GPU becomes the
    process's current device (``use_device``)."""
    if gpu == "cpu" or (gpu is None and not torch.cuda.is_available()):
        why = " (no CUDA GPU found)" if gpu is None else ""
        return torch.device("cpu"), f"cpu{why}, {torch.get_num_threads()} threads"
    if not torch.cuda.is_available():
        raise InputError(f"--gpu {gpu}: no CUDA GPU is available here; use --gpu cpu")
    count = torch.cuda.device_count()
    if gpu is not None and not (gpu.isdigit() and int(gpu) < count):
        raise InputError(f"--gpu must be cpu or a GPU index below {count}, got {gpu!r}")
    device = torch.device(f"cuda:{gpu or 0}")
    use_device(device)
    return device, f"{device} ({torch.cuda.get_device_name(device)})"


def use_device(device: torch.device) -> None:
    """Make a CUDA ``device`` this process's current one (``torch.cuda.set_device``), so that
    what names no device (cuDNN's and cuBLAS's handles, torch.compile's kernels, a bare
    ``"cuda"``, ``torch.cuda.synchronize()``) goes there and not to GPU 0; nothing for the CPU.
    A subprocess of ``reproduce.py --jobs N --gpu 0,1`` gets its GPU as ``--gpu``."""
    if device.type == "cuda":
        torch.cuda.set_device(device)


def canvas(cfg: RunConfig, shape: Sequence[int]) -> list[int]:
    """The sides of the net's canvas for images of ``shape`` (C, H, W): --pad rounds them up to
    the prior's multiple."""
    multiple = PRIORS[cfg.prior].multiple if cfg.pad else 1
    return [-(-side // multiple) * multiple for side in shape[1:]]


def kept_bytes(cfg: RunConfig, shape: Sequence[int]) -> int:
    """Bytes per run that the observers of ``cfg`` keep for images of ``shape`` (C, H, W): their
    buffers, built on the meta device (no memory) and counted (ES-WMV's ring of --stop_window
    images, ES-EMV's average, the detected image, --ema's average). SV-ES is counted apart, for
    every run at once (``utils.sv.memory``)."""
    light = (
        cfg if RULES.get(cfg.stop, StoppingRule).light else dataclasses.replace(cfg, stop="none")
    )
    with torch.device("meta"):
        observers = stopping_observers(light, (1, *shape), torch.float32)
    return sum(b.numel() * b.element_size() for o in observers for b in o.buffers())


def memory_need(cfg: RunConfig, shape: Sequence[int], device: torch.device,
                runs: int = 1) -> memory.Need:  # fmt: skip
    """The estimated peak memory of ``runs`` runs of ``cfg`` (resolved) on images of ``shape``
    (C, H, W): on the net's canvas (--pad rounds the sides up to the prior's multiple), on this
    path, with what the observers keep (with --stop sv, SV-ES's windows and autoencoder:
    ``utils.sv.memory``); and, for the limit on a GPU, the elements of a run's largest tensor
    that CUDA indexes with 32 bits."""
    prior = PRIORS[cfg.prior]
    sides = canvas(cfg, shape)
    bf16 = Speed.of(cfg.fast, device).bf16
    path = memory.path_name(cfg.fast, cfg.low_memory and prior.checkpointing, bf16)
    states = 2 if cfg.alg == "adam" else 0
    kept = kept_bytes(cfg, shape)
    options = TASKS[cfg.task].options(cfg, cfg.prior)
    nets = options.get("generators", 1)  # a run's nets (phase retrieval's skip prior: two)
    scale = prior.memory_scale * nets
    need = memory.estimate(math.prod(sides), cfg.width, runs=runs, path=path,
                           parameters=nets * memory.skip_parameters(cfg.width),
                           optimizer_states=states, scale=scale, kept=kept)  # fmt: skip
    extra = sv.memory(*shape, cfg.sv_window, runs) if cfg.stop == "sv" else 0
    indexed = prior.indexed_elements(cfg.width, sides, options)
    return memory.Need(need + extra, math.prod(sides), cfg.width, runs, path, states,
                       scale, prior.checkpointing, kept, indexed,
                       device.type == "cuda", extra)  # fmt: skip


def check_fits(cfg: RunConfig, shape: Sequence[int], device: torch.device, name: str) -> None:
    """Print the estimate beside the memory the device has; InputError (naming what would fit)
    when one run does not fit, or (on a GPU) exceeds CUDA's 32-bit index limit, before anything
    is written."""
    need, have = memory_need(cfg, shape, device), memory.available(device)
    print(f"device: {name}; memory: {memory.fits_message(need, have)}", flush=True)
    if need.fits(have):
        return
    prior = PRIORS[cfg.prior]
    options = TASKS[cfg.task].prior_options.get(cfg.prior, {})
    fitting = memory.advice(
        need, have, min(shape[1:]), prior.multiple,
        lambda side, width: prior.indexed_elements(width, (side, side), options),
    )  # fmt: skip
    size = f"{shape[1]}x{shape[2]} at --width {cfg.width}"
    if not need.indexable:
        raise InputError(
            f"{cfg.ckpt}: {size} is too large for a GPU: the net's largest tensor would have "
            f"{need.indexed:,} elements, and CUDA's reflection padding takes fewer than 2^31; "
            f"would fit: {fitting}"
        )  # fmt: skip
    raise InputError(
        f"{cfg.ckpt}: {size} needs about {need}, more than the {memory.gigabytes(have)} "
        f"available on {device}; would fit: {fitting}"
    )  # fmt: skip


def fitting_batch(cfg: RunConfig, shape: Sequence[int], device: torch.device, most: int) -> int:
    """The largest number of runs like ``cfg`` (at most ``most``) whose estimated peak memory fits
    the device and, on a GPU, whose batched tensors stay within CUDA's 32-bit index limit (one
    run alone was checked by ``check_fits``)."""
    have = memory.available(device)
    size = memory.largest(lambda k: memory_need(cfg, shape, device, k).fits(have), 1, most) or 1
    if size < most:
        need = memory_need(cfg, shape, device, size + 1)
        why = "fit in memory" if need.indexable else "stay below CUDA's 2^31 elements a tensor"
        print(f"batches of {size}, not {most}: a larger batch would not {why}", flush=True)
    return size
