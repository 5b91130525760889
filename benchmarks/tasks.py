"""The tasks beyond denoising at small scale: inpainting (50% of pixels kept) and x4
super-resolution on the paper's images, without and with salt-and-pepper outliers on the
observation, each variant of ROWS (DIP (L2), DIP-L1, DOP, the random projector) on the same
observation (the same seed).

    OMP_NUM_THREADS=1 python -m benchmarks.tasks --data_dir ../shared/data/denoising --gpu cpu
    python -m benchmarks.tasks --table     # the table of the finished runs

Every run is a RunConfig of the quick profile (its command line printed with --dry_run); runs of
one setting on the images share one loop (engine.run), finished runs are reused and killed ones
resumed.
The quick profile of the paper's figures: 64x64 centre crops, width / 8, 3000 iterations, DOP's
lr_c by the sqrt rule from 1000 (experiments.PROFILES["quick"]). The table (one row per variant,
the mean last-iterate PSNR over the images) goes to stdout, every run's scores to --csv.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from engine import RunConfig
from engine.runner import run_listed
from experiments.sets import PAPER_IMAGES, PROFILES
from utils import ArgumentParser, InputError, guarded
from utils.images import check_image_names
from utils.io import check_writable, save_csv
from utils.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent
TASKS = {"inpaint": {"task": "inpaint", "keep": 0.5}, "sr": {"task": "sr", "factor": 4}}
OUTLIERS = (0.0, 0.2)  # salt-and-pepper fraction of the observed entries
# The table's rows: keys of experiments.VARIANTS, whose settings each run takes. A new prior (the
# deep decoder, the random projector, the lottery prior) is one more entry there and here.
ROWS = ("dip", "dip-l1", "dop", "drp")


def name(task: str, nlevel: float, variant: str, image: str) -> str:
    return f"{task}_{image}_p{round(nlevel * 100):02d}_{variant}"


def runs(images=PAPER_IMAGES, out_dir: Path = Path("checkpoints/tasks")
         ) -> list[tuple[str, float, str, str, RunConfig]]:  # fmt: skip
    """(task, nlevel, variant, image, config) of every run, at the quick profile."""
    quick = PROFILES["quick"]
    return [(task, nlevel, variant, image,
             quick.config(variant, **settings, image=image, nlevel=nlevel, out_dir=str(out_dir),
                          ckpt=name(task, nlevel, variant, image)))
            for task, settings in TASKS.items() for nlevel in OUTLIERS for variant in ROWS
            for image in images]  # fmt: skip


# The CSV's columns from each run's report (config.json); the last is an oracle (the clean image).
REPORTED = {"observation_psnr": "noisy_psnr", "final_psnr": "final_psnr",
            "final_ssim": "final_ssim",
            "oracle_best_psnr": "oracle_best_psnr_vs_clean"}  # fmt: skip


def scores(out_dir: Path, images=PAPER_IMAGES) -> list[dict]:
    """Every finished run's last-iterate PSNR/SSIM, its observation's PSNR (sr: the bicubic
    upsampling) and the best PSNR over the logged rows (an oracle: it uses the clean image)."""
    rows = []
    for task, nlevel, variant, image, _ in runs(images, out_dir):
        config = RunDir(out_dir, name(task, nlevel, variant, image)).config()
        if config is not None:
            report = config["report"]
            run = {"task": task, "outliers": nlevel, "variant": variant, "image": image}
            rows.append(run | {key: round(report[field], 4) for key, field in REPORTED.items()})
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: a row per variant (and one for the observation, the same for every variant), a
    column per task and outlier level; each cell the mean last-iterate PSNR (dB) over the images
    that finished (their count in brackets when some did not)."""
    columns = [(task, nlevel) for task in TASKS for nlevel in OUTLIERS]
    images = {r["image"] for r in rows}

    def cell(key: str, variant: str, column: tuple[str, float]) -> str:
        values = [r[key] for r in rows if (r["variant"], r["task"], r["outliers"]) ==
                  (variant, *column)]  # fmt: skip
        count = "" if len(values) == len(images) else f" ({len(values)})"
        return f"{sum(values) / len(values):.2f}{count}" if values else "–"

    lines = ["| | " + " | ".join(f"{t}, {p:.0%} outliers" for t, p in columns) + " |",
             "|---|" + "---|" * len(columns),
             "| observation | " + " | ".join(cell("observation_psnr", ROWS[0], c)
                                            for c in columns) + " |"]  # fmt: skip
    for variant in ROWS:
        lines.append(f"| {variant} | " + " | ".join(cell("final_psnr", variant, c)
                                                   for c in columns) + " |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return guarded(lambda: measure(argv))


def measure(argv: list[str] | None) -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out_dir", default="checkpoints/tasks")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--gpu", default=None)
    p.add_argument("--only", default=None, help="run only the runs whose name contains this")
    p.add_argument("--images", default=",".join(PAPER_IMAGES), help="comma-separated")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--table", action="store_true", help="print the table only")
    p.add_argument("--dry_run", action="store_true", help="print the command lines only")
    p.add_argument("--csv", default=str(ROOT / "docs" / "tasks_quick.csv"))
    args = p.parse_args(argv)
    out_dir, images = Path(args.out_dir), args.images.split(",")
    check_image_names(images, "--images")
    check_writable(out_dir, "--out_dir", folder=True)
    check_writable(args.csv, "--csv")
    if args.batch < 1:
        raise InputError("--batch must be >= 1")
    code = 0
    if not args.table:
        where = {"gpu": args.gpu} | ({} if args.data_dir is None else {"data_dir": args.data_dir})
        configs = [dataclasses.replace(cfg, **where) for *_, cfg in runs(images, out_dir)
                   if args.only is None or args.only in cfg.ckpt]  # fmt: skip
        code = run_listed(configs, max_batch=args.batch, dry_run=args.dry_run)
        if args.dry_run:
            return code
    rows = scores(out_dir, images)
    if rows:
        save_csv(Path(args.csv), list(rows[0]), (r.values() for r in rows))
    print(table(rows))
    return code


if __name__ == "__main__":
    sys.exit(main())
