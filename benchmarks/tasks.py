"""The tasks beyond denoising at small scale: inpainting (50% of pixels kept) and x4
super-resolution on the paper's images, without and with salt-and-pepper outliers on the
observation, DIP (L2), DIP-L1 and DOP on the same observation (the same seed).

    OMP_NUM_THREADS=1 python benchmarks/tasks.py --data_dir ../shared/data/denoising --gpu cpu
    python benchmarks/tasks.py --table     # the markdown table of the finished runs

Every run is a denoising.py command line (printed with --dry_run); runs of one setting on the
four images share one loop (denoising.run_batch), finished runs are reused and killed ones
resumed. The quick profile of the paper's figures: 64x64 centre crops, width 16, 3000
iterations, DOP's lr_c by the sqrt rule from 1000 (experiments.PROFILES["quick"]).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import denoising  # noqa: E402
from experiments import PAPER_IMAGES, PROFILES, VARIANTS, needs_mask  # noqa: E402

# The lottery prior's runs need a mask found first (reproduce.py's compare set; lip.py evaluate).
VARIANTS = {name: settings for name, settings in VARIANTS.items() if not needs_mask(name)}
TASKS = {"inpaint": ["--task", "inpaint", "--keep", "0.5"], "sr": ["--task", "sr", "--factor", "4"]}
OUTLIERS = (0.0, 0.2)  # salt-and-pepper fraction of the observed entries


def name(task: str, nlevel: float, variant: str, image: str) -> str:
    return f"{task}_{image}_p{round(nlevel * 100):02d}_{variant}"


def runs(images=PAPER_IMAGES) -> list[tuple[str, float, str, str, list[str]]]:
    """(task, nlevel, variant, image, argv) of every run."""
    quick = PROFILES["quick"]
    out = []
    for task, task_args in TASKS.items():
        for nlevel in OUTLIERS:
            for variant, settings in VARIANTS.items():
                for image in images:
                    argv = [*task_args, "--image", image, "--nlevel", f"{nlevel:g}",
                            "--crop", str(quick.crop), "--width", str(quick.width(128)),
                            "--num_iter", str(quick.num_iter(150_000)),
                            "--show_every", str(quick.show_every), "--save_every",
                            str(quick.save_every), "--quiet",
                            "--ckpt", name(task, nlevel, variant, image)]  # fmt: skip
                    argv += [arg for key, value in settings.items() for arg in (f"--{key}", value)]
                    if variant == "dop":
                        argv += ["--lr_c", f"{quick.lr_c:g}", "--lr_c_scaling", quick.lr_c_scaling]
                    out.append((task, nlevel, variant, image, argv))
    return out


def table(out_dir: Path, images=PAPER_IMAGES) -> str:
    """Last-iterate PSNR (dB) per task, outlier level and variant: the mean over the images and
    each image's, with the observation's PSNR (sr: its bicubic upsampling)."""
    lines = ["| task | outliers | input | " + " | ".join(VARIANTS) + " |",
             "|---|---|---|" + "---|" * len(VARIANTS)]  # fmt: skip
    for task in TASKS:
        for nlevel in OUTLIERS:
            cells, inputs = [], []
            for variant in VARIANTS:
                values = []
                for image in images:
                    path = out_dir / f"{name(task, nlevel, variant, image)}_config.json"
                    if path.is_file():
                        report = json.loads(path.read_text())["report"]
                        values.append(report["final_psnr"])
                        inputs.append(report["noisy_psnr"])
                cells.append(f"{sum(values) / len(values):.2f}" if values else "–")
            shown = f"{sum(inputs) / len(inputs):.2f}" if inputs else "–"
            lines.append(f"| {task} | {nlevel:.0%} | {shown} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out_dir", default="checkpoints/tasks")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--gpu", default=None)
    p.add_argument("--only", default=None, help="run only the runs whose name contains this")
    p.add_argument("--images", default=",".join(PAPER_IMAGES), help="comma-separated")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--table", action="store_true", help="print the table only")
    p.add_argument("--dry_run", action="store_true", help="print the command lines only")
    args = p.parse_args(argv)
    out_dir, images = Path(args.out_dir), args.images.split(",")
    if not args.table:
        argvs = []
        for *_, run in runs(images):
            name = run[run.index("--ckpt") + 1]
            if args.only is not None and args.only not in name:
                continue
            run = run + ["--out_dir", str(out_dir)]
            run += [] if args.data_dir is None else ["--data_dir", args.data_dir]
            run += [] if args.gpu is None else ["--gpu", args.gpu]
            if (out_dir / f"{name}_state.pt").is_file():
                run.append("--resume")
            argvs.append(run)
        if args.dry_run:
            print("\n".join("python denoising.py " + " ".join(a) for a in argvs))
            return 0
        codes = denoising.run_batch(argvs, args.batch)
        if any(codes):
            print(f"{sum(c != 0 for c in codes)} runs failed", file=sys.stderr)
    print(table(out_dir, images))
    return 0


if __name__ == "__main__":
    sys.exit(main())
