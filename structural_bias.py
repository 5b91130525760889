"""The structural bias of untrained generators (Heckel, Soltanolkotabi, "Denoising and
regularization via exploiting the structural bias of convolutional generators", ICLR 2020).

    python structural_bias.py                         # the fitting curves (CPU, minutes)
    python structural_bias.py table --images F16,Peppers  # DIP, deep decoder, BM3D at σ 25/255

**Curves.** One generator — the DIP skip net, the deep decoder, the deep random projector — is
fitted by gradient descent, from the same initialisation, to three targets of one size:

* ``image``: a clean image x;
* ``image+noise``: x + σn, n ~ N(0, 1) per entry (σ = ``--sigma``, clipped to [0, 1]);
* ``noise``: x's pixels in a random order: pure noise of exactly the image's energy and colour
  histogram, with none of its spatial structure.

The mean squared error ‖f(θ) − target‖²/n after every ``--every`` iterations is written to
``docs/structural_bias.csv`` (columns generator, target, iteration, mse) and drawn on log-log axes
in ``figs/structural_bias.png``. The claim: each generator fits the image far faster than the
noise, so that early-stopped fitting of a noisy image denoises. The three fits of a generator
are one batch of the engine (``recovery.fit_batch``, K = 3 runs of one seed: the same
initialisation), observed by ``FitError``; each generator keeps its reference optimizer, but every
one fits plain MSE (the random projector without its TV term, which would itself penalise
noise). The skip net is fitted as in DIP's notebooks (Adam 0.01, perturbation 1/30).

**Table** (their Table 1 at a CPU-sized scale): Gaussian noise of σ = 25/255, the same in every
channel (``--noise gaussian_shared``), DIP (skip net width 128, Adam 0.01, 1800 iterations), the
deep decoder (k = 128, Adam 0.01, 3000 iterations) and BM3D (σ given), last iterates, on centre
crops of the given images; published: DIP 25.77, deep decoder 27.84, BM3D 25.52 dB (100 ImageNet
images, 512×512 centre crops, noisy 20.60 dB). Runs are denoising.py runs (reused when finished).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from engine import RunConfig, run
from engine.data import observe
from engine.device import pick_device
from engine.loop import build_model, fit_batch
from engine.runner import checked
from experiments import baselines
from models.skip import SCALES, min_input_size
from utils import ArgumentParser, InputError, guarded
from utils.images import DEFAULT_DATA_DIR, centre_crop, check_image_names, resolve_image
from utils.io import atomic_write, check_writable, save_csv
from utils.noise import gaussian
from utils.observers import Observer
from utils.rundir import RunDir
from utils.seeding import derive_seed

ROOT = Path(__file__).resolve().parent
# Each generator with the settings it is fitted with (RunConfig fields; the prior fills the rest).
GENERATORS = {
    "DIP skip net": {"prior": "skip", "alg": "adam", "lr": 0.01},
    "deep decoder": {"prior": "decoder"},
    "random projector": {"prior": "drp", "loss": "l2", "tv": 0.0},
}
TARGETS = ("image", "image+noise", "noise")
CSV_FIELDS = ["generator", "target", "iteration", "mse"]
# Heckel & Soltanolkotabi's Table 1 and the runs that set it up at a smaller scale.
PUBLISHED = {"DIP": 25.77, "deep decoder": 27.84, "BM3D": 25.52}
TABLE_RUNS = {
    "DIP": {"prior": "skip", "width": 128, "alg": "adam", "lr": 0.01, "num_iter": 1800},
    "deep decoder": {"prior": "decoder", "width": 128, "num_iter": 3000},
}


class FitError(Observer):
    """The mean squared error of every iterate against its run's target: the fitting curve
    (a ``columns()`` entry "mse"; the loss may include other terms)."""

    name = "fit"

    def __init__(self, targets: Tensor) -> None:
        super().__init__()
        self.register_buffer("target", targets)
        self.register_buffer("mse", torch.full((targets.shape[0],), float("nan")))

    def update(self, iteration: int, x: Tensor, loss: Tensor | None = None) -> None:
        self.mse.copy_((x - self.target).square().flatten(1).mean(1))

    def columns(self) -> dict[str, Tensor]:
        return {"mse": self.mse.clone()}


def make_targets(clean: np.ndarray, sigma: float, seed: int) -> Tensor:
    """(image, image + noise, the image's pixels shuffled) as a (3, C, H, W) tensor."""
    noisy = gaussian(clean, sigma, derive_seed(seed, "noise")).noisy
    pixels = clean.reshape(clean.shape[0], -1)
    order = np.random.default_rng(derive_seed(seed, "noise") + 1).permutation(pixels.shape[1])
    shuffled = pixels[:, order].reshape(clean.shape)
    return torch.from_numpy(np.stack([clean, noisy, shuffled]).astype(np.float32))


def fit_curves(targets: Tensor, settings: dict, num_iter: int, every: int, seed: int = 0,
               width: int | None = None, device: str = "cpu") -> list[dict]:  # fmt: skip
    """One generator fitted to each target (K = len(targets) runs of one seed): rows of
    (target, iteration, mse)."""
    cfg = RunConfig(**settings, method="dip", width=width, num_iter=num_iter, show_every=every,
                    save_every=num_iter).resolved()  # fmt: skip
    seeds = [seed] * len(targets)
    model = build_model(cfg, targets.shape[1:], seeds).to(device)
    targets = targets.to(device)
    results = fit_batch(model, targets, cfg, seeds=seeds, observers=[FitError(targets)],
                        progress=False)  # fmt: skip
    return [{"target": target, "iteration": row["iteration"], "mse": row["mse"]}
            for target, result in zip(TARGETS, results, strict=True)
            for row in result.history]  # fmt: skip


def plot_curves(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    generators = list(dict.fromkeys(r["generator"] for r in rows))
    fig, axes = plt.subplots(1, len(generators), figsize=(4.2 * len(generators), 3.4),
                             sharey=True, squeeze=False)  # fmt: skip
    for ax, generator in zip(axes[0], generators, strict=True):
        for target, style in zip(TARGETS, ("-", "--", ":"), strict=True):
            line = [
                (r["iteration"], r["mse"])
                for r in rows
                if r["generator"] == generator and r["target"] == target and r["iteration"]
            ]
            ax.loglog(*zip(*line, strict=True), style, label=target)  # fmt: skip
        ax.set(title=generator, xlabel="iteration")
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].set_ylabel("fitting MSE")
    axes[0][0].legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def curves(args: argparse.Namespace) -> int:
    loaded = resolve_image(args.image, Path(args.data_dir))
    side, least = min(loaded.pixels.shape[1:]), min_input_size(SCALES)
    if not least <= args.crop <= side:
        raise InputError(f"--crop {args.crop}: the curves need a crop between {least} (the skip "
                         f"net's smallest input) and the image's side, {side}")  # fmt: skip
    clean = np.ascontiguousarray(centre_crop(loaded.pixels, args.crop, args.crop))
    targets = make_targets(clean, args.sigma, args.seed)
    device, name = pick_device(args.gpu)
    rows = []
    for generator, settings in GENERATORS.items():
        start = time.perf_counter()
        width = args.widths.get(generator)
        found = fit_curves(targets, settings, args.num_iter, args.every, args.seed, width, device)
        rows += [{"generator": generator} | row for row in found]
        last = {r["target"]: r["mse"] for r in found if r["iteration"] == args.num_iter - 1}
        print(f"{generator}: last MSE " + ", ".join(f"{t} {v:.2e}" for t, v in last.items())
              + f" ({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    save_csv(Path(args.csv), CSV_FIELDS, ([r[f] for f in CSV_FIELDS] for r in rows))
    title = (f"{loaded.source} {args.crop}x{args.crop}, noise σ = {args.sigma:.3g}, seed "
             f"{args.seed}, {name}, {time.strftime('%Y-%m-%d')}")  # fmt: skip
    plot_curves(rows, Path(args.figure), title)
    print(f"wrote {args.csv} and {args.figure}")
    return 0


def table(args: argparse.Namespace) -> int:
    """DIP and the deep decoder (runs of the runner, reused when finished) and BM3D on each
    image; a markdown table."""
    base = RunConfig(noise="gaussian_shared", nlevel=args.sigma, method="dip", crop=args.crop,
                     data_dir=args.data_dir, out_dir=args.out_dir, show_every=100,
                     save_every=600, quiet=True, reuse=True, gpu=args.gpu)  # fmt: skip
    check_image_names(args.images, "--images")
    every = {method: [dataclasses.replace(base, **settings, image=image,
                                          ckpt=f"{image}_{method.replace(' ', '_')}_{args.crop}")
                      for image in args.images]
             for method, settings in TABLE_RUNS.items()}  # fmt: skip
    for configs in every.values():  # every run's checks before the first one starts
        for cfg in configs:
            checked(cfg)
    scores: dict[str, dict[str, float]] = {}
    for method, configs in every.items():
        if any(o.code for o in run(configs, max_batch=len(configs))):
            raise InputError(f"a {method} run failed")
        for image, cfg in zip(args.images, configs, strict=True):
            report = RunDir(Path(args.out_dir), cfg.ckpt).config()["report"]
            scores.setdefault(image, {"noisy": report["noisy_psnr"]})[method] = report["final_psnr"]
    for image in args.images:
        observation = observe(dataclasses.replace(base, image=image).resolved())
        scores[image]["BM3D"] = baselines.evaluate(observation.y, observation.clean,
                                                   args.sigma)["bm3d"]["psnr"]  # fmt: skip
    methods = ["noisy", *TABLE_RUNS, "BM3D"]
    lines = ["| image | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for image, row in scores.items():
        lines.append(f"| {image} | " + " | ".join(f"{row[m]:.2f}" for m in methods) + " |")
    means = [np.mean([row[m] for row in scores.values()]) for m in methods]
    lines.append("| mean | " + " | ".join(f"{v:.2f}" for v in means) + " |")
    lines.append("| published (100 ImageNet, 512×512) | 20.60 | "
                 + " | ".join(f"{PUBLISHED[m]:.2f}" for m in methods[1:]) + " |")  # fmt: skip
    print("\n".join(lines))
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("what", nargs="?", choices=("curves", "table"), default="curves")
    p.add_argument("--image", default="F16", help="curves: the image (a paper image, a path, ...)")
    p.add_argument("--images", default="F16,Peppers", help="table: images, comma-separated")
    p.add_argument("--crop", type=int, default=None, help="centre crop (64 curves, 128 table)")
    p.add_argument("--sigma", type=float, default=25 / 255, help="noise std (default 25/255)")
    p.add_argument("--num_iter", type=int, default=2000, help="curves: iterations")
    p.add_argument("--every", type=int, default=10, help="curves: iterations between points")
    p.add_argument("--skip_width", type=int, default=64, help="curves: the skip net's width")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gpu", default=None, help="cpu or a GPU index (default: GPU 0 if any)")
    p.add_argument("--data_dir", default=str(DEFAULT_DATA_DIR))
    p.add_argument("--out_dir", default="checkpoints/structural_bias", help="table: runs")
    p.add_argument("--csv", default=str(ROOT / "docs" / "structural_bias.csv"))
    p.add_argument("--figure", default=str(ROOT / "figs" / "structural_bias.png"))
    args = p.parse_args(argv)
    if args.crop is None:
        args.crop = 64 if args.what == "curves" else 128
    args.images = args.images.split(",")
    args.widths = {"DIP skip net": args.skip_width}
    if min(args.crop, args.num_iter, args.every, args.skip_width) < 1 or not args.sigma >= 0:
        raise InputError("--crop, --num_iter, --every and --skip_width must be positive, "
                         "--sigma >= 0")  # fmt: skip
    if args.what == "curves":
        check_writable(args.csv, "--csv")
        check_writable(args.figure, "--figure")
    return args


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        return curves(args) if args.what == "curves" else table(args)

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
