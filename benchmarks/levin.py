"""Blind deblurring on Levin et al.'s set (CVPR 2009: 4 gray images x 8 motion kernels, from
SelfDeblur's repository; ../shared/data/levin). For each case, SelfDeblur (--task blind-deblur,
its settings; the kernel size given is SelfDeblur's for that kernel, hard-coded in its
selfdeblur_levin.py:54-69: 17, 15, 13, 27, 11, 19, 21, 21 for kernels 1-8, the kernel file's side
less its 2-pixel zero border except kernel 4; ``--kernel_sizes file``: the file's side; larger
for an over-specified case) and non-blind deconvolution with the true kernel by the same engine
and image generator (--task deblur), both scored as Levin et al. score them
(utils.metrics.align: the sub-pixel shift that best aligns the estimate with the ground truth,
then a 15-pixel border crop), with both error ratios (utils.metrics.error_ratio): Levin et al.'s
SSD(blind) / SSD(true kernel) and SelfDeblur's ratio of spectral norms (statistic_levin.m:103),
and the share of cases below 3 of each.

    OMP_NUM_THREADS=1 python -m benchmarks.levin --profile quick --gpu cpu   # a 2-core CPU
    python -m benchmarks.levin --kernel_sizes file --no_nonlocal --ssim_padding valid  # before
    python -m benchmarks.levin --profile full --gpu 0     # SelfDeblur's setting, for a GPU
    python -m benchmarks.levin --profile full --dry_run   # its denoising.py command lines
    python -m benchmarks.levin --profile quick --table    # score the finished runs only

Every run is a RunConfig run by the runner (engine.run): finished runs are reused, killed ones
resumed. The table goes to stdout and to --csv (default docs/levin_PROFILE.csv).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from engine import RunConfig
from engine.runner import run_listed
from tasks import TASKS
from utils import ArgumentParser, InputError, guarded
from utils.images import SHARED_DATA
from utils.io import atomic_write, check_writable, save_csv
from utils.metrics import (
    ERROR_RATIOS,
    LEVIN_SHIFT,
    SSIM_PADDINGS,
    align,
    error_ratio,
    success_share,
)
from utils.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent
IMAGES, KERNELS = range(1, 5), range(1, 9)
SELFDEBLUR = TASKS["blind-deblur"].defaults  # 5000 iterations, l2 then 1 - SSIM, the milestones
# The kernel sizes SelfDeblur gives its blind runs (selfdeblur_levin.py:54-69), kernels 1 to 8.
SELFDEBLUR_SIZES = {1: 17, 2: 15, 3: 13, 4: 27, 5: 11, 6: 19, 7: 21, 8: 21}
KERNEL_SIZES = ("selfdeblur", "file")  # --kernel_sizes
THRESHOLD = 3.0  # Levin et al.'s success: an error ratio below 3


@dataclass(frozen=True)
class Case:
    """Image ``image`` blurred by kernel ``kernel``; ``oversize``: the kernel size given to the
    blind run over the file's (1: SelfDeblur's setting; Zhuang et al. over-specify it)."""

    image: int
    kernel: int
    oversize: float = 1.0

    def given_size(self, true: int, sizes: str = "selfdeblur") -> int:
        """SelfDeblur's size for the kernel (``sizes`` selfdeblur) or the file's side ``true``
        (file) when oversize is 1; else the odd size at or above round(true × oversize)."""
        if self.oversize == 1:
            return SELFDEBLUR_SIZES[self.kernel] if sizes == "selfdeblur" else true
        n = round(true * self.oversize)
        return n + 1 - n % 2

    def max_shift(self, true: int, sizes: str = "selfdeblur") -> float:
        """Levin's 5 px, plus the room a kernel box larger than the file's leaves the estimate
        to sit off-centre in it (x shifts by as much as the kernel, the other way)."""
        return LEVIN_SHIFT + max(0, self.given_size(true, sizes) - true) / 2


@dataclass(frozen=True)
class Profile:
    cases: tuple[Case, ...]
    width: int
    num_iter: int
    crop: int | None  # centre crop of the observation and the ground truth


PROFILES = {
    # SelfDeblur's setting: every case, width 128, 5000 iterations, whole images (a GPU's job).
    "full": Profile(tuple(Case(i, k) for i in IMAGES for k in KERNELS), 128, 5000, None),
    # A 2-core CPU: one kernel per image (sizes 13 to 27) and one over-specified size, on
    # 128 x 128 centre crops, width 16, 3000 iterations (README "Tasks", docs/RESULTS.md).
    "quick": Profile(
        (Case(1, 5), Case(2, 1), Case(3, 4), Case(4, 8), Case(2, 1, 1.8)), 16, 3000, 128
    ),
}


def true_size(data_dir: Path, kernel: int) -> int:
    with Image.open(data_dir / "gt" / f"kernel{kernel}.png") as img:
        return img.size[0]


def load(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img, np.float64) / 255


@functools.cache
def misfits(data_dir: Path, kernel: int) -> tuple[float, float]:
    """How well a kernel file explains its observations y_i of the sharp images x_i, as it is
    and rotated by 180°: mean_i min_t mean((y_i − (x_i ∗ k)(· − t))²) over integer shifts
    |t| ≤ 6, 20 pixels in from the border (∗ a true convolution, as ``convolve_valid``)."""
    from scipy.signal import fftconvolve

    k = load(data_dir / "gt" / f"kernel{kernel}.png")
    inner = (slice(20, -20),) * 2
    pairs = [[load(data_dir / name) for name in (f"gt/im{i}.png", f"im{i}_kernel{kernel}_img.png")]
             for i in IMAGES]  # fmt: skip

    def misfit(k: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
        blurred = fftconvolve(x, k / k.sum(), mode="same")
        return min(float(np.mean((np.roll(blurred, t, (0, 1))[inner] - y[inner]) ** 2))
                   for t in itertools.product(range(-6, 7), repeat=2))  # fmt: skip

    as_is, turned = (float(np.mean([misfit(c, *p) for p in pairs])) for c in (k, k[::-1, ::-1]))
    return as_is, turned


def rotated(data_dir: Path, kernel: int) -> bool:
    """Whether a true kernel, as this code's forward model uses it, is the file's 180° rotation:
    whether the rotation explains the kernel's observations better (``misfits``). A 'valid' blur
    here is a true convolution, and SelfDeblur's copy of the set stores its kernels in either
    orientation (kernels 4 and 8 as convolutions, the others as correlations: docs/RESULTS.md).
    It uses the sharp images, as the true kernel is ground truth too."""
    as_is, turned = misfits(data_dir, kernel)
    return turned < as_is


def true_kernel(data_dir: Path, kernel: int, out_dir: Path) -> Path:
    """OUT_DIR/kernels/kernelK.png: the kernel file in the orientation of ``rotated`` (its
    pixels rotated, not resampled), the --kernel of the kernel's runs."""
    path = out_dir / "kernels" / f"kernel{kernel}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(data_dir / "gt" / f"kernel{kernel}.png") as img:
        turn = rotated(data_dir, kernel)
        kept = img.transpose(Image.Transpose.ROTATE_180) if turn else img.copy()
    atomic_write(path, lambda f: kept.save(f, format="PNG"))
    return path


def schedule(num_iter: int) -> dict:
    """SelfDeblur's l2-then-SSIM loss and step schedule, scaled from its 5000 iterations to
    ``num_iter`` (the task's defaults at 5000)."""
    scale = num_iter / SELFDEBLUR["num_iter"]
    milestones = (round(int(m) * scale) for m in SELFDEBLUR["lr_milestones"].split(","))
    return {"num_iter": num_iter, "loss_switch": round(RunConfig().loss_switch * scale),
            "lr_milestones": ",".join(map(str, milestones))}  # fmt: skip


def runs(profile: Profile, data_dir: Path, out_dir: Path, sizes: str = "selfdeblur",
         **settings) -> dict[str, RunConfig]:  # fmt: skip
    """The configs of every run by its name: each case's blind run (the kernel size of
    ``sizes``) and its image-and-kernel's non-blind run (shared by an exact and an
    over-specified case), both with the task's (SelfDeblur's) defaults, then ``settings``
    (``--no_nonlocal``, ``--ssim_padding valid``: this code's earlier generator and loss).
    Writes the true kernels they name (``true_kernel``)."""
    out = {}
    for case in profile.cases:
        i, k, size = case.image, case.kernel, true_size(data_dir, case.kernel)
        show = max(1, profile.num_iter // 20)  # logged rows; a checkpoint every 5
        common = RunConfig(observed=str(data_dir / f"im{i}_kernel{k}_img.png"),
                           clean=str(data_dir / "gt" / f"im{i}.png"), width=profile.width,
                           show_every=show, save_every=5 * show, quiet=True, reuse=True,
                           crop=profile.crop, out_dir=str(out_dir),
                           kernel=str(true_kernel(data_dir, k, out_dir)),
                           **schedule(profile.num_iter), **settings)  # fmt: skip
        name = blind_name(case, size, sizes)
        out[name] = dataclasses.replace(common, task="blind-deblur", ckpt=name,
                                        kernel_size=case.given_size(size, sizes))  # fmt: skip
        out[f"deblur_im{i}_k{k}"] = dataclasses.replace(common, task="deblur",
                                                        ckpt=f"deblur_im{i}_k{k}")  # fmt: skip
    return out


def blind_name(case: Case, true: int, sizes: str = "selfdeblur") -> str:
    return f"blind_im{case.image}_k{case.kernel}_n{case.given_size(true, sizes)}"


def score(profile: Profile, data_dir: Path, out_dir: Path, sizes: str = "selfdeblur"
          ) -> list[dict]:  # fmt: skip
    """One row per finished case: PSNR/SSIM of the last iterates (read back from their 8-bit
    PNGs, as SelfDeblur's evaluation reads its saved images) after the alignment and crop
    (``align``, its search widened for an over-specified kernel: ``Case.max_shift``) and of the
    blurred observation (Levin's search), both error ratios (``ERROR_RATIOS``: Levin et al.'s
    SSD ratio, SelfDeblur's spectral one), the estimated kernel's correlation with the true one,
    the blind run's unaligned PSNR (on the whole crop, as its report has it)."""
    rows = []
    for case in profile.cases:
        size = true_size(data_dir, case.kernel)
        blind = RunDir(out_dir, blind_name(case, size, sizes))
        known = RunDir(out_dir, f"deblur_im{case.image}_k{case.kernel}")
        if blind.config() is None or known.config() is None:
            continue
        m = case.max_shift(size, sizes)
        a, b = (align(r.image("last"), r.image("clean"), max_shift=m) for r in (blind, known))
        blurred = align(known.image("noisy"), known.image("clean"))  # the observation itself
        report = blind.config()["report"]
        rows.append({
            "image": case.image, "kernel": case.kernel, "true_size": size,
            "kernel_rotated": rotated(data_dir, case.kernel),
            "given_size": case.given_size(size, sizes), "oversize": case.oversize,
            "max_shift": m,
            "blurred_psnr": round(blurred.psnr(), 2), "blurred_ssim": round(blurred.ssim(), 4),
            "blind_psnr": round(a.psnr(), 2), "blind_ssim": round(a.ssim(), 4),
            "deblur_psnr": round(b.psnr(), 2), "deblur_ssim": round(b.ssim(), 4),
            **{f"error_ratio_{kind}": round(error_ratio(a, b, kind), 3)
               for kind in ERROR_RATIOS},
            "kernel_correlation": round(report["kernel_correlation"], 3),
            "blind_shift_rows": a.shift[0], "blind_shift_cols": a.shift[1],
            "blind_psnr_unaligned": round(report["final_psnr"], 2),
        })  # fmt: skip
    return rows


MEANS = ("blurred_psnr", "blurred_ssim", "blind_psnr", "blind_ssim", "deblur_psnr",
         "deblur_ssim", *(f"error_ratio_{kind}" for kind in ERROR_RATIOS),
         "kernel_correlation")  # fmt: skip


def table(rows: list[dict]) -> str:
    """Markdown: one line per case, then the means over the cases of the size rule (not
    over-specified) and the share of those cases whose error ratio is below 3, for each ratio:
    Levin et al.'s SSD ratio and SelfDeblur's spectral-norm ratio."""
    head = ["image", "kernel (file size)", "given size", "blurred PSNR / SSIM",
            "SelfDeblur PSNR / SSIM", "true kernel PSNR / SSIM", "error ratio, SSD (Levin)",
            "error ratio, spectral (SelfDeblur)", "kernel corr."]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def line(r: dict, image: str, kernel: str, size: str) -> str:
        pairs = " | ".join(f"{r[f'{run}_psnr']:.2f} / {r[f'{run}_ssim']:.3f}"
                           for run in ("blurred", "blind", "deblur"))  # fmt: skip
        ratios = " | ".join(f"{r[f'error_ratio_{kind}']:.2f}" for kind in ERROR_RATIOS)
        corr = f"{r['kernel_correlation']:.3f}"
        return f"| {image} | {kernel} | {size} | {pairs} | {ratios} | {corr} |"

    for r in rows:
        lines.append(line(r, f"im{r['image']}", f"{r['kernel']} ({r['true_size']})",
                          str(r["given_size"])))  # fmt: skip
    exact = [r for r in rows if float(r["oversize"]) == 1]
    if exact:
        mean = {key: float(np.mean([r[key] for r in exact])) for key in MEANS}
        lines.append(line(mean, f"mean of {len(exact)}", "", ""))
        shares = " | ".join(
            f"{100 * success_share(r[f'error_ratio_{kind}'] for r in exact):.0f}%"
            for kind in ERROR_RATIOS)  # fmt: skip
        lines.append(f"| below {THRESHOLD:g} | | | | | | {shares} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return guarded(lambda: measure(argv))


def levin_parser(name: str, doc: str | None, profiles: dict) -> ArgumentParser:
    """The arguments every benchmark on Levin et al.'s set takes (``name``: its folder's and
    table's stem: checkpoints/NAME_PROFILE, docs/NAME_PROFILE.csv)."""
    p = ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--profile", choices=profiles, default="quick")
    p.add_argument("--data_dir", default=str(SHARED_DATA / "levin"))
    p.add_argument("--out_dir", default=None, help=f"default: checkpoints/{name}_PROFILE")
    p.add_argument("--csv", default=None, help=f"default: docs/{name}_PROFILE.csv")
    p.add_argument("--gpu", default=None)
    p.add_argument("--only", default=None, help="run only the runs whose name contains this")
    p.add_argument("--batch", type=int, default=1, help="runs of one shape sharing a loop")
    p.add_argument("--table", action="store_true", help="score the finished runs only")
    p.add_argument("--dry_run", action="store_true", help="print the command lines only")
    return p


def levin_paths(args: argparse.Namespace, name: str) -> tuple[Path, Path, Path]:
    """The data, run and table paths of ``levin_parser``'s arguments, checked before anything
    is written (one line each)."""
    data_dir = Path(args.data_dir)
    out_dir = Path(args.out_dir or f"checkpoints/{name}_{args.profile}")
    if not (data_dir / "gt" / "kernel1.png").is_file():
        raise InputError(f"--data_dir {data_dir} does not hold Levin et al.'s set (gt/kernel1.png)")
    csv = Path(args.csv or ROOT / "docs" / f"{name}_{args.profile}.csv")
    check_writable(out_dir, "--out_dir", folder=True)
    check_writable(csv, "--csv")
    if args.batch < 1:
        raise InputError("--batch must be >= 1")
    return data_dir, out_dir, csv


def measure(argv: list[str] | None) -> int:
    p = levin_parser("levin", __doc__, PROFILES)
    p.add_argument("--kernel_sizes", choices=KERNEL_SIZES, default="selfdeblur",
                   help="the kernel size given to the blind runs: selfdeblur (its hard-coded "
                   "sizes, 2 px below the file's but kernel 4) or file (the kernel file's "
                   "side, this code's earlier setting)")  # fmt: skip
    p.add_argument("--no_nonlocal", action="store_true",
                   help="every run's generator without SelfDeblur's non-local blocks")  # fmt: skip
    p.add_argument("--ssim_padding", choices=SSIM_PADDINGS, default="zero",
                   help="the SSIM of the loss: zero (SelfDeblur's) or valid")  # fmt: skip
    p.add_argument("--orientation", action="store_true",
                   help="print how well each kernel file explains its observations, as it is "
                   "and rotated (PSNR of the best-shifted blur of the sharp image)")  # fmt: skip
    args = p.parse_args(argv)
    profile = PROFILES[args.profile]
    data_dir, out_dir, csv = levin_paths(args, "levin")
    if args.orientation:
        for k in KERNELS:
            as_is, turned = (10 * np.log10(1 / m) for m in misfits(data_dir, k))
            kept = "rotated" if rotated(data_dir, k) else "as it is"
            print(f"kernel {k}: as it is {as_is:.2f} dB, rotated {turned:.2f} dB: {kept}")
        return 0
    code = 0
    if not args.table:
        configs = [dataclasses.replace(cfg, gpu=args.gpu)
                   for name, cfg in runs(profile, data_dir, out_dir, args.kernel_sizes,
                                         no_nonlocal=args.no_nonlocal,
                                         ssim_padding=args.ssim_padding).items()
                   if args.only is None or args.only in name]  # fmt: skip
        code = run_listed(configs, max_batch=args.batch, dry_run=args.dry_run)
        if args.dry_run:
            return code
    rows = score(profile, data_dir, out_dir, args.kernel_sizes)
    if rows:
        save_csv(csv, list(rows[0]), (r.values() for r in rows))
    print(table(rows))
    return code


if __name__ == "__main__":
    sys.exit(main())
