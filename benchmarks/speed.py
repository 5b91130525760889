"""Iterations per second of the faithful path against the fast path, in one process.

    python -m benchmarks.speed                  # GPU: 512x512, width 128; CPU: 128x128, width 32
    python -m benchmarks.speed --ablate --batch 4  # + each fast option alone, 4 runs batched
    python -m benchmarks.speed --observers --repeats 5  # + the cost of each observer

Both paths run the same loop (recovery.fit_batch) on the same noisy image from the same seed,
for the same number of iterations; the faithful path is the public code's recipe (fp32, eager),
the fast path is what ``denoising.py --fast`` turns on for the device. The rate is measured
between the first and the last logged row (the first ``iters / 10`` iterations, with torch.compile's
compilation and cuDNN's autotuning, are warm-up); the paths alternate over ``--repeats`` rounds,
and the median rate of each is reported with the last-iterate PSNR. ``--batch K`` also runs K
runs (seeds seed..seed+K-1) one after another and then batched in one loop, both on the fast path,
and prints their aggregate iterations per second. ``--observers`` also runs the faithful path with
each observer (the output average, ES-EMV, ES-WMV) against none, alternating, and prints each
one's cost as a fraction of an iteration; SV-ES (self-validation), whose every check trains an
autoencoder for a pass over its window, is timed by its update alone (its first checks after the
window fills: the cost of an iteration at the public one check per iteration), beside them in the
same table. The last line is ``speedup <fast / faithful>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from engine.config import RunConfig
from engine.device import pick_device
from engine.loop import FitResult, Speed, build_model, fit_batch, stopping_observers
from experiments.sets import VARIANTS
from models.skip import SCALES, min_input_size
from utils import ArgumentParser, InputError, guarded
from utils.images import PAPER_IMAGES, SHARED_IMAGES, centre_crop, resolve_image
from utils.noise import salt_and_pepper
from utils.seeding import derive_seed

ABLATIONS = ("channels_last", "bf16", "compile", "foreach", "fused", "tf32")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--gpu", default=None, help="cpu or a GPU index (default: GPU 0 if any)")
    p.add_argument("--image", default="F16", help="paper image, path or scikit-image name")
    p.add_argument("--data_dir", type=Path, default=SHARED_IMAGES)
    p.add_argument("--size", type=int, default=None, help="centre crop (GPU 512, CPU 128)")
    p.add_argument("--width", type=int, default=None, help="net width (GPU 128, CPU 32)")
    p.add_argument("--iters", type=int, default=None, help="iterations per run (GPU 5000, CPU 300)")
    p.add_argument("--nlevel", type=float, default=0.5)
    p.add_argument("--method", default="dop", choices=sorted(VARIANTS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="alternating rounds of all paths")
    p.add_argument("--ablate", action="store_true", help="also faithful + each speed option alone")
    p.add_argument("--batch", type=int, default=0, help="also K runs batched vs one by one")
    p.add_argument("--observers", action="store_true", help="also the cost of each observer")
    return p.parse_args(argv)


def steady_rate(result: FitResult) -> float:
    """Iterations per second between the first logged row after warm-up and the last row."""
    i0, i1 = result.history[1]["iteration"], result.history[-1]["iteration"]
    return (i1 - i0) / (result.log_seconds[-1] - result.log_seconds[1])


def main(argv: list[str] | None = None) -> int:
    # FloatingPointError: a run diverged; its rate or PSNR would mean nothing
    return guarded(lambda: compare(parse_args(argv)), failures=(FloatingPointError,))


def compare(args: argparse.Namespace) -> int:
    device, name = pick_device(args.gpu)
    gpu = device.type == "cuda"
    size = args.size if args.size is not None else 512 if gpu else 128
    width = args.width if args.width is not None else 128 if gpu else 32
    iters = args.iters if args.iters is not None else 5000 if gpu else 300
    if iters < 3 or args.repeats < 1 or args.batch < 0 or size < min_input_size(SCALES):
        raise InputError(f"--iters must be >= 3, --repeats >= 1, --batch >= 0, "
                         f"--size >= {min_input_size(SCALES)}")  # fmt: skip
    cfg = RunConfig(**VARIANTS[args.method], width=width, num_iter=iters, nlevel=args.nlevel,
                    seed=args.seed, show_every=max(1, iters // 10), save_every=iters)  # fmt: skip
    cfg.check()  # --width, --nlevel, --seed as denoising.py takes them
    cfg = cfg.resolved()
    try:
        pixels = resolve_image(args.image, args.data_dir).pixels
    except InputError as err:  # a paper image not at hand: scikit-image's astronaut
        if args.image not in PAPER_IMAGES:
            raise
        print(f"note: {err}; using scikit-image's astronaut", file=sys.stderr)
        pixels = resolve_image("astronaut").pixels
    if size > min(pixels.shape[1:]):
        raise InputError(f"--size {size} exceeds the image {pixels.shape[1:]}")
    clean_np = centre_crop(pixels, size, size)

    def data(seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        noisy = [
            salt_and_pepper(clean_np, args.nlevel, derive_seed(s, "noise")).noisy for s in seeds
        ]
        clean = torch.from_numpy(clean_np)[None].expand(len(seeds), -1, -1, -1)
        return torch.from_numpy(np.stack(noisy)).to(device), clean.to(device)

    def run(speed: Speed, seeds: list[int], settings: dict | None = None) -> list[FitResult]:
        y, clean = data(seeds)
        run_cfg = dataclasses.replace(cfg, **(settings or {}))
        model = build_model(run_cfg, clean_np.shape, seeds).to(device)
        results = fit_batch(model, y, run_cfg, seeds=seeds, clean=clean, speed=speed,
                            progress=False)  # fmt: skip
        return [finite(result) for result in results]

    fast = Speed.of(True, device)
    paths = {"faithful": Speed(), "fast": fast}
    if args.ablate:  # each option alone, those the fast path leaves off here included
        for option in ABLATIONS:
            paths[f"faithful + {option}"] = dataclasses.replace(Speed(), **{option: True})
    n_params = sum(p.numel() for p in build_model(cfg, clean_np.shape, [0]).prior.trainable())
    print(
        f"device: {name}, torch {torch.__version__}; {args.image} {size}x{size}, "
        f"nlevel {args.nlevel}, {args.method} width {width} ({n_params / 1e6:.2f}M parameters), "
        f"{iters} iterations, seed {args.seed}, {args.repeats} round(s)",
        flush=True,
    )
    print(f"fast path: {describe(fast)}", flush=True)
    rates: dict[str, list[float]] = {name: [] for name in paths}
    final: dict[str, float] = {}
    for _ in range(args.repeats):
        for label, speed in paths.items():
            [result] = run(speed, [args.seed])
            rates[label].append(steady_rate(result))
            final[label] = result.history[-1]["psnr"]
    print(f"{'path':<28} {'it/s':>9}  final PSNR (dB, last iterate)")
    for label in paths:
        print(f"{label:<28} {statistics.median(rates[label]):>9.2f}  {final[label]:.2f}")

    if args.batch:
        seeds = list(range(args.seed, args.seed + args.batch))
        one_by_one = [run(fast, [seed])[0] for seed in seeds]
        sequential = len(seeds) / sum(1 / steady_rate(r) for r in one_by_one)
        together = run(fast, seeds)
        batched = len(seeds) * steady_rate(together[0])
        gap = max(
            abs(a["psnr"] - b["psnr"])
            for r, t in zip(one_by_one, together, strict=True)
            for a, b in zip(r.history, t.history, strict=True)
        )
        print(
            f"{args.batch} runs, fast path: one after another {sequential:.2f} it/s in all, "
            f"batched {batched:.2f} it/s in all ({batched / sequential:.2f}x); "
            f"largest PSNR difference between the two at any logged row {gap:.4f} dB"
        )
    if args.observers:
        rate = lambda settings: steady_rate(run(Speed(), [args.seed], settings)[0])  # noqa: E731
        observer_costs(rate, cfg, (1, *clean_np.shape), device, args.repeats)
    speedup = statistics.median(rates["fast"]) / statistics.median(rates["faithful"])
    print(f"speedup {speedup:.2f}")
    return 0


# What each observer costs, as settings of the run (the rules never fire within a benchmark).
OBSERVERS = {"none": {"stop": "none"}, "ema 0.99": {"stop": "none", "ema": 0.99},
             "ES-EMV": {"stop": "emv"}, "ES-WMV": {"stop": "wmv"}}  # fmt: skip
# Timed by the update alone: a run with it would take a hundred times as long as the others.
HEAVY = {"SV-ES": {"stop": "sv"}}
SV_CHECKS = 3  # SV-ES checks timed after its window has filled


def observer_costs(rate, cfg: RunConfig, shape: tuple[int, ...], device: torch.device,
                   repeats: int) -> None:  # fmt: skip
    """The faithful path with each observer against none, alternating over ``repeats`` rounds:
    median it/s and the extra time per iteration as a fraction of an iteration without one;
    then each observer's update timed alone (the rate difference is within the machine's
    round-to-round noise, a few %), as a fraction of the same iteration."""
    rates: dict[str, list[float]] = {label: [] for label in OBSERVERS}
    for _ in range(repeats):
        for label, settings in OBSERVERS.items():
            rates[label].append(rate(settings))
    base = statistics.median(rates["none"])
    print(f"{'observer (faithful path)':<28} {'it/s':>9}  {'from the rates':>14}  update alone"
          "  (× ES-WMV's)")  # fmt: skip
    alone = {label: update_seconds(dataclasses.replace(cfg, **settings), shape, device) * base
             for label, settings in OBSERVERS.items()}  # fmt: skip
    for label, settings in HEAVY.items():
        heavy = dataclasses.replace(cfg, **settings)
        alone[label] = base * update_seconds(heavy, shape, device, SV_CHECKS, heavy.sv_window - 1)
    wmv = alone["ES-WMV"]
    for label, cost in alone.items():
        median = statistics.median(rates[label]) if label in rates else None
        from_rates = "—" if median is None else f"{100 * (base / median - 1):+.1f}%"
        ratio = f"{cost / wmv:.3g}" if wmv > 0 and label != "none" else "—"
        print(f"{label:<28} {'—' if median is None else f'{median:.2f}':>9}  {from_rates:>14}  "
              f"{100 * cost:+.2f}%  ({ratio})")  # fmt: skip


def update_seconds(cfg: RunConfig, shape: tuple[int, ...], device: torch.device,
                   steps: int = 2000, warmup: int = 0) -> float:  # fmt: skip
    """Seconds per iteration that the observers of ``cfg`` spend in ``update``, on random
    outputs (their cost does not depend on the values), over ``steps`` iterations after
    ``warmup`` untimed ones."""
    observers = [o.to(device) for o in stopping_observers(cfg, shape, torch.float32)]
    xs = torch.rand(8, *shape, device=device)
    loss = torch.rand(shape[0], device=device)  # (find_best reads the training loss)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    for t in range(warmup):
        for observer in observers:
            observer.update(t, xs[t % 8], loss)
    sync()
    start = time.perf_counter()
    for t in range(warmup, warmup + steps):
        for observer in observers:
            observer.update(t, xs[t % 8], loss)
    sync()
    return (time.perf_counter() - start) / steps


def finite(result: FitResult) -> FitResult:
    if result.diverged_at is not None:
        raise FloatingPointError(f"a run diverged at iteration {result.diverged_at}; lower the lr")
    return result


def describe(speed: Speed) -> str:
    on = [f.name for f in dataclasses.fields(speed) if getattr(speed, f.name)]
    return ", ".join(on) or "nothing (no option pays on this device)"


if __name__ == "__main__":
    sys.exit(main())
