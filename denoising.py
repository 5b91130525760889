"""Recover an image from sparse noise with DOP, or with the Deep Image Prior baselines.

    python denoising.py --gpu 0 --image F16 --nlevel 0.5          # the paper's default run
    python denoising.py --image astronaut --crop 128 --width 32 --num_iter 2000 --gpu cpu
    python denoising.py --observed photo.png --gpu cpu            # a photo that is already noisy

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

from models import PRIORS, Prior
from models.lip import check_fits, file_sha256, load_ticket
from models.skip import INPUT_DEPTH, SCALES
from recovery import FitResult, build_model, build_observers, fit_batch
from utils import InputError
from utils.config import RunConfig, parse
from utils.images import EMBEDDED_DEFAULT, centre_crop, crop_to_multiple, resolve_image
from utils.metrics import METRICS, psnr
from utils.noise import Corruption, corrupt
from utils.rundir import RunDir
from utils.seeding import derive_seed

# Settings that may differ between the runs of one batch (the others must be equal).
PER_RUN = ("image", "noise", "nlevel", "mixture_sigma", "observed", "clean", "crop", "seed", "ckpt",
           "out_dir", "data_dir", "resume", "overwrite", "quiet")  # fmt: skip


class DivergedError(Exception):
    pass


@dataclass
class Data:
    """The observation y, the clean image when there is one, and what identifies them."""

    y: np.ndarray  # (C, H, W) float32 in [0, 1]
    clean: np.ndarray | None
    noise: Corruption | None  # the synthetic corruption, None for an --observed image
    identity: dict  # sources, sha256 and shape: recorded, and checked on --resume


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
        return (str(self.device), self.data.y.shape, self.data.clean is None, start,
                *shared.items())  # fmt: skip

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


def fit_to_prior(image: np.ndarray, cfg: RunConfig, prior: type[Prior], what: str) -> np.ndarray:
    """--crop, then the crop to the prior's multiple (unless --pad), then the size check."""
    original = image.shape
    if cfg.crop is not None:
        if cfg.crop > min(image.shape[1:]):
            raise InputError(f"--crop {cfg.crop} exceeds the size of {what}, {image.shape[1:]}")
        image = centre_crop(image, cfg.crop, cfg.crop)
    if not cfg.pad:
        image = crop_to_multiple(image, prior.multiple)
    smallest = prior.smallest_side(cfg.pad)
    if min(image.shape[1:]) < smallest:
        raise InputError(
            f"{what} is {original[1]}x{original[2]} (after crops {image.shape[1]}x"
            f"{image.shape[2]}) but the {cfg.prior} prior needs both sides >= {smallest} after "
            f"the crop to multiples of {prior.multiple}; use a larger image or --pad"
        )
    return np.ascontiguousarray(image)


def load_data(cfg: RunConfig) -> Data:
    """The observation: a clean image corrupted with seeded noise (--noise), or an --observed
    image as it is (with an optional --clean reference); with --mask, the mask file's sha256
    joins the data's identity (a resumed run must use the same) once it is found to fit."""
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
        observed = resolve_image(cfg.observed, Path(cfg.data_dir))
        reference = None if cfg.clean is None else resolve_image(cfg.clean, Path(cfg.data_dir))
        if reference is not None and reference.pixels.shape != observed.pixels.shape:
            raise InputError(
                f"--clean is {reference.pixels.shape} (channels, height, width) but "
                f"--observed is {observed.pixels.shape}; give images of one size"
            )
        y = fit_to_prior(observed.pixels, cfg, prior, cfg.observed)
        clean = None if reference is None else fit_to_prior(reference.pixels, cfg, prior, cfg.clean)
        identity = {"observed": observed.source, "observed_sha256": observed.sha256,
                    "clean": None if reference is None else reference.source,
                    "clean_sha256": None if reference is None else reference.sha256}  # fmt: skip
        return Data(y, clean, None, identity | {"shape": list(y.shape)})
    if cfg.image is not None:
        loaded = resolve_image(cfg.image, Path(cfg.data_dir))
    else:  # the public default F16, or the image embedded in scikit-image when it is not at hand
        try:
            loaded = resolve_image("F16", Path(cfg.data_dir))
        except InputError as err:
            print(f"note: {err}; using scikit-image's '{EMBEDDED_DEFAULT}'", file=sys.stderr)
            loaded = resolve_image(EMBEDDED_DEFAULT)
    clean = fit_to_prior(loaded.pixels, cfg, prior, loaded.source)
    noise = corrupt(clean, cfg.noise, cfg.nlevel, derive_seed(cfg.seed, "noise"), cfg.mixture_sigma)
    identity = {"image": loaded.source, "image_sha256": loaded.sha256, "shape": list(clean.shape)}
    return Data(noise.noisy, clean, noise, identity)


def prepare(cfg: RunConfig) -> Job | None:
    """Check the settings, load (and corrupt) the image, claim the run's folder and write the
    inputs; None when the run has already finished."""
    cfg.check()
    device, device_name = pick_device(cfg.gpu)
    print(f"device: {device_name}", flush=True)
    cfg = cfg.with_defaults()
    data = load_data(cfg)
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
    if data.clean is not None:
        rundir.save_image("clean", data.clean)
    if data.noise is not None:
        rundir.save_noise(noisy=data.noise.noisy, **data.noise.fields)
    return Job(cfg, rundir, data, state, device, device_name)


def noisy_psnr(data: Data) -> float | None:
    if data.clean is None:
        return None
    return psnr(torch.from_numpy(data.y), torch.from_numpy(data.clean)).item()


def describe(job: Job, parameters: int) -> str:
    cfg, data = job.cfg, job.data
    source = data.identity.get("image") or data.identity["observed"]
    noise = f"{cfg.noise} {cfg.nlevel:g}" if data.noise is not None else "observed"
    reference = noisy_psnr(data)
    return (
        f"{cfg.ckpt}: {cfg.method} ({cfg.loss}), {cfg.prior} prior width {cfg.width} "
        f"({parameters / 1e6:.2f}M trained parameters) on {source} {data.y.shape[1]}x"
        f"{data.y.shape[2]}, {noise}"
        + ("" if reference is None else f" (noisy PSNR {reference:.2f} dB)")
        + f", {cfg.alg} lr {cfg.lr:g}"
        + (f" lr_c {cfg.lr_c_used(data.y.size):.4g}" if cfg.method == "dop" else "")
        + ("" if cfg.stop == "none" else f", --stop {cfg.stop}")
        + (" (observed only)" if cfg.stop_observe else "")
        + (", --fast" if cfg.fast else "")
    )


def fit_jobs(jobs: list[Job], progress: bool) -> list[int]:
    """Run jobs that share a batch key in one loop; write each run's outputs. Exit codes."""
    first = jobs[0]
    model = build_model(first.cfg, first.data.y.shape, [j.cfg.seed for j in jobs])
    y = first.data.y
    observers = build_observers(first.cfg, (len(jobs), *y.shape), torch.from_numpy(y).dtype)
    parameters = model.prior.count_trained()
    for job in jobs:
        print(describe(job, parameters), flush=True)
        job.started = time.time()  # a run's wall time is its batch's, not the batches' before
    stack = lambda arrays: torch.from_numpy(np.stack(arrays)).to(first.device)  # noqa: E731
    has_clean = first.data.clean is not None
    results = fit_batch(
        model.to(first.device), stack([j.data.y for j in jobs]), first.cfg,
        seeds=[j.cfg.seed for j in jobs],
        clean=stack([j.data.clean for j in jobs]) if has_clean else None,
        observers=observers, states=None if first.state is None else [j.state for j in jobs],
        checkpoint=lambda states: [j.checkpoint(s) for j, s in zip(jobs, states, strict=True)],
        progress=progress,
    )  # fmt: skip
    codes = []
    for job, result in zip(jobs, results, strict=True):
        try:
            finish(job, result, parameters, batch_size=len(jobs))
            codes.append(0)
        except DivergedError as err:
            print(f"error: {err}", file=sys.stderr)
            codes.append(1)
    return codes


def finish(job: Job, result: FitResult, parameters: int, batch_size: int) -> None:
    """Write the recovered image, the history and the report of a run that left the loop."""
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
        for first in range(0, len(group), max_batch):
            part = group[first : first + max_batch]
            print(f"batch of {len(part)}: {', '.join(j.cfg.ckpt for _, j in part)}", flush=True)
            for (i, _), code in zip(part, fit_jobs([j for _, j in part], progress), strict=True):
                codes[i] = code
    return codes


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
