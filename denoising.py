"""Recover an image from salt-and-pepper noise with DOP, or with the DIP / DIP-L1 baselines.

    python denoising.py --gpu 0 --image F16 --nlevel 0.5                 # the paper's default run
    python denoising.py --image astronaut --crop 128 --width 32 --num_iter 2000 --device cpu

The flags of the public code (--ckpt --gpu --image --nlevel --alg --l1 --lr --lr_c --num_iter
--width) keep their names and defaults. Outputs go to --out_dir (see README.md, "Outputs").
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models import min_input_size
from recovery import (
    METHODS,
    DeepPrior,
    FitConfig,
    FitResult,
    Speed,
    build_model,
    fit,
    fit_batch,
    lr_c_for_size,
    stack_models,
)
from utils import InputError
from utils.images import (
    DEFAULT_DATA_DIR,
    EMBEDDED_DEFAULT,
    centre_crop,
    crop_to_multiple,
    resolve_image,
)
from utils.io import save_csv, save_json, save_npz, save_png, save_torch
from utils.metrics import psnr
from utils.noise import salt_and_pepper

SCALES = 5  # of the skip net: sides are cropped (or padded) to multiples of 2**SCALES
# Settings that define a run: --resume refuses a checkpoint made with different ones.
RUN_KEYS = (
    "image", "image_sha256", "nlevel", "method", "loss", "alg", "lr", "lr_c_used", "width", "seed",
    "crop", "pad", "show_every",
)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    a = p.add_argument
    # Flags of the public code, same names and defaults.
    a("--ckpt", default="test", help="run name: outputs are OUT_DIR/CKPT_* (default: test)")
    a("--gpu", default="0", help="CUDA device index used when a GPU is present (default: 0)")
    a("--image", default=None,
      help="a paper image (F16, Peppers, Baboon, kodim03), a path to an image file, or a "
           "scikit-image image (astronaut, camera, coffee, ...). Default: F16, or astronaut "
           "when F16 cannot be fetched")  # fmt: skip
    a("--nlevel", type=float, default=0.5, help="fraction of entries salted/peppered, in [0, 1]")
    a("--alg", default="sgd", choices=["sgd", "adam"], help="optimizer (default: sgd)")
    a("--l1", action="store_true", help="L1 loss instead of MSE (dop keeps g, h; dip -> dip-l1)")
    a("--lr", type=float, default=1.0, help="step for the network θ (default: 1)")
    a("--lr_c", type=float, default=500.0, help="step for g, h (default: 500; α = lr_c / lr)")
    a("--num_iter", type=int, default=150_000, help="iterations (default: 150000)")
    a("--width", type=int, default=128, help="channels at every scale of the skip net")
    # Additions.
    a("--method", default="dop", choices=sorted(METHODS), help="dop (default), dip or dip-l1")
    a("--seed", type=int, default=0, help="fixes the noise, the network init and its input")
    a("--device", default="auto", choices=["auto", "cpu", "cuda"],
      help="auto: cuda:GPU when a GPU is present, else the CPU")  # fmt: skip
    a("--crop", type=int, default=None, help="centre N x N crop of the image, for quick runs")
    a(
        "--pad",
        action="store_true",  # fmt: skip
        help="run the net on a canvas padded to a multiple of 32 and crop its output back, so no "
        "pixel is lost (default: centre crop to multiples of 32, as the public code)",
    )
    a(
        "--scale_lr_c",
        action="store_true",  # fmt: skip
        help="read --lr_c as the value for a 3x512x512 image and scale it by C*H*W/(3*512*512) "
        "(same α-dynamics on any size; default: --lr_c as given, as the public code)",
    )
    a("--show_every", type=int, default=500, help="iterations between logged PSNR/loss rows")
    a("--save_every", type=int, default=5000, help="iterations between resumable checkpoints")
    a("--out_dir", type=Path, default=Path("checkpoints"), help="output folder (created)")
    a("--data_dir", type=Path, default=DEFAULT_DATA_DIR, help="folder of the paper images")
    a("--resume", action="store_true", help="continue the run CKPT from its last checkpoint")
    a("--overwrite", action="store_true", help="replace the outputs of an earlier run CKPT")
    a("--quiet", action="store_true", help="no progress bar")
    a(
        "--fast",
        action="store_true",  # fmt: skip
        help="the fast path: on a GPU channels-last, bf16 autocast of the net, fused SGD and "
        "torch.compile; on a CPU bf16 autocast where the CPU has bf16 and foreach SGD "
        "(default: fp32 eager, the public code's recipe)",
    )
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    if not 0.0 <= args.nlevel <= 1.0:
        raise InputError(f"--nlevel must be in [0, 1], got {args.nlevel}")
    if args.width < 1:
        raise InputError(f"--width must be at least 1, got {args.width}")
    if args.num_iter < 1:
        raise InputError(f"--num_iter must be at least 1, got {args.num_iter}")
    if not (args.lr > 0 and args.lr_c > 0 and math.isfinite(args.lr) and math.isfinite(args.lr_c)):
        raise InputError("--lr and --lr_c must be positive numbers")
    if args.show_every < 1 or args.save_every < 1 or args.save_every % args.show_every:
        raise InputError("--save_every must be a positive multiple of --show_every (>= 1)")
    if args.crop is not None and args.crop < 1:
        raise InputError(f"--crop must be positive, got {args.crop}")
    if args.resume and args.overwrite:
        raise InputError("--resume and --overwrite exclude each other")
    if not args.ckpt or "/" in args.ckpt or args.ckpt.startswith("."):
        raise InputError(f"--ckpt must be a plain name, got {args.ckpt!r}")


def pick_device(args: argparse.Namespace) -> tuple[torch.device, str]:
    if args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available()):
        why = "" if args.device == "cpu" else " (no CUDA GPU found)"
        return torch.device("cpu"), f"cpu{why}, {torch.get_num_threads()} threads"
    if not torch.cuda.is_available():
        raise InputError("--device cuda but no CUDA GPU is available; use --device cpu")
    if not args.gpu.isdigit() or int(args.gpu) >= torch.cuda.device_count():
        raise InputError(f"--gpu {args.gpu}: there are {torch.cuda.device_count()} GPUs")
    device = torch.device(f"cuda:{args.gpu}")
    return device, f"{device} ({torch.cuda.get_device_name(device)})"


def load(args: argparse.Namespace):
    """The clean image after --crop and the crop to a multiple of 32 (unless --pad)."""
    if args.image is not None:
        loaded = resolve_image(args.image, args.data_dir)
    else:  # the public default F16, or the image embedded in scikit-image when it is not at hand
        try:
            loaded = resolve_image("F16", args.data_dir)
        except InputError as err:
            print(f"note: {err}; using scikit-image's '{EMBEDDED_DEFAULT}'", file=sys.stderr)
            loaded = resolve_image(EMBEDDED_DEFAULT)
    image = loaded.pixels
    if args.crop is not None:
        if args.crop > min(image.shape[1:]):
            raise InputError(f"--crop {args.crop} exceeds the image size {image.shape[1:]}")
        image = centre_crop(image, args.crop, args.crop)
    if not args.pad:
        image = crop_to_multiple(image, 2**SCALES)
        smallest = 2 * 2**SCALES  # a multiple of 32 that is at least min_input_size(SCALES)
        if min(image.shape[1:]) < smallest:
            raise InputError(
                f"the image is {loaded.pixels.shape[1]}x{loaded.pixels.shape[2]} "
                f"(after crops {image.shape[1]}x{image.shape[2]}) but the net needs both sides "
                f">= {smallest} after the crop to multiples of 32; use a larger image or --pad"
            )
    return loaded, np.ascontiguousarray(image)


def net_canvas(shape: tuple[int, int], pad: bool) -> tuple[int, int]:
    if not pad:
        return shape
    step, least = 2**SCALES, min_input_size(SCALES)
    return tuple(max(least, -(-s // step) * step) for s in shape)  # type: ignore[return-value]


def output_paths(out_dir: Path, ckpt: str) -> dict[str, Path]:
    names = ["last.png", "noisy.png", "clean.png", "sparse.png", "history.csv", "config.json",
             "noise.npz", "state.pt"]  # fmt: skip
    return {n.split(".")[0]: out_dir / f"{ckpt}_{n}" for n in names}


@dataclass
class Job:
    """One run, ready for the loop: its settings, outputs, model and data."""

    args: argparse.Namespace
    settings: dict
    paths: dict[str, Path]
    state: dict | None
    model: DeepPrior
    y: torch.Tensor
    clean: torch.Tensor
    cfg: FitConfig
    device_name: str
    noisy_psnr: float
    started: float

    def batch_key(self) -> tuple:
        """Runs with equal keys can share one batched loop (fit_batch)."""
        start = 0 if self.state is None else self.state["iteration"]
        return (self.y.device, tuple(self.y.shape), tuple(self.model.z.shape), self.model.sparse,
                self.settings["width"], self.cfg, start)  # fmt: skip

    def checkpoint(self, state: dict | None) -> None:
        if state is not None:  # None: the run diverged, its last good checkpoint is kept
            save_torch(self.paths["state"], {"settings": self.settings, **state})


def prepare(args: argparse.Namespace) -> Job | None:
    """Check the arguments, load and corrupt the image, build the model and write the inputs
    (noisy, clean, noise); None when the run has already finished."""
    started = time.time()
    check_args(args)
    device, device_name = pick_device(args)
    print(f"device: {device_name}", flush=True)
    method = METHODS["dip-l1" if args.method == "dip" and args.l1 else args.method]
    loss = "l1" if args.l1 else method.loss
    loaded, image = load(args)
    lr_c = lr_c_for_size(args.lr_c, image.size) if args.scale_lr_c else args.lr_c
    settings = {
        "image": loaded.source, "image_sha256": loaded.sha256, "nlevel": args.nlevel,
        "method": method.name, "loss": loss, "alg": args.alg, "lr": args.lr,
        "lr_c": args.lr_c, "lr_c_used": lr_c if method.sparse else None,
        "alpha": lr_c / args.lr if method.sparse else None, "scale_lr_c": args.scale_lr_c,
        "width": args.width, "seed": args.seed, "crop": args.crop, "pad": args.pad,
        "image_shape": list(image.shape), "num_iter": args.num_iter,
        "show_every": args.show_every, "save_every": args.save_every,
        "reg_noise_std": FitConfig.reg_noise_std, "fast": args.fast,
    }  # fmt: skip

    paths = output_paths(args.out_dir, args.ckpt)
    state = previous_state(paths, settings, args)
    if state is not None and state["iteration"] == args.num_iter:
        print(f"{args.ckpt}: already finished at iteration {args.num_iter}; outputs are kept")
        return None

    noise = salt_and_pepper(image, args.nlevel, args.seed)
    model = build_model(
        image.shape, sparse=method.sparse, width=args.width, seed=args.seed,
        net_size=net_canvas(image.shape[1:], args.pad), scales=SCALES,
    ).to(device)  # fmt: skip
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    y = torch.from_numpy(noise.noisy)[None].to(device)
    clean = torch.from_numpy(image)[None].to(device)
    noisy_psnr = psnr(y, clean).item()
    n_params = sum(p.numel() for p in model.net.parameters())
    print(
        f"{args.ckpt}: {method.name} ({loss}) on {loaded.source} "
        f"{image.shape[1]}x{image.shape[2]}, "
        f"nlevel {args.nlevel} (noisy PSNR {noisy_psnr:.2f} dB), width {args.width} "
        f"({n_params / 1e6:.2f}M parameters), {args.alg} lr {args.lr}"
        + (f" lr_c {lr_c:.4g}" if method.sparse else "")
        + (", --fast" if args.fast else ""),
        flush=True,
    )

    args.out_dir.mkdir(parents=True, exist_ok=True)
    save_png(paths["noisy"], noise.noisy)
    save_png(paths["clean"], image)
    save_npz(paths["noise"], noisy=noise.noisy, salt=noise.salt, pepper=noise.pepper)
    cfg = FitConfig(
        loss=loss, num_iter=args.num_iter, lr=args.lr, lr_c=lr_c, alg=args.alg,
        show_every=args.show_every, save_every=args.save_every,
        speed=Speed.fast(device) if args.fast else Speed(),
    )  # fmt: skip
    return Job(args, settings, paths, state, model, y, clean, cfg, device_name, noisy_psnr, started)


def finish(job: Job, result: FitResult, batch_size: int = 1) -> None:
    """Write the recovered image, the history and the report of a run that has left the loop."""
    args, paths = job.args, job.paths
    if result.image is None:  # in a batch: diverged before its first finite row
        raise DivergedError(
            f"{args.ckpt}: the loss became NaN or infinite by iteration {result.diverged_at}, "
            "before any finite row; lower --lr/--lr_c"
        )
    save_png(paths["last"], result.image)
    if result.sparse is not None:  # shown with gray = 0, white = +1 (salt), black = -1 (pepper)
        save_png(paths["sparse"], 0.5 + 0.5 * result.sparse)
    save_csv(paths["history"], ["iteration", "loss", "psnr"], result.history)
    best = max(result.history, key=lambda row: row[2])
    last = result.history[-1]
    report = {
        **job.settings,
        "status": "finished" if result.diverged_at is None else "diverged",
        "iterations_done": result.iterations,
        "diverged_at": result.diverged_at,
        "device": job.device_name,
        "parameters": sum(p.numel() for p in job.model.net.parameters()),
        "batch_size": batch_size,  # runs that shared the loop (and so the time) with this one
        "versions": versions(),
        "wall_time_s": round(time.time() - job.started, 2),
        "iterations_per_s": round(result.steps / result.seconds, 3) if result.seconds else None,
        "noisy_psnr": job.noisy_psnr,
        "final_iteration": last[0],
        "final_psnr": last[2],
        "final_loss": last[1],
        # The best PSNR against the clean image is an oracle (it uses the ground truth): it is
        # reported for the learning curves only, never as a result.
        "oracle_best_psnr_vs_clean": best[2],
        "oracle_best_iteration": best[0],
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    save_json(paths["config"], report)
    if result.diverged_at is not None:
        raise DivergedError(
            f"{args.ckpt}: the loss became NaN or infinite by iteration {result.diverged_at} "
            f"(finite at iteration {last[0]}, whose outputs are kept in {args.out_dir}); "
            "lower --lr/--lr_c"
        )
    print(
        f"{args.ckpt}: last iterate PSNR {last[2]:.2f} dB at iteration {last[0]} "
        f"(oracle best {best[2]:.2f} dB at {best[0]}), {report['iterations_per_s']} it/s"
        + (f" for a batch of {batch_size}" if batch_size > 1 else "")
        + f", outputs in {args.out_dir}/{args.ckpt}_*"
    )


def run(args: argparse.Namespace) -> int:
    job = prepare(args)
    if job is None:
        return 0
    result = fit(
        job.model, job.y, job.clean, job.cfg, seed=args.seed, state=job.state,
        checkpoint=job.checkpoint, progress=not args.quiet,
    )  # fmt: skip
    finish(job, result)
    return 0


def run_batch(argvs: list[list[str]], max_batch: int, progress: bool = False) -> list[int]:
    """Run several denoising.py command lines in this process, those that can share a loop
    (same image shape, method, width, loop settings, device and start iteration) batched, at
    most ``max_batch`` at a time. Returns each command line's exit code, as ``main`` would."""
    codes = [0] * len(argvs)
    groups: dict[tuple, list[tuple[int, Job]]] = {}
    for i, argv in enumerate(argvs):
        args = parse_args(argv)
        try:
            job = prepare(args)
        except InputError as err:
            print(f"error: {args.ckpt}: {err}", file=sys.stderr)
            codes[i] = 2
            continue
        if job is not None:
            groups.setdefault(job.batch_key(), []).append((i, job))
    for group in groups.values():
        for first in range(0, len(group), max_batch):
            part = group[first : first + max_batch]
            jobs = [job for _, job in part]
            model = jobs[0].model if len(jobs) == 1 else stack_models([j.model for j in jobs])
            print(f"batch of {len(jobs)}: {', '.join(j.args.ckpt for j in jobs)}", flush=True)
            for job in jobs:  # a run's wall time is its batch's, not the batches' before it
                job.started = time.time()
            results = fit_batch(
                model, torch.cat([j.y for j in jobs]), torch.cat([j.clean for j in jobs]),
                jobs[0].cfg, seeds=[j.args.seed for j in jobs],
                states=None if jobs[0].state is None else [j.state for j in jobs],
                checkpoint=lambda states, jobs=jobs: [
                    job.checkpoint(state) for job, state in zip(jobs, states, strict=True)
                ],
                progress=progress,
            )  # fmt: skip
            for (i, job), result in zip(part, results, strict=True):
                try:
                    finish(job, result, batch_size=len(jobs))
                except DivergedError as err:
                    print(f"error: {err}", file=sys.stderr)
                    codes[i] = 1
    return codes


class DivergedError(Exception):
    pass


def previous_state(paths: dict[str, Path], settings: dict, args: argparse.Namespace) -> dict | None:
    """The checkpoint to resume from, after refusing to silently overwrite another run."""
    existing = [p for p in paths.values() if p.exists()]
    if args.overwrite:  # all of them, so no file of the old run survives beside the new one
        for path in existing:
            path.unlink()
        return None
    if not args.resume:
        if existing:
            raise InputError(
                f"{existing[0]} exists: pass --resume to continue that run, --overwrite to "
                "replace it, or choose another --ckpt"
            )
        return None
    if not paths["state"].exists():
        raise InputError(
            f"--resume: no checkpoint {paths['state']}; start the run without --resume"
        )
    try:
        state = torch.load(paths["state"], map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001  (a corrupt or foreign file)
        raise InputError(f"--resume: cannot read {paths['state']} ({err})") from None
    for key in RUN_KEYS:
        if state["settings"].get(key) != settings[key]:
            raise InputError(
                f"--resume: {paths['state']} was made with {key}={state['settings'].get(key)!r}, "
                f"not {settings[key]!r}; use the same settings or another --ckpt"
            )
    if state["iteration"] > args.num_iter:
        raise InputError(f"--resume: the run is already at iteration {state['iteration']}")
    return state


def versions() -> dict[str, str]:
    import PIL
    import skimage

    return {
        "python": platform.python_version(), "torch": torch.__version__,
        "numpy": np.__version__, "scikit-image": skimage.__version__, "pillow": PIL.__version__,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    try:
        return run(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (DivergedError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted: `--resume --ckpt {args.ckpt}` continues from the last checkpoint",
              file=sys.stderr)  # fmt: skip
        return 130


if __name__ == "__main__":
    sys.exit(main())
