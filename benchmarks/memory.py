"""Peak memory and iterations/s of the faithful, fast and low-memory paths, side by side.

    python -m benchmarks.memory                                  # 256x256, width 128, 4 iterations
    python -m benchmarks.memory --size 1024 --paths faithful low_memory --iters 3
    python -m benchmarks.memory --table       # README's tables of the estimate (no run)

The table's GPU column (80 GB) also respects CUDA's 32-bit index limit (``utils.memory``).

Peak resident memory is a maximum over a process's life (``ru_maxrss``), so each path runs in a
fresh subprocess of this script (``--worker``), the paths alternating over ``--repeats`` rounds;
on a GPU the peak is ``torch.cuda.max_memory_allocated``. Each worker runs the same loop
(recovery.fit_batch) on the same noisy crop from the same seed, after one warm-up iteration, and
reports its peak, its wall-clock and CPU seconds per iteration and its losses; the load average
is printed before and after (wall-clock rates need a quiet machine). The table shows the
estimate of ``utils.memory`` beside each measurement, and whether the histories are identical to
the faithful path's (on the CPU they must be for ``low_memory``: recomputation in fp32 is
bit-identical; on a GPU the backward's atomic additions already make two faithful runs differ).
``--alone`` leaves the faithful path out (a size it cannot run). The last line is
``memory <faithful peak / low_memory peak> time <low_memory s/it / faithful s/it> cpu <the same
ratio of CPU seconds>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from engine.config import RunConfig
from engine.device import memory_need, pick_device
from engine.loop import Speed, build_model, fit_batch
from models import PRIORS, SkipPrior
from utils import ArgumentParser, InputError, guarded, memory
from utils.images import SHARED_IMAGES, centre_crop, resolve_image
from utils.noise import salt_and_pepper
from utils.seeding import derive_seed

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--gpu", default=None, help="cpu or a GPU index (default: GPU 0 if any)")
    p.add_argument("--image", default="astronaut", help="paper image, path or scikit-image name")
    p.add_argument("--data_dir", type=Path, default=SHARED_IMAGES)
    p.add_argument("--size", type=int, default=256, help="side of the square (resized) image")
    p.add_argument("--prior", default="skip", choices=sorted(PRIORS), help="default skip")
    p.add_argument("--width", type=int, default=None, help="default: the prior's (128 skip)")
    p.add_argument("--iters", type=int, default=4, help="iterations per path (>= 3)")
    p.add_argument("--repeats", type=int, default=1, help="alternating rounds of the paths")
    p.add_argument("--paths", nargs="+", default=list(memory.PATHS), choices=memory.PATHS)
    p.add_argument("--alone", action="store_true", help="without the faithful path beside")
    p.add_argument("--table", action="store_true", help="print the estimate's tables, no run")
    p.add_argument("--worker", choices=memory.PATHS, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def settings(args: argparse.Namespace, path: str = "faithful") -> RunConfig:
    """The run's settings (the prior's defaults, as denoising.py fills them) on a path."""
    return RunConfig(prior=args.prior, width=args.width, num_iter=args.iters, show_every=1,
                     save_every=args.iters, fast="fast" in path,
                     low_memory="low_memory" in path).resolved()  # fmt: skip


def speed_of(path: str, device: torch.device) -> Speed:
    """The loop's options for a memory path (``--fast``, ``--low_memory``, both, neither)."""
    return Speed.of("fast" in path, device, "low_memory" in path)


def image(args: argparse.Namespace) -> np.ndarray:
    """The test image resized (not cropped) to size x size, so every size shows the whole
    photo, as a user's megapixel photo would be."""
    from skimage.transform import resize

    pixels = resolve_image(args.image, args.data_dir).pixels
    side = min(pixels.shape[1:])
    square = centre_crop(pixels, side, side)
    return resize(square, (3, args.size, args.size), anti_aliasing=True).astype(np.float32)


def worker(args: argparse.Namespace) -> dict:
    """One path in this (fresh) process: its peak memory, time per iteration and losses. One
    iteration on a copy of the model first (oneDNN's or cuDNN's set-up, the allocator's first
    requests), then ``--iters`` timed ones: wall-clock and this process's CPU time (which a
    busy machine changes less: with OMP_NUM_THREADS=1, it is close to the quiet wall time)."""
    device, _ = pick_device(args.gpu)
    clean = image(args)
    noisy = salt_and_pepper(clean, 0.5, derive_seed(0, "noise")).noisy
    cfg = settings(args)
    y = torch.from_numpy(noisy)[None].to(device)
    speed = speed_of(args.worker, device)
    warm_up = dataclasses.replace(cfg, num_iter=1)
    fit_batch(build_model(cfg, clean.shape, [0]).to(device), y, warm_up, seeds=[0], speed=speed,
              progress=False)  # fmt: skip
    model = build_model(cfg, clean.shape, [0]).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    wall, cpu = time.perf_counter(), time.process_time()
    [result] = fit_batch(model, y, cfg, seeds=[0], speed=speed, progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    return {"peak": peak, "s_per_it": wall / args.iters, "cpu_per_it": cpu / args.iters,
            "losses": [row["loss"] for row in result.history]}  # fmt: skip


def run_worker(args: argparse.Namespace, path: str, argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.memory", *argv, "--worker", path],
                         capture_output=True, text=True, check=False, cwd=ROOT)  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"the {path} worker failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def estimated_gb(side: int, width: int, path: str) -> float:
    return memory.estimate(side**2, width, path=path) / memory.GB


def largest_side(width: int, path: str, budget: float, cuda: bool = False) -> int:
    """The largest square side, a multiple of 32, whose estimate fits ``budget`` GB and, on a
    GPU (``cuda``), whose largest padded tensor stays within CUDA's 32-bit index limit."""

    def fits(n: int) -> bool:
        indexed = SkipPrior.indexed_elements(width, (32 * n, 32 * n), {})
        indexable = not cuda or memory.within_index_limit(indexed)
        return estimated_gb(32 * n, width, path) <= budget and indexable

    return 32 * memory.largest(fits, 1, 1000)


def tables(sides=(512, 1024, 2048), widths=(32, 64, 128), budgets=(22, 80),
           gpu_budgets=(80,)) -> None:  # fmt: skip
    """The skip net's estimated peak (GB) by image side and width, faithful / low-memory, and
    the largest square side that fits each budget (GB) on each path; a budget of
    ``gpu_budgets`` is a GPU's, where CUDA's 32-bit index limit caps the side too (one run:
    (width + 4)·(side + 2)² < 2³¹ − 1)."""
    print("| image | " + " | ".join(f"width {w} faithful / low" for w in widths) + " |")
    print("|---" * (len(widths) + 1) + "|")
    for side in sides:
        cells = [f"{estimated_gb(side, w, 'faithful'):.1f} / "
                 f"{estimated_gb(side, w, 'low_memory'):.1f}" for w in widths]  # fmt: skip
        print(f"| {side}×{side} | " + " | ".join(cells) + " |")
    paths = " / ".join(p.replace("_memory", "") for p in memory.PATHS)
    names = [f"{b} GB{' GPU' if b in gpu_budgets else ''}: {paths}" for b in budgets]
    print("\n| width | " + " | ".join(names) + " |")
    print("|---" * (len(budgets) + 1) + "|")
    for width in widths:
        cells = [" / ".join(str(largest_side(width, path, budget, budget in gpu_budgets))
                            for path in memory.PATHS) for budget in budgets]  # fmt: skip
        print(f"| {width} | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return guarded(lambda: measure(argv))


def check(args: argparse.Namespace) -> None:
    """The flags' ranges, and the image, before any worker starts."""
    smallest = PRIORS[args.prior].smallest_side(False)  # as denoising.py without --pad
    if args.size < smallest or args.iters < 3 or args.repeats < 1:
        raise InputError(f"--size must be >= {smallest} (the {args.prior} prior's smallest "
                         "side), --iters >= 3, --repeats >= 1")  # fmt: skip
    RunConfig(prior=args.prior, width=args.width).check()  # --prior, --width as denoising.py
    resolve_image(args.image, args.data_dir)


def measure(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.table:
        tables()
        return 0
    check(args)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    device, name = pick_device(args.gpu)
    cfg = settings(args)
    print(f"device: {name}, torch {torch.__version__}; {args.image} resized to {args.size}x"
          f"{args.size}, {cfg.prior} prior, width {cfg.width}, {args.iters} iterations, "
          f"{args.repeats} round(s); "
          f"peak: {'CUDA max allocated' if device.type == 'cuda' else 'resident (ru_maxrss)'}, "
          f"{time.strftime('%Y-%m-%d')}, load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    paths = list(dict.fromkeys(args.paths if args.alone else ["faithful", *args.paths]))
    measured: dict[str, list[dict]] = {path: [] for path in paths}
    for _ in range(args.repeats):
        for path in paths:
            measured[path].append(run_worker(args, path, argv))
    reference = measured["faithful"][0]["losses"] if "faithful" in paths else None
    print(f"{'path':<18} {'peak GB':>8} {'estimate':>9} {'it/s':>8} {'cpu s/it':>9}  history")
    for path in paths:
        peak = max(m["peak"] for m in measured[path])
        rate = 1 / statistics.median(m["s_per_it"] for m in measured[path])
        cpu = statistics.median(m["cpu_per_it"] for m in measured[path])
        estimate = memory_need(settings(args, path), (3, args.size, args.size), device).bytes
        losses = measured[path][0]["losses"]
        same = "" if reference is None else "identical to faithful" if losses == reference else (
            "differs (rounding)")  # fmt: skip
        print(f"{path:<18} {peak / memory.GB:>8.2f} {estimate / memory.GB:>9.2f} {rate:>8.3f} "
              f"{cpu:>9.2f}  {same}")  # fmt: skip
    print(f"load {os.getloadavg()[0]:.2f} (1-minute average: timings need a quiet machine)")
    if {"faithful", "low_memory"} <= set(paths):
        peaks = {p: max(m["peak"] for m in measured[p]) for p in ("faithful", "low_memory")}
        times = {p: {key: statistics.median(m[key] for m in measured[p])
                     for key in ("s_per_it", "cpu_per_it")}
                 for p in ("faithful", "low_memory")}  # fmt: skip
        ratio = {
            key: times["low_memory"][key] / times["faithful"][key] for key in times["faithful"]
        }
        print(
            f"memory {peaks['faithful'] / peaks['low_memory']:.2f} "
            f"time {ratio['s_per_it']:.2f} cpu {ratio['cpu_per_it']:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
