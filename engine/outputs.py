"""What a run writes: its inputs before the loop, its results and report after it (README,
"Outputs"), and the one-line account of how it ended."""

from __future__ import annotations

import dataclasses
import math
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F

from engine.config import RunConfig
from engine.loop import FitResult
from tasks import TASKS, Observation
from utils.metrics import METRICS, psnr
from utils.rundir import RunDir


class DivergedError(Exception):
    pass


def save_inputs(rundir: RunDir, cfg: RunConfig, observation: Observation) -> None:
    """The observation, its clean reference, the task's inputs and the synthetic noise."""
    rundir.save_image("noisy", TASKS[cfg.task].display(observation.y))
    if observation.clean is not None:
        rundir.save_image("clean", observation.clean)
    for name, image in TASKS[cfg.task].saved(observation.inputs).items():
        rundir.save_image(name, image)
    if observation.noise is not None:
        rundir.save_arrays("noise", noisy=observation.noise.noisy, **observation.noise.fields)


def noisy_psnr(observation: Observation, task: str) -> float | None:
    """PSNR of the observation against the clean image: the input to beat (sr: the observation
    upsampled by the same antialiased bicubic interpolation, clipped to [0, 1]); None without a
    clean image or when y is no image of x (phase retrieval)."""
    if observation.clean is None or not TASKS[task].measures_image:
        return None
    y, clean = (torch.from_numpy(a)[None] for a in (observation.y, observation.clean))
    if y.shape != clean.shape:
        y = F.interpolate(y, size=clean.shape[-2:], mode="bicubic", align_corners=False)
    return psnr(y.clamp(0, 1), clean).item()


def describe(cfg: RunConfig, observation: Observation, parameters: int, steps: dict) -> str:
    """The run's first line: what it is and what it recovers from."""
    source = observation.identity.get("image") or observation.identity["observed"]
    noise = f"{cfg.noise} {cfg.nlevel:g}" if observation.noise is not None else "observed"
    reference = noisy_psnr(observation, cfg.task)
    return (
        f"{cfg.ckpt}: {'' if TASKS[cfg.task].default else cfg.task + ', '}"
        f"{cfg.method} ({cfg.loss}), {cfg.prior} prior width {cfg.width} "
        f"({parameters / 1e6:.2f}M trained parameters) on {source} {observation.y.shape[1]}x"
        f"{observation.y.shape[2]}, {noise}"
        + ("" if reference is None else f" (noisy PSNR {reference:.2f} dB)")
        + f", {cfg.alg} lr {cfg.lr:g}"
        + (f" lr_c {steps['sparse']:.4g}" if "sparse" in steps else "")
        + ("" if cfg.stop == "none" else f", --stop {cfg.stop}")
        + (" (observed only)" if cfg.stop_observe else "")
        + (", --fast" if cfg.fast else "")
        + (", --low_memory" if cfg.low_memory else "")
        + (", --deterministic" if cfg.deterministic else "")
    )


@dataclasses.dataclass
class Written:
    """A finished run as the caller sees it: the recovered image (float, (C, H, W)), its history
    and its report (config.json's)."""

    image: np.ndarray
    history: list[dict[str, float]]
    report: dict


def finish(rundir: RunDir, cfg: RunConfig, observation: Observation, result: FitResult,
           extras: tuple[dict, dict, dict], context: dict) -> Written:  # fmt: skip
    """Write the recovered image, the history and the report of a run that left the loop, with
    the task's ``extras`` (images, arrays, report entries: ``Task.outputs``) and the ``context``
    of the run (device, batch size, parameters, steps, start time). DivergedError (its outputs
    written) for a run whose loss became NaN or infinite."""
    kept = bool(result.history) and rundir.path("last").is_file()  # a resumed run's, earlier
    if result.image is None and not kept:  # diverged before its first finite row
        raise DivergedError(
            f"{cfg.ckpt}: the loss became NaN or infinite by iteration "
            f"{result.diverged_at}, before any finite row; lower --lr/--lr_c"
        )
    entries = {}
    if result.image is not None:  # else: diverged at once when resumed; the images written at
        entries = save_images(rundir, cfg, result, extras)  # its last finite row are kept
    rundir.save_history(result.history)
    report = make_report(cfg, observation, result, context) | entries
    rundir.save_config(dataclasses.asdict(cfg), observation.identity, report)
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
    if f"{cfg.stop}_psnr" in report:  # the image the rule chose (find_best: the decoder's)
        quality += (f"; --stop {cfg.stop}: PSNR {report[f'{cfg.stop}_psnr']:.2f} dB at iteration "
                    f"{report[f'{cfg.stop}_detected_iteration']}")  # fmt: skip
    size = context["batch_size"]
    print(f"{cfg.ckpt}: last iterate {quality}, {report['iterations_per_s']} it/s"
          + (f" for a batch of {size}" if size > 1 else "")
          + f", outputs in {cfg.out_dir}/{cfg.ckpt}_*")  # fmt: skip
    return Written(result.image, result.history, report)


def save_images(rundir: RunDir, cfg: RunConfig, result: FitResult,
                extras: tuple[dict, dict, dict]) -> dict:  # fmt: skip
    """The images and arrays of the last finite row and the task's ``extras``; the task's report
    entries."""
    rundir.save_image("last", result.image)
    if result.sparse is not None:  # gray = 0, white = +1 (salt), black = -1 (pepper)
        rundir.save_image("sparse", 0.5 + 0.5 * result.sparse)
    for name, image in result.estimates.items():  # the moving average
        rundir.save_image(name, image)
    if cfg.stop != "none":
        rundir.save_image("stopped", result.detections[cfg.stop]["image"])
    images, arrays, entries = extras
    for name, image in images.items():
        rundir.save_image(name, image)
    for name, values in arrays.items():
        rundir.save_arrays(name, **values)
    return entries


def make_report(cfg: RunConfig, observation: Observation, result: FitResult, context: dict
                ) -> dict:  # fmt: skip
    """The outcome: status, timing, the last iterate's row and, with a clean image, the
    oracle's best row and the best PSNR of x and of each observer's estimate over every
    iteration (``oracle_every_iteration_*``; they use the ground truth: reported for the curves
    and for papers that report them, never a result)."""
    last, lr_c = result.history[-1], context["steps"].get("sparse")
    status = "stopped" if result.stopped_at is not None else "finished"
    report = {
        "status": "diverged" if result.diverged_at is not None else status,
        "iterations_done": result.iterations, "diverged_at": result.diverged_at,
        "stop": cfg.stop, "stopped_at": result.stopped_at,
        "device": context["device"], "trained_parameters": context["parameters"],
        "batch_size": context["batch_size"],  # runs that shared the loop (and its time)
        "versions": versions(), "wall_time_s": round(time.time() - context["started"], 2),
        "iterations_per_s": round(result.steps / result.seconds, 3) if result.seconds else None,
        "lr_c_used": lr_c, "alpha": None if lr_c is None else lr_c / cfg.lr,
        "noisy_psnr": noisy_psnr(observation, cfg.task),
    }  # fmt: skip
    report |= {f"final_{name}": value for name, value in last.items()}
    if "psnr" in last:
        best = max(result.history, key=lambda row: row["psnr"])
        report |= {"oracle_best_psnr_vs_clean": best["psnr"],
                   "oracle_best_iteration": best["iteration"]}  # fmt: skip
    report |= result.peaks
    return report | detection_report(result, observation.clean, report)


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
            others = {f"_{name}": image for name, image in found["others"].items()}
            for suffix, image in ({"": found["image"]} | others).items():
                pair = [torch.from_numpy(a)[None] for a in (image, clean)]
                out |= {f"{rule}{suffix}_{name}": metric(*pair).item()
                        for name, metric in METRICS.items()}  # fmt: skip
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
