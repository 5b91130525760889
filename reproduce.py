"""Reproduce the paper's figures: run what is missing, then draw the figures and the table.

    python reproduce.py fig3                      # Figure 3 at the paper's scale (GPU, hours)
    python reproduce.py --quick all               # the paper's figures, small crops (CPU, minutes)
    python reproduce.py --quick lrc --batch 8     # the lr_c sweep
    python reproduce.py fig5 --jobs 4 --gpu 0,1   # 4 runs at a time over two GPUs
    python reproduce.py fig4 --fast --batch 8     # the fast path, up to 8 runs in one loop
    python reproduce.py --quick compare --batch 6 --images F16,Peppers   # docs/COMPARISON.md
    python reproduce.py fig3 fig4 --launcher slurm --partition gpu   # a Slurm job array
    python reproduce.py fig3 fig4 --collect       # figures and tables from the finished runs

The runs are listed in experiments.py. A finished run is reused, a killed run is resumed from its
last checkpoint (denoising.py --resume), a run with no checkpoint is started afresh; a run whose
saved settings differ from the set's is refused. Outputs go to --out_dir (checkpoints/full or
checkpoints/quick), figures to figs/, tables to docs/.

--launcher slurm submits the missing runs as one Slurm job array through submitit (launcher.py;
pip install -e ".[slurm]") and returns (--wait: waits for them and draws); a rerun, or --collect,
draws the figures and tables once they have finished.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import baselines
import denoising
import launcher
import lip
import plot
from experiments import (
    DEFAULT_CASES,
    FIGURE_NAMES,
    LIP_MASKS,
    PAPER_VARIANTS,
    PROFILES,
    Case,
    MaskSearch,
    Profile,
    Run,
    check_names,
    figure_runs,
)
from models.lip import file_sha256
from utils import InputError
from utils.config import parse
from utils.images import DEFAULT_DATA_DIR, PAPER_IMAGES, fetch_paper_image
from utils.io import save_json
from utils.rundir import RunDir, check_same

ROOT = Path(__file__).resolve().parent


def run_state(run: Run, profile: Profile, out_dir: Path) -> str:
    """What to do with a run: "reuse" (finished, stopped or diverged), "resume", or "start".
    InputError when the folder holds a run of that name made with other settings."""
    rundir = RunDir(out_dir, run.ckpt(profile))
    record = rundir.config()
    if record is not None:
        wanted = parse(run.args(profile, out_dir)).with_defaults().defining()
        advice = "delete the run's files or choose another --out_dir"
        mask = wanted.pop("mask", None)  # the lottery prior's: by its content, not its path
        check_same(rundir.path("config"), record["settings"], wanted, advice)
        if mask is not None and Path(mask).is_file():  # so a moved folder's runs are reused
            check_same(rundir.path("config"), record["data"],
                       {"mask_sha256": file_sha256(mask)}, advice)  # fmt: skip
        report = record["report"]
        done = report["iterations_done"] == profile.num_iter(run.num_iter)
        ended = report["status"] in ("diverged", "stopped")  # by divergence or a stopping rule
        if ended or (report["status"] == "finished" and done):
            return "reuse"
    return "resume" if rundir.path("state").is_file() else "start"


def run_argv(run: Run, profile: Profile, action: str, out_dir: Path, data_dir: Path,
             gpu: str | None, fast: bool = False) -> list[str]:  # fmt: skip
    """The denoising.py arguments for ``run``; a start over leftovers of a killed run overwrites."""
    argv = run.args(profile, out_dir) + ["--out_dir", str(out_dir.resolve())]
    argv += ["--data_dir", str(data_dir.resolve())]  # absolute: subprocesses run in ROOT
    argv += ([] if gpu is None else ["--gpu", gpu]) + (["--fast"] if fast else [])
    if action == "resume":
        argv.append("--resume")
    elif RunDir(out_dir, run.ckpt(profile)).existing():  # killed before its first checkpoint
        argv.append("--overwrite")
    return argv


def launch(argv: list[str], log: Path, threads: int) -> int:
    """Run denoising.py in a subprocess, its output to ``log``; returns its exit code."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads))
    with log.open("w") as f:
        cmd = [sys.executable, str(ROOT / "denoising.py"), *argv]
        return subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode


def sort_runs(
    runs: list[Run], profile: Profile, out_dir: Path
) -> tuple[dict[str, list[str]], list[tuple[Run, str]]]:
    """The runs to reuse (and those refused, as failed) by outcome, and the others with what to
    do with each (resume or start)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    outcome: dict[str, list[str]] = {"reused": [], "resumed": [], "started": [], "failed": []}
    todo = []
    for run in runs:
        try:
            action = run_state(run, profile, out_dir)
        except InputError as err:
            print(f"error: {err}", file=sys.stderr)
            outcome["failed"].append(run.ckpt(profile))
            continue
        if action == "reuse":
            outcome["reused"].append(run.ckpt(profile))
        else:
            todo.append((run, action))
    return outcome, todo


def run_all(
    runs: list[Run],
    profile: Profile,
    out_dir: Path,
    data_dir: Path,
    gpus: tuple[str, ...] | None = None,
    jobs: int = 1,
    fast: bool = False,
    batch: int = 1,
    executor: Any = None,
    wait: bool = False,
) -> dict[str, list[str]]:
    """Run the missing runs: in this process one by one (jobs = 1), ``jobs`` subprocesses at a
    time spread over ``gpus`` (None: denoising.py's default device; ("cpu",): the CPU), or
    (batch > 1) in this process with up to ``batch`` compatible runs sharing one loop
    (``denoising.run_batch``, on the first of ``gpus``). With a submitit ``executor`` (Slurm, or
    a local one in tests) they are submitted as one job array instead (``submit_all``).

    Returns the checkpoint names by outcome: reused, resumed, started, failed (and, with an
    executor, submitted and in flight).
    """
    outcome, todo = sort_runs(runs, profile, out_dir)
    if executor is not None:
        return submit_all(todo, profile, out_dir, data_dir, gpus, fast, batch, executor, wait,
                          outcome)  # fmt: skip
    threads = max(1, (os.cpu_count() or 1) // jobs)  # per subprocess, unless OMP_NUM_THREADS
    gpu_of = lambda index: None if gpus is None else gpus[index % len(gpus)]  # noqa: E731

    def record(run: Run, action: str, code: int) -> None:
        if code == 130:  # a run was interrupted (Ctrl-C): stop the whole set
            raise KeyboardInterrupt
        key = "failed" if code != 0 else ("resumed" if action == "resume" else "started")
        outcome[key].append(run.ckpt(profile))

    def one(index: int) -> None:
        run, action = todo[index]
        argv = run_argv(run, profile, action, out_dir, data_dir, gpu_of(index), fast)
        print(f"[{index + 1}/{len(todo)}] {action} {run.ckpt(profile)}", flush=True)
        log = RunDir(out_dir, run.ckpt(profile)).log
        record(run, action, denoising.main(argv) if jobs == 1 else launch(argv, log, threads))

    if batch > 1:
        argvs = [run_argv(r, profile, a, out_dir, data_dir, gpu_of(0), fast) for r, a in todo]
        for (run, action), code in zip(todo, denoising.run_batch(argvs, batch), strict=True):
            record(run, action, code)
    elif jobs == 1:
        for index in range(len(todo)):
            one(index)
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(one, range(len(todo))))
    return outcome


def run_baselines(cases: tuple[Case, ...], profile: Profile, out_dir: Path, data_dir: Path
                  ) -> None:  # fmt: skip
    """The classical baselines (baselines.py) on each comparison case's observation, made as the
    case's runs make it (same settings and seed), kept in ``Case.baselines_path``; reused when
    there. BM3D gets the true σ for Gaussian noise and estimates it otherwise."""
    for case in cases:
        path = case.baselines_path(out_dir)
        if path.is_file():
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        argv = case.run(PAPER_VARIANTS[0], observe=True).args(profile)  # any variant's noise
        data = denoising.load_data(parse(argv + ["--data_dir", str(data_dir)]).with_defaults())
        sigma = case.nlevel if case.noise == "gaussian" else None
        print(f"baselines on {case.label}", flush=True)
        rows = baselines.evaluate(data.y, data.clean, sigma)
        save_json(path, {"case": case.label, "sigma_given": sigma, "baselines": rows})


def find_masks(
    search: MaskSearch,
    profile: Profile,
    out_dir: Path,
    data_dir: Path,
    gpus: tuple[str, ...] | None = None,
    fast: bool = False,
    executor: Any = None,
    wait: bool = False,
) -> str:
    """The set's mask search (``experiments.MaskSearch``, lip.py): found once, before the runs
    that train its mask, and reused. Here, or with an ``executor`` as one job
    (``launcher.Script``), which a later call finds in flight. Returns "ready" when the mask is
    there (found earlier, here, or by a job waited for), "submitted" or "in flight", or "failed"
    (the search failed, or the folder holds one made with other settings: said in one line)."""
    ckpt = search.ckpt(profile)
    argv = search.args(profile) + ["--out_dir", str(out_dir.resolve()),
                                   "--data_dir", str(data_dir.resolve())]  # fmt: skip
    argv += ([] if gpus is None else ["--gpu", gpus[0]]) + (["--fast"] if fast else [])
    record = out_dir / f"{ckpt}_imp.json"
    if record.is_file():
        try:
            lip.check_same_search(record, argv)
        except InputError as err:
            print(f"error: {err}", file=sys.stderr)
            return "failed"
        return "ready"
    argv.append("--overwrite")  # over the rounds a killed search left
    log = out_dir / f"{ckpt}.log"
    if executor is None:
        print(f"mask search {ckpt}", flush=True)
        return "ready" if lip.main(argv) == 0 else "failed"
    out_dir.mkdir(parents=True, exist_ok=True)
    busy = bool(launcher.in_flight(executor, [ckpt]))
    if busy:
        job = launcher.job_of(executor, ckpt)
    else:
        job = launcher.submit_script(executor, ckpt, launcher.Script("lip", tuple(argv)), log)
    if not wait:
        return "in flight" if busy else "submitted"
    launcher.wait([job])
    if not record.is_file():
        print(f"error: the mask search {ckpt} failed: see {log}", file=sys.stderr)
        return "failed"
    return "ready"


def submit_all(
    todo: list[tuple[Run, str]],
    profile: Profile,
    out_dir: Path,
    data_dir: Path,
    gpus: tuple[str, ...] | None,
    fast: bool,
    batch: int,
    executor: Any,
    wait: bool,
    outcome: dict[str, list[str]],
) -> dict[str, list[str]]:
    """Submit the runs of ``todo`` as one job array (launcher.py), but those whose job from an
    earlier call is still queued or running (in flight). Without ``wait`` the others are
    "submitted"; with it, they are started, resumed or failed once their jobs have ended."""
    gpu = None if gpus is None else gpus[0]  # None (each job's GPU) or "cpu"
    argvs = {run.ckpt(profile): run_argv(run, profile, action, out_dir, data_dir, gpu, fast)
             for run, action in todo}  # fmt: skip
    busy = launcher.in_flight(executor, list(argvs))
    for image in sorted({run.image for run, _ in todo if run.ckpt(profile) not in busy}):
        if image in PAPER_IMAGES:  # fetched here, once: the jobs' nodes may have no internet
            fetch_paper_image(image, data_dir)
    jobs = launcher.submit(executor, {k: v for k, v in argvs.items() if k not in busy}, batch)
    outcome["in flight"] = busy
    if not wait:
        return outcome | {"submitted": [name for name in argvs if name not in busy]}
    launcher.wait(jobs)
    for run, action in todo:
        if run.ckpt(profile) not in busy:
            done = run_state(run, profile, out_dir) == "reuse"
            key = "failed" if not done else ("resumed" if action == "resume" else "started")
            outcome[key].append(run.ckpt(profile))
    return outcome


def reproduce(
    names: list[str],
    profile: Profile,
    out_dir: Path,
    data_dir: Path,
    figs_dir: Path = ROOT / "figs",
    table_dir: Path = ROOT / "docs",
    *,
    gpus: tuple[str, ...] | None = None,
    jobs: int = 1,
    fast: bool = False,
    batch: int = 1,
    cases: dict[str, tuple[Case, ...]] | None = None,
    executor: Any = None,
    wait: bool = False,
    collect: bool = False,
) -> tuple[dict[str, list[str]], list[Path]]:
    """Run the runs of the named figures that are missing, then draw them and write the table.

    With a submitit ``executor`` the runs are submitted (``run_all``) and the figures drawn only
    when none is left to a job. ``collect``: run nothing, draw what has finished, and name the
    others as missing. ``profile`` and ``cases`` may be shrunk (tests do); returns the outcome
    and the files written.
    """
    runs = figure_runs(names, cases)
    if collect:
        outcome, todo = sort_runs(runs, profile, out_dir)
        outcome = {"reused": outcome["reused"], "missing": [r.ckpt(profile) for r, _ in todo],
                   "failed": outcome["failed"]}  # fmt: skip
    else:
        if "compare" in check_names(names):
            run_baselines((DEFAULT_CASES | (cases or {}))["compare"], profile, out_dir, data_dir)
        masked, search = [r for r in runs if r.needs_mask()], "ready"
        if masked:
            search = find_masks(LIP_MASKS, profile, out_dir, data_dir, gpus, fast, executor, wait)
        if search != "ready":  # the runs that train the mask wait for it
            runs = [r for r in runs if not r.needs_mask()]
        outcome = run_all(runs, profile, out_dir, data_dir, gpus, jobs, fast, batch, executor,
                          wait)  # fmt: skip
        if search == "failed":  # so are the runs of its mask
            outcome["failed"] += [LIP_MASKS.ckpt(profile), *(r.ckpt(profile) for r in masked)]
        elif search != "ready":
            outcome[search] = [*outcome.get(search, []), LIP_MASKS.ckpt(profile)]
            outcome["waiting for the mask"] = [r.ckpt(profile) for r in masked]
    if outcome.get("submitted") or outcome.get("in flight"):
        return outcome, []
    files = plot.draw(names, profile, out_dir, figs_dir, table_dir, cases)
    return outcome, files


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_names(args.figures)
    except KeyError as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 2
    gpus = None if args.gpu is None else tuple(g.strip() for g in args.gpu.split(","))
    if args.jobs < 1 or args.batch < 1 or not (gpus is None or gpus == ("cpu",)
                                                 or all(g.isdigit() for g in gpus)):  # fmt: skip
        print("error: --jobs and --batch must be >= 1, --gpu cpu or indices like 0,1",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.jobs > 1 and args.batch > 1:
        print("error: --jobs and --batch exclude each other", file=sys.stderr)
        return 2
    slurm = args.launcher == "slurm"
    if args.wait and not slurm:
        print("error: --wait goes with --launcher slurm", file=sys.stderr)
        return 2
    if slurm and (args.jobs > 1 or gpus not in (None, ("cpu",))):
        print("error: --launcher slurm runs each job on its own GPUs (--gpus_per_job): no --jobs, "
              "and --gpu only as cpu", file=sys.stderr)  # fmt: skip
        return 2
    profile = PROFILES["quick" if args.quick else "full"]
    cases = None
    if args.images is not None:
        images = set(args.images.split(","))
        cases = {name: tuple(c for c in group if c.image in images)
                 for name, group in DEFAULT_CASES.items()}  # fmt: skip
        if not all(cases[name] for name in cases if name in check_names(args.figures)):
            print(f"error: --images {args.images} leaves a figure without cases",
                  file=sys.stderr)  # fmt: skip
            return 2
    out_dir = args.out_dir or ROOT / "checkpoints" / profile.name
    executor = None
    if slurm and not args.collect:
        flags = {name: getattr(args, name) for name in launcher.FLAGS}
        try:
            options = launcher.read_options(args.slurm_config, flags)
            executor = launcher.slurm_executor(out_dir.resolve() / "submitit", options)
        except InputError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    started = time.time()
    try:
        outcome, files = reproduce(
            args.figures, profile, out_dir, args.data_dir, args.figs_dir, args.table_dir,
            gpus=gpus, jobs=args.jobs, fast=args.fast, batch=args.batch, cases=cases,
            executor=executor, wait=args.wait, collect=args.collect,
        )  # fmt: skip
    except InputError as err:  # e.g. a paper image that cannot be fetched before submitting
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: the same command reuses finished runs and resumes the others from "
              "their last checkpoint", file=sys.stderr)  # fmt: skip
        return 130
    counts = ", ".join(f"{len(v)} {k}" for k, v in outcome.items())
    print(f"profile {profile.name}: {counts}; {time.time() - started:.0f} s")
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
                "draws once every run has finished, and submits again those that did not)"
            )
    if outcome.get("missing"):
        print(f"error: runs not finished: {', '.join(outcome['missing'])}", file=sys.stderr)
        return 1
    if outcome["failed"]:
        print(f"error: failed runs: {', '.join(outcome['failed'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
