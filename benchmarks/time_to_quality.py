"""Time to quality: how long DIP, the deep decoder and the deep random projector take to reach
the same PSNR on the same noisy image, in one process.

    python -m benchmarks.time_to_quality                 # CPU: F16 128x128, Gaussian σ 25/255
    python -m benchmarks.time_to_quality --size 512 --gpu 0

Each method runs with its reference settings (``METHODS``: DIP as in its notebooks, Adam 0.01,
perturbation 1/30, width 128; the deep decoder k = 128, Adam 0.01; the random projector width
64, frozen convolutions, Adam 0.1, √MSE + 0.45·TV) on the same observation (one seed), logging
PSNR every ``--every`` iterations. The target is DIP's peak PSNR less ``--margin`` dB (1): the peak
uses the clean image, so the target, and every time to it, is an **oracle** measurement of speed,
not a way to stop a run. For each method the table gives the iteration and the wall time of the
first logged row at or above the target (the loop's own clock at that row: rows and metrics
included), its steady iterations per second, its trained parameters per run, its peak and
last-iterate PSNR, and DIP's time to the target divided by its own. The random projector's paper
claims a large speed-up (REFERENCE.md §6).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from engine.config import RunConfig
from engine.device import pick_device
from engine.loop import build_model, fit_batch
from models import PRIORS
from utils import ArgumentParser, InputError, guarded
from utils.images import SHARED_IMAGES, centre_crop, resolve_image
from utils.noise import NOISES, corrupt
from utils.seeding import derive_seed

# Each method: its RunConfig settings (the prior fills in the rest) and its iteration budget.
METHODS = {
    "DIP": ({"prior": "skip", "alg": "adam", "lr": 0.01, "width": 128}, 3000),
    "deep decoder": ({"prior": "decoder"}, 3000),
    "random projector": ({"prior": "drp"}, 5000),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--gpu", default=None, help="cpu or a GPU index (default: GPU 0 if any)")
    p.add_argument("--image", default="F16", help="paper image, path or scikit-image name")
    p.add_argument("--data_dir", type=Path, default=SHARED_IMAGES)
    p.add_argument("--size", type=int, default=128, help="centre crop (default 128)")
    p.add_argument("--noise", default="gaussian", choices=NOISES,
                   help="denoising.py --noise (default gaussian)")  # fmt: skip
    p.add_argument("--nlevel", type=float, default=25 / 255, help="its level (default 25/255)")
    p.add_argument("--every", type=int, default=10, help="iterations between logged rows")
    p.add_argument("--margin", type=float, default=1.0, help="target: DIP's peak less this (dB)")
    p.add_argument("--scale_iters", type=float, default=1.0, help="multiplies every budget")
    p.add_argument("--dip_width", type=int, default=128, help="DIP's width (default 128)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def observation(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy, clean) as (1, C, H, W) tensors: the centre crop, corrupted from the seed."""
    if not (args.every >= 1 and args.scale_iters > 0 and math.isfinite(args.margin)):
        raise InputError("--every must be >= 1, --scale_iters > 0 and --margin a number")
    RunConfig(noise=args.noise, nlevel=args.nlevel, seed=args.seed, width=args.dip_width
              ).check()  # as denoising.py takes them  # fmt: skip
    clean = resolve_image(args.image, args.data_dir).pixels
    smallest = max(PRIORS[settings["prior"]].smallest_side(False) for settings, _ in
                   METHODS.values())  # fmt: skip
    if not smallest <= args.size <= min(clean.shape[1:]):
        raise InputError(f"--size {args.size}: give one between {smallest} (every prior's "
                         f"smallest side) and the image's, {min(clean.shape[1:])}")  # fmt: skip
    clean = np.ascontiguousarray(centre_crop(clean, args.size, args.size))
    noisy = corrupt(clean, args.noise, args.nlevel, derive_seed(args.seed, "noise")).noisy
    return torch.from_numpy(noisy)[None], torch.from_numpy(clean)[None]


def run(name: str, args: argparse.Namespace, y, clean, device) -> dict:
    """One method's fit and what the table needs of it (times from the loop's own clock)."""
    settings, iters = METHODS[name]
    settings = settings | ({"width": args.dip_width} if name == "DIP" else {})
    cfg = RunConfig(**settings, method="dip", num_iter=max(2, round(iters * args.scale_iters)),
                    show_every=args.every, save_every=10**9).resolved()  # fmt: skip
    model = build_model(cfg, y.shape[1:], [args.seed]).to(device)
    [result] = fit_batch(model, y.to(device), cfg, seeds=[args.seed], clean=clean.to(device),
                         progress=False)  # fmt: skip
    if result.diverged_at is not None:
        raise FloatingPointError(f"{name} diverged at iteration {result.diverged_at}")
    rows = result.history
    rate = (rows[-1]["iteration"] - rows[1]["iteration"]) / (
        result.log_seconds[-1] - result.log_seconds[1])  # fmt: skip
    return {"name": name, "rows": rows, "seconds": result.log_seconds, "rate": rate,
            "parameters": model.prior.count_trained(), "width": cfg.width,
            "peak": max(r["psnr"] for r in rows), "last": rows[-1]["psnr"]}  # fmt: skip


def reached(found: dict, target: float) -> tuple[int | None, float | None]:
    """The iteration and loop time of the first row at or above ``target`` (None: never)."""
    for row, seconds in zip(found["rows"], found["seconds"], strict=True):
        if row["psnr"] >= target:
            return int(row["iteration"]), seconds
    return None, None


def main(argv: list[str] | None = None) -> int:
    # FloatingPointError: a run diverged; its time to a PSNR would mean nothing
    return guarded(lambda: measure(parse_args(argv)), failures=(FloatingPointError,))


def measure(args: argparse.Namespace) -> int:
    device, device_name = pick_device(args.gpu)
    y, clean = observation(args)
    print(f"device: {device_name}, torch {torch.__version__}; {args.image} {args.size}x"
          f"{args.size}, {args.noise} {args.nlevel:.4g}, seed {args.seed}, rows every "
          f"{args.every} iterations; {time.strftime('%Y-%m-%d')}", flush=True)  # fmt: skip
    found = [run(name, args, y, clean, device) for name in METHODS]
    target = found[0]["peak"] - args.margin
    base = reached(found[0], target)[1]
    print(f"target: {target:.2f} dB = DIP's peak {found[0]['peak']:.2f} dB (oracle) - "
          f"{args.margin:g} dB")  # fmt: skip
    print(f"{'method':18} {'width':>5} {'trained':>9} {'it/s':>7} {'iters to':>8} "
          f"{'s to':>8} {'DIP s /':>8} {'peak':>6} {'last':>6}")  # fmt: skip
    for f in found:
        iteration, seconds = reached(f, target)
        ratio = "—" if seconds is None or base is None else f"{base / seconds:.2f}"
        print(f"{f['name']:18} {f['width']:5d} {f['parameters']:9d} {f['rate']:7.2f} "
              f"{'never' if iteration is None else iteration:>8} "
              f"{'—' if seconds is None else f'{seconds:.2f}':>8} {ratio:>8} "
              f"{f['peak']:6.2f} {f['last']:6.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
