"""Recover an image from sparse noise with DOP, or with the Deep Image Prior baselines; or, with
--task, from an incomplete (inpaint), downsampled (sr) or blurred (deblur, blind-deblur)
observation, with or without outliers on top (README.md, "Tasks").

    python denoising.py --gpu 0 --image F16 --nlevel 0.5          # the paper's default run
    python denoising.py --image astronaut --crop 128 --width 32 --num_iter 2000 --gpu cpu
    python denoising.py --observed photo.png --gpu cpu            # a photo that is already noisy
    python denoising.py --task inpaint --keep 0.5 --nlevel 0.1 --image F16   # DOP inpainting

The public code's flags (--ckpt --gpu --image --nlevel --alg --l1 --lr --lr_c --num_iter --width)
keep their names and defaults; DIP is --method dip, DIP-L1 is --method dip --l1. Outputs go to
OUT_DIR/CKPT_* (README.md, "Outputs").
"""

from __future__ import annotations

import dataclasses
import math
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models import PRIORS, Prior
from models.lip import check_fits, file_sha256, load_ticket
from models.skip import INPUT_DEPTH, SCALES
from recovery import FitResult, build_model, build_observers, cpu_has_bf16, fit_batch
from utils import InputError, memory
from utils.config import DEBLUR, RunConfig, parse
from utils.images import EMBEDDED_DEFAULT, centre_crop, crop_to_multiple, resolve_image
from utils.memory import gigabytes
from utils.metrics import METRICS, kernel_correlation, psnr
from utils.noise import Corruption, corrupt
from utils.operators import Blur, Downsample, Identity, KernelNet, Mask, Operator, bernoulli_mask
from utils.rundir import RunDir
from utils.seeding import derive_seed

# Deblurring's image generator (blind or not) is SelfDeblur's skip net: 8 input channels, 16 skip
# channels; non-blind deconvolution then differs from SelfDeblur by the known kernel only.
SELFDEBLUR_SKIP = {"input_depth": 8, "skip": 16}
# Settings that may differ between the runs of one batch (the others must be equal; the image
# shape x, the prior's, is part of the batch key, so kernels of one batch have one size).
PER_RUN = ("image", "noise", "nlevel", "mixture_sigma", "observed", "clean", "crop", "seed", "ckpt",
           "out_dir", "data_dir", "resume", "overwrite", "quiet", "keep", "pixel_mask",
           "kernel")  # fmt: skip


class DivergedError(Exception):
    pass


@dataclass
class Data:
    """The observation y, the clean image when there is one, and what identifies them."""

    y: np.ndarray  # (C, H, W) float32 in [0, 1]
    clean: np.ndarray | None  # the reference for the reported x (the operator's crop of x)
    noise: Corruption | None  # the synthetic corruption, None for an --observed image
    identity: dict  # sources, sha256 and shape: recorded, and checked on --resume
    x_shape: tuple[int, ...] = ()  # the prior's output x (C, H, W); () means y's
    mask: np.ndarray | None = None  # inpaint: (1, H, W), 1 = observed
    kernel: np.ndarray | None = None  # deblur: the known kernel; blind-deblur: the true one

    def __post_init__(self) -> None:
        self.x_shape = tuple(self.x_shape or self.y.shape)


@dataclass
class Job:
    """One run, ready for the loop."""

    cfg: RunConfig  # with the prior's defaults filled in
    rundir: RunDir
    data: Data
    state: dict | None  # to resume from
    device: torch.device
    device_name: str
    started: float = 0.0  # when its loop began (time.time())

    def batch_key(self) -> tuple:
        """Runs with equal keys can share one loop."""
        shared = {k: v for k, v in dataclasses.asdict(self.cfg).items() if k not in PER_RUN}
        start = 0 if self.state is None else self.state["iteration"]
        return (str(self.device), self.data.y.shape, self.data.x_shape, self.data.clean is None,
                start, *shared.items())  # fmt: skip

    def checkpoint(self, state: dict | None) -> None:
        if state is not None:  # None: the run diverged, its last good checkpoint is kept
            self.rundir.save_state(self.cfg.defining(), self.data.identity, state)


def pick_device(gpu: str | None) -> tuple[torch.device, str]:
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


def fit_to_prior(image: np.ndarray, cfg: RunConfig, prior: type[Prior], what: str,
                 multiple: bool = True) -> np.ndarray:  # fmt: skip
    """--crop, then the crop to the prior's multiple (unless --pad, or ``multiple`` is off: the
    image is not the prior's canvas), then the size check."""
    original = image.shape
    if cfg.crop is not None:
        if cfg.crop > min(image.shape[1:]):
            raise InputError(f"--crop {cfg.crop} exceeds the size of {what}, {image.shape[1:]}")
        image = centre_crop(image, cfg.crop, cfg.crop)
    if not cfg.pad and multiple:
        image = crop_to_multiple(image, prior.multiple)
    smallest = prior.smallest_side(cfg.pad)
    if multiple and min(image.shape[1:]) < smallest:
        raise InputError(
            f"{what} is {original[1]}x{original[2]} (after crops {image.shape[1]}x"
            f"{image.shape[2]}) but the {cfg.prior} prior needs both sides >= {smallest} after "
            f"the crop to multiples of {prior.multiple}; use a larger image or --pad"
        )
    return np.ascontiguousarray(image)


def load_kernel(path: str, data_dir: Path) -> tuple[np.ndarray, dict]:
    """A blur kernel from a gray image: (kh, kw) float32, non-negative, normalised to sum 1."""
    loaded = resolve_image(path, data_dir)
    if loaded.pixels.shape[0] != 1:
        raise InputError(f"--kernel {path}: a kernel is a 2-D (gray) image, got a colour image")
    kernel = loaded.pixels[0].astype(np.float64)
    if kernel.sum() <= 0:
        raise InputError(f"--kernel {path}: the kernel is all zeros")
    identity = {"kernel": loaded.source, "kernel_sha256": loaded.sha256}
    return (kernel / kernel.sum()).astype(np.float32), identity


def load_mask(cfg: RunConfig, shape: tuple[int, ...], prior: type[Prior]
              ) -> tuple[np.ndarray, dict]:  # fmt: skip
    """The inpainting mask (1, H, W) of 0/1: --pixel_mask (cropped as the image) or a Bernoulli mask
    keeping each pixel with probability --keep (the run's "pixel_mask" stream)."""
    if cfg.pixel_mask is None:
        mask = bernoulli_mask(shape, cfg.keep, derive_seed(cfg.seed, "pixel_mask")).numpy()
        return mask, {}
    loaded = resolve_image(cfg.pixel_mask, Path(cfg.data_dir))
    mask = fit_to_prior(loaded.pixels.mean(0, keepdims=True), cfg, prior, cfg.pixel_mask)
    if mask.shape[1:] != tuple(shape[1:]):
        raise InputError(f"--pixel_mask {cfg.pixel_mask} is {mask.shape[1]}x{mask.shape[2]} "
                         f"after the crops, the image {shape[1]}x{shape[2]}; give a mask of "
                         "the image's size")  # fmt: skip
    return (mask > 0.5).astype(np.float32), {
        "pixel_mask": loaded.source,
        "pixel_mask_sha256": loaded.sha256,
    }


def observe(cfg: RunConfig, x: np.ndarray, kernel: np.ndarray | None) -> np.ndarray:
    """A(x) of a clean image by the operator the model uses, so observation and model agree
    (blind-deblur: the true kernel's blur; inpainting's mask is applied after the noise)."""
    operator = Identity()
    if cfg.task == "sr":
        operator = Downsample(cfg.factor)
    elif cfg.task in DEBLUR:
        operator = Blur(torch.from_numpy(kernel)[None])
    with torch.no_grad():
        return operator(torch.from_numpy(x)[None]).numpy()[0]


def estimated_kernel_size(cfg: RunConfig, kernel: np.ndarray | None) -> tuple[int, int]:
    if cfg.kernel_size is not None:
        return cfg.kernel_size, cfg.kernel_size
    return kernel.shape  # the true kernel's (check() asks for one or the other)


def x_shape_of(cfg: RunConfig, y_shape: tuple[int, ...], kernel: np.ndarray | None
               ) -> tuple[int, ...]:  # fmt: skip
    """The prior's image x for an observation of ``y_shape``: y's, ×factor (sr), or larger by the
    kernel's size less one (a 'valid' blur)."""
    c, h, w = y_shape
    if cfg.task == "sr":
        return c, h * cfg.factor, w * cfg.factor
    if cfg.task in DEBLUR:
        kh, kw = kernel.shape if cfg.task == "deblur" else estimated_kernel_size(cfg, kernel)
        return c, h + kh - 1, w + kw - 1
    return tuple(y_shape)


def check_x_size(cfg: RunConfig, x_shape: tuple[int, ...], prior: type[Prior]) -> None:
    smallest = prior.smallest_side(cfg.pad)
    if min(x_shape[1:]) < smallest:
        raise InputError(f"--task {cfg.task}: the image x would be {x_shape[1]}x{x_shape[2]} but "
                         f"the {cfg.prior} prior needs both sides >= {smallest}; use a larger "
                         "image or --crop")  # fmt: skip


def load_observed(cfg: RunConfig, prior: type[Prior]) -> Data:
    """An --observed image as it is, with an optional --clean reference (of x's reported size:
    y's, or y's ×factor for sr) and the operator's inputs (--pixel_mask, --kernel)."""
    observed = resolve_image(cfg.observed, Path(cfg.data_dir))
    reference = None if cfg.clean is None else resolve_image(cfg.clean, Path(cfg.data_dir))
    kernel, identity = None, {}
    if cfg.kernel is not None:
        kernel, identity = load_kernel(cfg.kernel, Path(cfg.data_dir))
    fitted = cfg.task in ("denoise", "inpaint")  # y is then the prior's canvas
    y = fit_to_prior(observed.pixels, cfg, prior, cfg.observed, multiple=fitted)
    x_shape = x_shape_of(cfg, y.shape, kernel)
    check_x_size(cfg, x_shape, prior)
    clean = None
    if reference is not None:
        scale = cfg.factor if cfg.task == "sr" else 1
        c, h, w = observed.pixels.shape
        if reference.pixels.shape != (c, h * scale, w * scale):
            raise InputError(
                f"--clean is {reference.pixels.shape} (channels, height, width) but --observed "
                f"is {observed.pixels.shape}; give images of one size"
                + (f" times --factor {scale} for the reference" if scale > 1 else "")
            )
        crop = None if cfg.crop is None else cfg.crop * scale
        clean = fit_to_prior(reference.pixels, dataclasses.replace(cfg, crop=crop), prior,
                             cfg.clean, multiple=fitted)  # fmt: skip
    mask = None
    if cfg.task == "inpaint":
        mask, more = load_mask(cfg, y.shape, prior)
        identity |= more
    identity |= {"observed": observed.source, "observed_sha256": observed.sha256,
                 "clean": None if reference is None else reference.source,
                 "clean_sha256": None if reference is None else reference.sha256}  # fmt: skip
    return Data(y, clean, None, identity | {"shape": list(y.shape)}, x_shape, mask, kernel)


def load_data(cfg: RunConfig) -> Data:
    """The observation: a clean image observed through --task's operator A and corrupted with
    seeded noise (--noise at --nlevel), y = noise(A(x)) (inpainting: m ⊙ noise(x)); or an
    --observed image as it is (with an optional --clean reference). With --mask (the
    lottery prior), the mask file's sha256 joins the data's identity (a resumed run must use the
    same) once it is found to fit."""
    data = load_images(cfg)
    if cfg.mask is not None:
        ticket = load_ticket(cfg.mask)
        check_fits(ticket, dict(in_channels=INPUT_DEPTH, out_channels=data.y.shape[0],
                                width=cfg.width, scales=SCALES, skip=4))  # fmt: skip
        data.identity |= {"mask": cfg.mask, "mask_sha256": file_sha256(cfg.mask)}
    return data


def load_images(cfg: RunConfig) -> Data:
    """The observation and the clean image (see ``load_data``)."""
    prior = PRIORS[cfg.prior]
    if cfg.observed is not None:
        return load_observed(cfg, prior)
    if cfg.image is not None:
        loaded = resolve_image(cfg.image, Path(cfg.data_dir))
    else:  # the public default F16, or the image embedded in scikit-image when it is not at hand
        try:
            loaded = resolve_image("F16", Path(cfg.data_dir))
        except InputError as err:
            print(f"note: {err}; using scikit-image's '{EMBEDDED_DEFAULT}'", file=sys.stderr)
            loaded = resolve_image(EMBEDDED_DEFAULT)
    identity = {"image": loaded.source, "image_sha256": loaded.sha256}
    # x is the clean image, the prior's canvas; for a blur, clean is x's centre of y's size.
    x = fit_to_prior(loaded.pixels, cfg, prior, loaded.source, multiple=cfg.task not in DEBLUR)
    mask = kernel = None
    if cfg.task == "inpaint":
        mask, more = load_mask(cfg, x.shape, prior)
        identity |= more
    if cfg.task in DEBLUR:
        kernel, more = load_kernel(cfg.kernel, Path(cfg.data_dir))
        identity |= more
        if min(x.shape[1] - kernel.shape[0], x.shape[2] - kernel.shape[1]) < 10:
            raise InputError(f"--kernel {cfg.kernel} is {kernel.shape[0]}x{kernel.shape[1]}: too "
                             f"large for the {x.shape[1]}x{x.shape[2]} image")  # fmt: skip
    if cfg.task == "sr" and (x.shape[1] % cfg.factor or x.shape[2] % cfg.factor):
        raise InputError(f"--factor {cfg.factor} does not divide the image's size "
                         f"{x.shape[1]}x{x.shape[2]} (after crops); use --crop")  # fmt: skip
    observed = observe(cfg, x, kernel)
    noise = corrupt(observed, cfg.noise, cfg.nlevel, derive_seed(cfg.seed, "noise"),
                    cfg.mixture_sigma)  # fmt: skip
    y = noise.noisy if mask is None else noise.noisy * mask
    if cfg.task in DEBLUR:  # the reference of the reported x (see x_shape_of for the estimate)
        clean = Blur(torch.from_numpy(kernel)[None]).crop(torch.from_numpy(x)).numpy()
        x_shape = x_shape_of(cfg, y.shape, kernel)
        check_x_size(cfg, x_shape, prior)
    else:
        clean, x_shape = x, x.shape
    identity["shape"] = list(clean.shape)
    return Data(y, np.ascontiguousarray(clean), noise, identity, x_shape, mask, kernel)


def make_operator(cfg: RunConfig, masks: list, kernels: list, seeds: list[int]) -> Operator:
    """The forward operator of --task for K runs, from each run's mask or kernel."""
    if cfg.task == "inpaint":
        return Mask(torch.from_numpy(np.stack(masks)))
    if cfg.task == "sr":
        return Downsample(cfg.factor)
    if cfg.task == "deblur":
        return Blur(torch.from_numpy(np.stack(kernels)))
    if cfg.task == "blind-deblur":
        return KernelNet(estimated_kernel_size(cfg, kernels[0]), seeds)
    return Identity()


def prepare(cfg: RunConfig) -> Job | None:
    """Check the settings, load (and corrupt) the image, claim the run's folder and write the
    inputs; None when the run has already finished."""
    cfg.check()
    device, device_name = pick_device(cfg.gpu)
    cfg = cfg.with_defaults()
    data = load_data(cfg)
    need, have = memory_need(cfg, data.y.shape, device), memory.available(device)
    print(f"device: {device_name}; memory: {memory.fits_message(need, have)}", flush=True)
    if need.bytes > have:  # before anything is written
        raise InputError(
            f"{cfg.ckpt}: {data.y.shape[1]}x{data.y.shape[2]} at --width {cfg.width} needs about "
            f"{need}, more than the {gigabytes(have)} available on {device}; would fit: "
            + memory.advice(need, have, min(data.y.shape[1:]), PRIORS[cfg.prior].multiple)
        )
    rundir = RunDir(Path(cfg.out_dir), cfg.ckpt)
    state = rundir.claim(cfg.defining(), data.identity, cfg.num_iter, cfg.resume, cfg.overwrite)
    if state is not None and state["iteration"] == cfg.num_iter:
        print(f"{cfg.ckpt}: already finished at iteration {cfg.num_iter}; outputs are kept")
        return None
    if state is not None and state["stopped_at"] is not None:
        print(f"{cfg.ckpt}: already stopped by --stop {cfg.stop} at iteration "
              f"{state['stopped_at']}; outputs are kept (a run with --stop_observe and another "
              "--ckpt shows what comes after)")  # fmt: skip
        return None
    rundir.save_image("noisy", data.y)
    if data.mask is not None:
        rundir.save_image("pixel_mask", data.mask)
    if data.kernel is not None:  # shown scaled to its largest entry
        rundir.save_image("kernel", data.kernel[None] / data.kernel.max())
    if data.clean is not None:
        rundir.save_image("clean", data.clean)
    if data.noise is not None:
        rundir.save_noise(noisy=data.noise.noisy, **data.noise.fields)
    return Job(cfg, rundir, data, state, device, device_name)


def memory_need(cfg: RunConfig, shape: tuple[int, ...], device: torch.device,
                runs: int = 1) -> memory.Need:  # fmt: skip
    """The estimated peak memory of ``runs`` runs of ``cfg`` on images of ``shape`` (C, H, W):
    on the net's canvas (--pad rounds the sides up to the prior's multiple), on this path."""
    prior = PRIORS[cfg.prior]
    multiple = prior.multiple if cfg.pad else 1
    pixels = math.prod(-(-side // multiple) * multiple for side in shape[1:])
    bf16 = device.type == "cuda" or cpu_has_bf16()
    path = memory.path_name(cfg.fast, cfg.low_memory and prior.checkpointing, bf16)
    states = 2 if cfg.alg == "adam" else 0
    need = memory.estimate(pixels, cfg.width, runs=runs, path=path, optimizer_states=states,
                           scale=prior.memory_scale)  # fmt: skip
    return memory.Need(need, pixels, cfg.width, runs, path, states, prior.memory_scale,
                       prior.checkpointing)  # fmt: skip


def noisy_psnr(data: Data) -> float | None:
    """PSNR of the observation against the clean image: the input to beat (sr: the observation
    upsampled by the same antialiased bicubic interpolation, clipped to [0, 1])."""
    if data.clean is None:
        return None
    y, clean = torch.from_numpy(data.y)[None], torch.from_numpy(data.clean)[None]
    if y.shape != clean.shape:
        y = F.interpolate(y, size=clean.shape[-2:], mode="bicubic", align_corners=False)
    return psnr(y.clamp(0, 1), clean).item()


def describe(job: Job, parameters: int) -> str:
    cfg, data = job.cfg, job.data
    source = data.identity.get("image") or data.identity["observed"]
    noise = f"{cfg.noise} {cfg.nlevel:g}" if data.noise is not None else "observed"
    reference = noisy_psnr(data)
    return (
        f"{cfg.ckpt}: {'' if cfg.task == 'denoise' else cfg.task + ', '}"
        f"{cfg.method} ({cfg.loss}), {cfg.prior} prior width {cfg.width} "
        f"({parameters / 1e6:.2f}M trained parameters) on {source} {data.y.shape[1]}x"
        f"{data.y.shape[2]}, {noise}"
        + ("" if reference is None else f" (noisy PSNR {reference:.2f} dB)")
        + f", {cfg.alg} lr {cfg.lr:g}"
        + (f" lr_c {cfg.lr_c_used(data.y.size):.4g}" if cfg.method == "dop" else "")
        + ("" if cfg.stop == "none" else f", --stop {cfg.stop}")
        + (" (observed only)" if cfg.stop_observe else "")
        + (", --fast" if cfg.fast else "")
        + (", --low_memory" if cfg.low_memory else "")
    )


def fit_jobs(jobs: list[Job], progress: bool) -> list[int]:
    """Run jobs that share a batch key in one loop; write each run's outputs. Exit codes."""
    first = jobs[0]
    seeds = [j.cfg.seed for j in jobs]
    operator = make_operator(first.cfg, [j.data.mask for j in jobs],
                             [j.data.kernel for j in jobs], seeds)  # fmt: skip
    options = SELFDEBLUR_SKIP if first.cfg.task in DEBLUR else {}
    model = build_model(first.cfg, first.data.x_shape, seeds, operator, **options)
    y = first.data.y
    observers = build_observers(first.cfg, (len(jobs), *y.shape), torch.from_numpy(y).dtype)
    operator = getattr(model.operator, "trainable", list)()
    parameters = model.prior.count_trained() + sum(p.numel() for p in operator) // len(jobs)
    for job in jobs:
        print(describe(job, parameters), flush=True)
        job.started = time.time()  # a run's wall time is its batch's, not the batches' before
    stack = lambda arrays: torch.from_numpy(np.stack(arrays)).to(first.device)  # noqa: E731
    has_clean = first.data.clean is not None
    try:
        results = fit_batch(
            model.to(first.device), stack([j.data.y for j in jobs]), first.cfg,
            seeds=[j.cfg.seed for j in jobs],
            clean=stack([j.data.clean for j in jobs]) if has_clean else None,
            observers=observers, states=None if first.state is None else [j.state for j in jobs],
            checkpoint=lambda states: [j.checkpoint(s) for j, s in zip(jobs, states, strict=True)],
            progress=progress,
        )  # fmt: skip
    except RuntimeError as err:  # torch.OutOfMemoryError included
        if not memory.is_out_of_memory(err):
            raise
        failure = memory.describe_failure(err)
        del err, model  # the tensors the failed iteration held go with its traceback
        return [out_of_memory(job, failure) for job in jobs]
    kernels = [None] * len(jobs)
    if isinstance(model.operator, KernelNet):  # the estimate at the end of the loop
        with torch.no_grad():
            kernels = list(model.operator.kernel().cpu().numpy())
    codes = []
    for job, result, kernel in zip(jobs, results, kernels, strict=True):
        try:
            finish(job, result, parameters, batch_size=len(jobs), kernel=kernel)
            codes.append(0)
        except DivergedError as err:
            print(f"error: {err}", file=sys.stderr)
            codes.append(1)
    return codes


def out_of_memory(job: Job, failure: str) -> int:
    """Report a run that ran out of memory in one line, like a divergence (exit 3). A run that
    has a checkpoint keeps it, to be resumed with settings that fit; a run that has none has
    nothing to resume, and the inputs it wrote are removed."""
    cfg, rundir = job.cfg, job.rundir
    options = "--low_memory" if not cfg.low_memory else "another device"
    if rundir.path("state").exists():
        iteration = rundir.state()["iteration"]
        kept = (f"its last checkpoint (iteration {iteration}) is kept: continue it with "
                f"--resume and {options}")  # fmt: skip
    else:
        for path in rundir.existing():
            path.unlink()
        kept = (f"it had no checkpoint and nothing is kept; try {options}, a smaller --crop "
                "or --width")  # fmt: skip
    print(f"error: {cfg.ckpt}: out of memory ({failure}); {kept}", file=sys.stderr)
    return 3


def finish(job: Job, result: FitResult, parameters: int, batch_size: int,
           kernel: np.ndarray | None = None) -> None:  # fmt: skip
    """Write the recovered image, the history and the report of a run that left the loop (and,
    for blind deblurring, the estimated ``kernel``)."""
    cfg, rundir = job.cfg, job.rundir
    if result.image is None:  # diverged before its first finite row
        raise DivergedError(
            f"{cfg.ckpt}: the loss became NaN or infinite by iteration "
            f"{result.diverged_at}, before any finite row; lower --lr/--lr_c"
        )
    rundir.save_image("last", result.image)
    if result.sparse is not None:  # gray = 0, white = +1 (salt), black = -1 (pepper)
        rundir.save_image("sparse", 0.5 + 0.5 * result.sparse)
    for name, image in result.estimates.items():  # the moving average
        rundir.save_image(name, image)
    if cfg.stop != "none":
        rundir.save_image("stopped", result.detections[cfg.stop]["image"])
    rundir.save_history(result.history)
    report = make_report(job, result, parameters, batch_size)
    if kernel is not None:
        rundir.save_image("estimated_kernel", kernel[None] / kernel.max())
        true = {} if job.data.kernel is None else {"true": job.data.kernel}
        rundir.save_kernels(estimated=kernel, **true)
        if job.data.kernel is not None:
            report["kernel_correlation"] = kernel_correlation(kernel, job.data.kernel)
    rundir.save_config(dataclasses.asdict(cfg), job.data.identity, report)
    if result.diverged_at is not None:
        raise DivergedError(
            f"{cfg.ckpt}: the loss became NaN or infinite by iteration {result.diverged_at} "
            f"(finite at iteration {report['final_iteration']}, whose outputs are kept in "
            f"{cfg.out_dir}); lower --lr/--lr_c"
        )
    if "final_psnr" in report:
        quality = (f"PSNR {report['final_psnr']:.2f} dB at iteration {report['final_iteration']} "
                   f"(oracle best {report['oracle_best_psnr_vs_clean']:.2f} dB at "
                   f"{report['oracle_best_iteration']})")  # fmt: skip
    else:
        quality = f"loss {report['final_loss']:.4g} at iteration {report['final_iteration']}"
    print(
        f"{cfg.ckpt}: last iterate {quality}, "
        f"{report['iterations_per_s']} it/s"
        + (f" for a batch of {batch_size}" if batch_size > 1 else "")
        + f", outputs in {cfg.out_dir}/{cfg.ckpt}_*"
    )


def make_report(job: Job, result: FitResult, parameters: int, batch_size: int) -> dict:
    """The outcome: status, timing, the last iterate's row and, with a clean image, the
    oracle's best row (it uses the ground truth: reported for the curves, never a result)."""
    cfg, last = job.cfg, result.history[-1]
    lr_c = cfg.lr_c_used(job.data.y.size) if cfg.method == "dop" else None
    status = "stopped" if result.stopped_at is not None else "finished"
    report = {
        "status": "diverged" if result.diverged_at is not None else status,
        "iterations_done": result.iterations, "diverged_at": result.diverged_at,
        "stop": cfg.stop, "stopped_at": result.stopped_at,
        "device": job.device_name, "trained_parameters": parameters,
        "batch_size": batch_size,  # runs that shared the loop (and so the time) with this one
        "versions": versions(), "wall_time_s": round(time.time() - job.started, 2),
        "iterations_per_s": round(result.steps / result.seconds, 3) if result.seconds else None,
        "lr_c_used": lr_c, "alpha": None if lr_c is None else lr_c / cfg.lr,
        "noisy_psnr": noisy_psnr(job.data),
    }  # fmt: skip
    report |= {f"final_{name}": value for name, value in last.items()}
    if "psnr" in last:
        best = max(result.history, key=lambda row: row["psnr"])
        report |= {"oracle_best_psnr_vs_clean": best["psnr"],
                   "oracle_best_iteration": best["iteration"]}  # fmt: skip
    return report | detection_report(result, job.data.clean, report)


def detection_report(result: FitResult, clean: np.ndarray | None, report: dict) -> dict:
    """Each stopping rule's detection: the iteration it chose and when it fired (None: it did
    not fire by the end) and, with a clean image, the chosen image's PSNR/SSIM and the detection
    gap, oracle peak − detected PSNR (the peak over the logged rows and the detected iterates:
    it uses the ground truth)."""
    out = {}
    for rule, found in result.detections.items():
        out |= {f"{rule}_detected_iteration": found["detected_iteration"],
                f"{rule}_fired_at": found["fired_at"]}  # fmt: skip
        if clean is not None and found["detected_iteration"] >= 0:
            pair = [torch.from_numpy(a)[None] for a in (found["image"], clean)]
            out |= {f"{rule}_{name}": metric(*pair).item() for name, metric in METRICS.items()}
    if clean is not None and result.detections:
        peak = max(report["oracle_best_psnr_vs_clean"],
                   *(out.get(f"{rule}_psnr", -math.inf) for rule in result.detections))  # fmt: skip
        out["oracle_peak_psnr"] = peak
        out |= {f"oracle_{rule}_gap": peak - out[f"{rule}_psnr"]
                for rule in result.detections if f"{rule}_psnr" in out}  # fmt: skip
    return out


def versions() -> dict[str, str]:
    import optree
    import PIL
    import skimage

    return {
        "python": platform.python_version(), "torch": torch.__version__,
        "numpy": np.__version__, "scikit-image": skimage.__version__, "pillow": PIL.__version__,
        "optree": optree.__version__,
    }  # fmt: skip


def run_batch(argvs: list[list[str]], max_batch: int, progress: bool = False) -> list[int]:
    """Run several denoising.py command lines in this process, those that can share a loop
    (same image shape, method, prior, loop settings, device and start iteration) batched, at
    most ``max_batch`` at a time. Returns each command line's exit code, as ``main`` would."""
    codes = [0] * len(argvs)
    groups: dict[tuple, list[tuple[int, Job]]] = {}
    for i, argv in enumerate(argvs):
        try:
            job = prepare(parse(argv, __doc__))
        except InputError as err:
            print(f"error: {err}", file=sys.stderr)
            codes[i] = 2
            continue
        if job is not None:
            groups.setdefault(job.batch_key(), []).append((i, job))
    for group in groups.values():
        size = fitting_batch(group[0][1], min(max_batch, len(group)))
        for first in range(0, len(group), size):
            part = group[first : first + size]
            print(f"batch of {len(part)}: {', '.join(j.cfg.ckpt for _, j in part)}", flush=True)
            for (i, _), code in zip(part, fit_jobs([j for _, j in part], progress), strict=True):
                codes[i] = code
    return codes


def fitting_batch(job: Job, most: int) -> int:
    """The largest batch of runs like ``job`` (at most ``most``) whose estimated peak memory
    fits the device; one run alone was checked by ``prepare``."""
    have = memory.available(job.device)
    fits = lambda k: memory_need(job.cfg, job.data.y.shape, job.device, k).bytes <= have  # noqa: E731
    size = memory.largest(fits, 1, most) or 1
    if size < most:
        print(f"batches of {size}, not {most}: a larger batch would not fit in memory", flush=True)
    return size


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    ckpt = "CKPT"
    try:
        cfg = parse(argv, __doc__)
        ckpt = cfg.ckpt
        job = prepare(cfg)
        return 0 if job is None else fit_jobs([job], progress=not cfg.quiet)[0]
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: the same command with --resume continues run {ckpt} from its last "
              "checkpoint", file=sys.stderr)  # fmt: skip
        return 130


if __name__ == "__main__":
    sys.exit(main())
