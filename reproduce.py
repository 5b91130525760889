"""Reproduce the paper's figures: run what is missing, then draw the figures and the table.

    python reproduce.py fig3                      # Figure 3 at the paper's scale (GPU, hours)
    python reproduce.py --quick all               # the paper's figures, small crops (CPU, minutes)
    python reproduce.py --quick lrc --batch 8     # the lr_c sweep
    python reproduce.py fig5 --jobs 4 --gpu 0,1   # 4 runs at a time over two GPUs
    python reproduce.py fig4 --fast --batch 8     # the fast path, up to 8 runs in one loop
    python reproduce.py --quick compare --batch 6 --images F16,Peppers   # docs/COMPARISON.md
    python reproduce.py --quick compare-sv --jobs 2 --images F16,Peppers  # SV-ES's own set
    python reproduce.py fig3 fig4 --launcher slurm --partition gpu   # a Slurm job array
    python reproduce.py fig3 fig4 --collect       # figures and tables from the finished runs

The runs are listed in experiments/sets.py. A finished run is reused, a killed run is resumed
from its last checkpoint, a run with no checkpoint is started afresh; a run whose saved settings
differ from the set's is refused. Outputs go to --out_dir (checkpoints/full or checkpoints/quick),
figures to figs/, tables to docs/.

--launcher slurm submits the missing runs as one Slurm job array through submitit
(experiments/launcher.py; pip install -e ".[slurm]") and returns (--wait: waits for them and
draws); a rerun, or --collect, draws the figures and tables once they have finished.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from experiments import launcher
from experiments.driver import ROOT, Setting, reproduce
from experiments.sets import DEFAULT_CASES, FIGURE_NAMES, PROFILES, check_names
from utils import ArgumentParser, InputError, guarded
from utils.images import DEFAULT_DATA_DIR
from utils.io import check_writable


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("figures", nargs="+", help=f"all (the paper's), {', '.join(FIGURE_NAMES)}")
    p.add_argument("--quick", action="store_true", help="the quick profile (64x64 crops, width/8)")
    p.add_argument("--out_dir", type=Path, default=None, help="default: checkpoints/PROFILE")
    p.add_argument("--data_dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--figs_dir", type=Path, default=ROOT / "figs")
    p.add_argument("--table_dir", type=Path, default=ROOT / "docs")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (subprocesses when > 1)")
    p.add_argument("--gpu", default=None,
                   help="cpu, or GPU indices to spread runs over, e.g. 0,1 (default: "
                        "denoising.py's: GPU 0 when there is one, else the CPU)")  # fmt: skip
    p.add_argument("--fast", action="store_true", help="denoising.py --fast for every run")
    p.add_argument("--images", default=None,
                   help="only the cases of these images, e.g. F16,Peppers")  # fmt: skip
    p.add_argument(
        "--batch",
        type=int,
        default=1,
        help="up to N runs of the same shape and method in one loop, in this process (on the "
        "first --gpu; with --launcher slurm: in one job); excludes --jobs",
    )
    p.add_argument("--launcher", choices=("local", "slurm"), default="local",
                   help="local: run here (default); slurm: submit the missing runs as one Slurm "
                        "job array (submitit) and return")  # fmt: skip
    p.add_argument("--collect", action="store_true",
                   help="run nothing: draw the figures and tables from the finished runs and "
                        "name the missing ones")  # fmt: skip
    p.add_argument("--wait", action="store_true",
                   help="--launcher slurm: wait for the jobs, then draw")  # fmt: skip
    slurm = p.add_argument_group(
        "--launcher slurm: the job array (a flag given wins over --slurm_config, which wins over "
        "the defaults)"
    )
    helps = {
        "partition": "Slurm partition (default: the cluster's)",
        "gpus_per_job": "GPUs of each job (default %s; 0 for CPU jobs)",
        "cpus_per_job": "CPUs of each job, and its torch threads (default %s)",
        "timeout_min": "time limit of each job, in minutes (default %s); a job that reaches it "
        "is requeued and its runs resume from their last checkpoints",
        "mem_gb": "memory of each job, in GB (default %s)",
        "array_parallelism": "jobs of the array running at once (default %s)",
    }
    for flag, (_, default) in launcher.FLAGS.items():
        slurm.add_argument(f"--{flag}", type=str if default is None else int, default=None,
                           help=helps[flag].replace("%s", str(default)))  # fmt: skip
    slurm.add_argument("--slurm_config", type=Path, default=None,
                       help="a JSON object of these parameters (by the flags' names) and of any "
                            "other of submitit's SlurmExecutor: account, qos, constraint, setup "
                            "(shell lines run before each job), ...")  # fmt: skip
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> tuple[tuple[str, ...] | None, dict | None]:
    """The devices and the cases (--images) of the command line; InputError on bad flags."""
    check_names(args.figures)
    gpus = None if args.gpu is None else tuple(g.strip() for g in args.gpu.split(","))
    slurm = args.launcher == "slurm"
    bad = [(args.jobs < 1 or args.batch < 1 or not (gpus is None or gpus == ("cpu",)
                                                    or all(g.isdigit() for g in gpus)),
            "--jobs and --batch must be >= 1, --gpu cpu or indices like 0,1"),
           (args.jobs > 1 and args.batch > 1, "--jobs and --batch exclude each other"),
           (args.wait and not slurm, "--wait goes with --launcher slurm"),
           (slurm and (args.jobs > 1 or gpus not in (None, ("cpu",))),
            "--launcher slurm runs each job on its own GPUs (--gpus_per_job): no --jobs, and "
            "--gpu only as cpu")]  # fmt: skip
    for failed, message in bad:
        if failed:
            raise InputError(message)
    for flag in ("out_dir", "figs_dir", "table_dir"):  # before any run, not after
        if getattr(args, flag) is not None:
            check_writable(getattr(args, flag), f"--{flag}", folder=True)
    if args.images is None:
        return gpus, None
    images, known = args.images.split(","), {c.image for g in DEFAULT_CASES.values() for c in g}
    if unknown := [name for name in images if name not in known]:
        raise InputError(f"--images: no case of {', '.join(unknown)}; the sets' images are "
                         f"{', '.join(sorted(known))}")  # fmt: skip
    cases = {name: tuple(c for c in group if c.image in images)
             for name, group in DEFAULT_CASES.items()}  # fmt: skip
    if not all(cases[name] for name in cases if name in check_names(args.figures)):
        raise InputError(f"--images {args.images} leaves a figure without cases")
    return gpus, cases


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args = parse_args(argv)
        gpus, cases = check_args(args)
        profile = PROFILES["quick" if args.quick else "full"]
        out_dir = args.out_dir or ROOT / "checkpoints" / profile.name
        executor = None
        if args.launcher == "slurm" and not args.collect:
            flags = {name: getattr(args, name) for name in launcher.FLAGS}
            options = launcher.read_options(args.slurm_config, flags)
            executor = launcher.slurm_executor(out_dir.resolve() / "submitit", options)
        started = time.time()
        outcome, files = reproduce(
            args.figures, Setting(profile, out_dir, args.data_dir, gpus, args.fast),
            args.figs_dir, args.table_dir, jobs=args.jobs, batch=args.batch, cases=cases,
            executor=executor, wait=args.wait, collect=args.collect,
        )  # fmt: skip
        report(outcome, files, profile.name, time.time() - started, argv)
        if outcome.get("missing"):
            print(f"error: runs not finished: {', '.join(outcome['missing'])}", file=sys.stderr)
            return 1
        if outcome["failed"]:
            print(f"error: failed runs: {', '.join(outcome['failed'])}", file=sys.stderr)
            return 1
        return 0

    return guarded(body, "the same command reuses finished runs and resumes the others from "
                   "their last checkpoint")  # fmt: skip


def report(outcome: dict, files: list[Path], profile: str, seconds: float,
           argv: list[str] | None) -> None:  # fmt: skip
    counts = ", ".join(f"{len(v)} {k}" for k, v in outcome.items())
    print(f"profile {profile}: {counts}; {seconds:.0f} s")
    for path in files:
        print(f"wrote {path}")
    if outcome.get("submitted") or outcome.get("in flight"):
        line = shlex.join(["python", "reproduce.py", *(sys.argv[1:] if argv is None else argv)])
        if outcome.get("waiting for the mask"):
            print(f"when the mask search's job has ended: {line} (it submits the runs that "
                  "wait for the mask)")  # fmt: skip
        else:
            print(
                f"when the jobs have ended: {line} --collect (or the same command again: it "
                "draws once every run has ended, and submits again those that did not)"
            )


if __name__ == "__main__":
    sys.exit(main())
