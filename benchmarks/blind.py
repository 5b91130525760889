"""Blind deblurring with an unknown kernel size and substantial noise (Zhuang et al., IJCV 2023,
arXiv 2208.09483) on Levin et al.'s set, in the shape of the talk's table (REFERENCE.md §7:
mean PSNR, l1/l2 32.64 (λ 1e-4) vs TV 31.12 (λ 2e-3) at low noise, 27.74 (λ 2e-4) vs 24.34
(λ 2e-2) at high noise), with SelfDeblur beside them and a row beyond the papers: impulse
outliers, without and with DOP's sparse term g⊙g − h⊙h after the blur.

Every case is a synthetic observation y = noise(x ∗ k), 'valid', of Levin's sharp image x and
true kernel k (``benchmarks.levin.true_kernel``: the file in the orientation that explains the
set's own observations), cropped so that y is SIDE x SIDE; the noise draw is the same for every
method of a case (one seed). No method is told the kernel size: every blind run estimates a box
of the odd side nearest SIDE / 2 (``--kernel_fraction 0.5``), so x is about 1.5 SIDE, and
reports the window its kernel's centre of mass aligns with y (``--x_window kernel``). Methods:

    l1l2        --variant zhuang: l2 loss + λ‖∇x‖₁/‖∇x‖₂, λ the talk's for the noise
    tv          --variant zhuang --l1l2 0 --tv λ_TV: the talk's TV comparison, our TV
    selfdeblur  --variant selfdeblur (l2 then 1 − SSIM, no regulariser) in the same box/window
    l1l2-dop    l1l2 with DOP's g⊙g − h⊙h (plain gradient descent, --alg_c sgd; impulse only)

and, per case and noise, the non-blind deconvolution with the true kernel (``--task deblur``,
the noise's first method's settings) for the error ratio. Scores as ``benchmarks.levin``: Levin's
sub-pixel alignment and 15-px crop, PSNR/SSIM (the blind estimates' search widened from 5 px to
the 15 px the crop allows: the kernel window aligns x by the estimated kernel's centre of mass,
which mass spread over a large box pulls off the true kernel's by several pixels; the blurred
observation's by the true kernel's centre-of-mass offset from its box's centre), the error
ratio SSD(blind) / SSD(true kernel) (Levin et al.'s) and ‖x̂ − x‖₂ / ‖x̂_k − x‖₂ with the
spectral norm (SelfDeblur's statistic_levin.m), and the estimated kernel's correlation with
the true one.

    OMP_NUM_THREADS=1 python -m benchmarks.blind --profile quick --gpu cpu --fast --shard 1/2 &
    OMP_NUM_THREADS=1 python -m benchmarks.blind --profile quick --gpu cpu --fast --shard 2/2 &
    wait; python -m benchmarks.blind --profile quick --table
    python -m benchmarks.blind --profile full --gpu 0 --batch 4   # a GPU: 32 cases, width 128
    python -m benchmarks.blind --profile full --dry_run           # its denoising.py command lines

Finished runs are reused and killed ones resumed (engine.run); the tables go to stdout, every
run's scores to --csv (default docs/blind_PROFILE.csv).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.levin import (
    IMAGES,
    KERNELS,
    levin_parser,
    levin_paths,
    load,
    schedule,
    true_kernel,
    true_size,
)
from engine import RunConfig
from engine.runner import run_listed
from experiments.plots import runs_summary, write_comparison_page
from utils import InputError, guarded
from utils.io import save_csv, save_text
from utils.metrics import LEVIN_BORDER, LEVIN_SHIFT, LEVIN_STEP, Aligned, align, error_ratio
from utils.rundir import RunDir


@dataclass(frozen=True)
class Noise:
    """A noise regime: its RunConfig settings and each method's regulariser weight."""

    settings: dict
    l1l2: float  # λ of --l1l2 (the talk's)
    tv: float  # λ of --tv (the talk's for TV)
    methods: tuple[str, ...]  # the first one's settings make the non-blind reference


# The talk's two regimes: their σ could not be read (docs/RESULTS.md), σ = 0.01 and 0.05 are ours.
NOISES = {
    "low": Noise({"noise": "gaussian", "nlevel": 0.01}, 1e-4, 2e-3, ("l1l2", "tv", "selfdeblur")),
    "high": Noise({"noise": "gaussian", "nlevel": 0.05}, 2e-4, 2e-2, ("l1l2", "tv", "selfdeblur")),
    # Beyond the papers: 10% of the entries set to 0 or 1 on top of the low Gaussian noise.
    "impulse": Noise({"noise": "mixture", "nlevel": 0.1, "mixture_sigma": 0.01}, 1e-4, 2e-3,
                     ("l1l2-dop", "l1l2")),
}  # fmt: skip


def method_settings(method: str, noise: Noise) -> dict:
    """A method's settings under a noise regime (``--variant`` fills the rest)."""
    zhuang = {"variant": "zhuang", "l1l2": noise.l1l2, "method": "dip"}
    return {
        "l1l2": zhuang,
        "tv": zhuang | {"l1l2": 0.0, "tv": noise.tv},
        "selfdeblur": {"variant": "selfdeblur", "method": "dip"},
        "l1l2-dop": zhuang | {"method": "dop"},
    }[method]


LABELS = {"l1l2": "ℓ1/ℓ2", "tv": "TV", "selfdeblur": "SelfDeblur", "l1l2-dop": "ℓ1/ℓ2 + DOP"}
# The talk's mean PSNR (dB) per (noise, method): full Levin-type images, its nets and iterations.
CLAIMS = {("low", "l1l2"): 32.64, ("low", "tv"): 31.12, ("high", "l1l2"): 27.74,
          ("high", "tv"): 24.34}  # fmt: skip
OVERSPECIFIED = {"kernel_fraction": 0.5, "x_window": "kernel"}  # every blind run's
# x's generator, by --no_nonlocal: SelfDeblur's skip net with non-local blocks, or without them
# (a run recorded before the setting existed: without).
GENERATORS = {False: "skip net with non-local blocks", True: "plain skip net"}


@dataclass(frozen=True)
class Profile:
    cases: tuple[tuple[int, int], ...]  # (image, kernel)
    width: int
    num_iter: int
    side: int | None  # y's side (None: the whole image, 256 − the kernel's size)
    noises: tuple[str, ...] = tuple(NOISES)


PROFILES = {
    # SelfDeblur's scale: all 32 cases, whole images, width 128, 5000 iterations (a GPU's job).
    "full": Profile(tuple((i, k) for i in IMAGES for k in KERNELS), 128, 5000, None),
    # A 2-core CPU: one kernel per image (sizes 13 to 27, benchmarks.levin's quick cases),
    # 128 x 128 observations, width 16, 1000 iterations (a blind run took 5-15 minutes on the
    # shared 2-core machine, 2026-12-06).
    "quick": Profile(((1, 5), (2, 1), (3, 4), (4, 8)), 16, 1000, 128),
}


def name(method: str, noise: str, image: int, kernel: int) -> str:
    return f"{method}_{noise}_im{image}_k{kernel}"


def reference(noise: str, image: int, kernel: int) -> str:
    return f"deblur_{noise}_im{image}_k{kernel}"


def runs(profile: Profile, data_dir: Path, out_dir: Path) -> dict[str, RunConfig]:
    """Every run's config by its name (``name``, ``reference``); writes the true kernels."""
    out = {}
    for noise_name in profile.noises:
        noise = NOISES[noise_name]
        for i, k in profile.cases:
            m = true_size(data_dir, k)
            show = max(1, profile.num_iter // 20)  # logged rows; a checkpoint every 5
            common = RunConfig(image=str(data_dir / "gt" / f"im{i}.png"),
                               kernel=str(true_kernel(data_dir, k, out_dir)),
                               crop=None if profile.side is None else profile.side + m - 1,
                               width=profile.width, show_every=show, save_every=5 * show,
                               quiet=True, reuse=True, out_dir=str(out_dir),
                               **noise.settings, **schedule(profile.num_iter))  # fmt: skip
            for method in noise.methods:
                settings = method_settings(method, noise) | OVERSPECIFIED
                out[name(method, noise_name, i, k)] = dataclasses.replace(
                    common, task="blind-deblur", ckpt=name(method, noise_name, i, k), **settings
                )
            settings = method_settings(noise.methods[0], noise)
            out[reference(noise_name, i, k)] = dataclasses.replace(
                common, task="deblur", ckpt=reference(noise_name, i, k), **settings
            )
    return out


def centre_offset(data_dir: Path, kernel: int) -> float:
    """The largest |offset| (px) of the true kernel's centre of mass from its box's centre, in
    the orientation the runs use: how far the kernel window puts x from the centre window of
    the reference (``clean``)."""
    k = load(data_dir / "gt" / f"kernel{kernel}.png")  # its rotation has the same |offset|
    k = k / k.sum()
    rows, cols = np.arange(k.shape[0]), np.arange(k.shape[1])
    com = np.array([(k.sum(1) * rows).sum(), (k.sum(0) * cols).sum()])
    return float(np.abs(com - (np.array(k.shape) - 1) / 2).max())


def spectral_ratio(estimate: Aligned, true_kernel: Aligned) -> float:
    """‖x̂ − x‖₂ / ‖x̂_k − x‖₂ with the matrices' largest singular values (MATLAB's ``norm`` of a
    matrix, as SelfDeblur's statistic_levin.m computes its error ratio), on the aligned crops."""

    def norm(a: Aligned) -> float:
        return float(np.linalg.norm((a.estimate - a.reference).reshape(-1, a.estimate.shape[-1]),
                                    2))  # fmt: skip

    return norm(estimate) / norm(true_kernel) if norm(true_kernel) > 0 else math.inf


def score(profile: Profile, data_dir: Path, out_dir: Path) -> list[dict]:
    """One row per finished blind run (with its finished reference): PSNR/SSIM after the
    alignment (searched over ±15 px), the observation's and the reference's (Levin's ±5 px,
    the observation's widened by the true kernel's offset), both error ratios, the kernel
    correlation."""
    rows = []
    for noise_name in profile.noises:
        for i, k in profile.cases:
            known = RunDir(out_dir, reference(noise_name, i, k))
            if known.config() is None:
                continue
            steps = math.ceil(centre_offset(data_dir, k) / LEVIN_STEP)
            shift = min(LEVIN_BORDER, LEVIN_SHIFT + steps * LEVIN_STEP)
            b = align(known.image("last"), known.image("clean"))  # the centre window: Levin's
            blurred = align(known.image("noisy"), known.image("clean"), max_shift=shift)
            for method in NOISES[noise_name].methods:
                blind = RunDir(out_dir, name(method, noise_name, i, k))
                if blind.config() is None:
                    continue
                a = align(blind.image("last"), blind.image("clean"), max_shift=LEVIN_BORDER)
                record = blind.config()
                report = record["report"]
                rows.append({
                    "noise": noise_name, "method": method, "image": i, "kernel": k,
                    "true_size": true_size(data_dir, k), "kernel_box": report["kernel_box"][0],
                    "max_shift": LEVIN_BORDER, "blurred_psnr": round(blurred.psnr(), 2),
                    "blind_psnr": round(a.psnr(), 2), "blind_ssim": round(a.ssim(), 4),
                    "deblur_psnr": round(b.psnr(), 2), "deblur_ssim": round(b.ssim(), 4),
                    "error_ratio": round(error_ratio(a, b), 3),
                    "error_ratio_spectral": round(spectral_ratio(a, b), 3),
                    "kernel_correlation": round(report["kernel_correlation"], 3),
                    "shift_rows": a.shift[0], "shift_cols": a.shift[1],
                    "psnr_unaligned": round(report["final_psnr"], 2),
                    "status": report["status"],
                    "generator": GENERATORS[record["settings"].get("no_nonlocal", True)],
                    "device": report["device"], "date": blind.date(),
                })  # fmt: skip
    return rows


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.2f} ({np.std(values):.2f})" if values else "–"


def table(rows: list[dict]) -> str:
    """Markdown: per noise, a row per method: mean (std over the cases) of the aligned PSNR beside
    the talk's, the mean error ratios and the share of cases below 3 of each, the kernel
    correlation, beside the observation and the true kernel."""
    head = ["noise", "method (λ)", "cases", "PSNR mean (std)", "the talk's PSNR", "SSIM",
            "error ratio SSD / spectral", "share < 3 SSD / spectral", "kernel corr.",
            "blurred PSNR", "true kernel PSNR"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for noise_name, noise in NOISES.items():
        for method in noise.methods:
            mine = [r for r in rows if (r["noise"], r["method"]) == (noise_name, method)]
            if not mine:
                continue
            weights = {"tv": f"{noise.tv:g}", "selfdeblur": "none"}
            weight = weights.get(method, f"{noise.l1l2:g}")
            sigma = noise.settings.get("mixture_sigma", noise.settings["nlevel"])
            level = (f"σ {sigma:g}" if noise.settings["noise"] == "gaussian"
                     else f"σ {sigma:g} + {noise.settings['nlevel']:.0%} impulse")  # fmt: skip
            claim = CLAIMS.get((noise_name, method))

            def mean(key: str, rows=mine) -> float:
                return float(np.mean([float(r[key]) for r in rows]))

            def below(key: str, rows=mine) -> str:
                return f"{sum(float(r[key]) < 3 for r in rows)}/{len(rows)}"

            lines.append(
                f"| {noise_name} ({level}) | {LABELS[method]} ({weight}) | {len(mine)} | "
                f"{mean_std([float(r['blind_psnr']) for r in mine])} | "
                f"{'—' if claim is None else f'{claim:.2f}'} | {mean('blind_ssim'):.3f} | "
                f"{mean('error_ratio'):.2f} / {mean('error_ratio_spectral'):.2f} | "
                f"{below('error_ratio')} / {below('error_ratio_spectral')} | "
                f"{mean('kernel_correlation'):.3f} | {mean('blurred_psnr'):.2f} | "
                f"{mean('deblur_psnr'):.2f} |")  # fmt: skip
    return "\n".join(lines)


def markdown(rows: list[dict], profile_name: str) -> str:
    """The table with what it measured, for TABLE_DIR/blind_PROFILE.md and docs/COMPARISON.md."""
    profile = PROFILES[profile_name]
    cases = ", ".join(f"image {i} with kernel {k}" for i, k in profile.cases)
    where = runs_summary(rows)
    generators = " and ".join(sorted({r.get("generator") or "not recorded" for r in rows}))
    return "\n".join([
        f"# Blind deblurring with noise (Zhuang et al.), profile `{profile_name}`", "",
        f"`python -m benchmarks.blind --profile {profile_name}`: Levin's set, {cases}; y of "
        f"{profile.side or 'the whole image less the kernel'} px a side; no method is told the "
        f"kernel size (a box of about half the side); x's generator {generators}, width "
        f"{profile.width}, {profile.num_iter} iterations; one noise draw per case. PSNR / SSIM "
        "after Levin's alignment and 15-px crop; error ratios against the non-blind run with "
        "the true kernel: Levin's SSD ratio and SelfDeblur's spectral-norm ratio, and the share "
        "of cases below 3 of each. The talk's PSNR: its table's mean over Levin-type images at "
        "full size, with its nets and iterations (its noise levels could not be read; σ 0.01 "
        "and 0.05 are ours). "
        f"Runs: {where or 'device and date not recorded'}.", "",
        table(rows),
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return guarded(lambda: measure(argv))


def measure(argv: list[str] | None) -> int:
    p = levin_parser("blind", __doc__, PROFILES)
    p.add_argument("--fast", action="store_true", help="denoising.py's --fast (the speed path)")
    p.add_argument("--shard", default="1/1", help="I/N: run every N-th run from the I-th")
    args = p.parse_args(argv)
    profile = PROFILES[args.profile]
    data_dir, out_dir, csv = levin_paths(args, "blind")
    try:
        part, parts = (int(v) for v in args.shard.split("/"))
    except ValueError:
        part = parts = 0
    if not 1 <= part <= parts:
        raise InputError(f"--shard must be I/N with 1 <= I <= N, got {args.shard}")
    code = 0
    if not args.table:
        configs = [dataclasses.replace(cfg, gpu=args.gpu, fast=args.fast)
                   for name, cfg in runs(profile, data_dir, out_dir).items()
                   if args.only is None or args.only in name][part - 1 :: parts]  # fmt: skip
        code = run_listed(configs, max_batch=args.batch, dry_run=args.dry_run)
        if args.dry_run:
            return code
    rows = score(profile, data_dir, out_dir)
    if rows:
        save_csv(csv, list(rows[0]), (r.values() for r in rows))
        save_text(csv.with_suffix(".md"), markdown(rows, args.profile))
        if csv.stem.startswith("blind_"):  # the page's name for this table (TASK_TABLES)
            write_comparison_page(csv.parent)
    print(table(rows))
    return code


if __name__ == "__main__":
    sys.exit(main())
