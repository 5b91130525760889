"""Running a set of runs (``experiments.sets``) to its figures and tables: the runs that are
missing, here (one by one, batched, or as subprocesses over GPUs) or as a Slurm job array
(``experiments.launcher``), the set's preliminary stages (the lottery prior's mask search, the
classical baselines of the comparison), then the figures and tables (``experiments.plots``).

Every run carries ``--reuse``: the runner reuses finished runs, resumes killed ones and refuses
a run of the same name made with other settings (``engine.runner``).
"""

from __future__ import annotations

import dataclasses
import os
import queue
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from engine import run
from engine.config import RunConfig, to_argv
from engine.data import observe
from engine.runner import ended
from experiments import baselines, launcher, plots
from experiments.imp import run_search
from experiments.sets import (
    DEFAULT_CASES,
    LIP_MASKS,
    PAPER_VARIANTS,
    Case,
    MaskSearch,
    Profile,
    Run,
    check_names,
    figure_runs,
)
from utils import InputError
from utils.images import PAPER_IMAGES, fetch_paper_image
from utils.io import save_json
from utils.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Setting:
    """Where and how a set runs: its profile, folders, devices (None: each run's default; a
    tuple of GPU indices, or ("cpu",)) and ``--fast``."""

    profile: Profile
    out_dir: Path
    data_dir: Path
    gpus: tuple[str, ...] | None = None
    fast: bool = False

    def config(self, run_: Run) -> RunConfig:
        cfg = run_.config(self.profile, self.out_dir, self.data_dir)
        return dataclasses.replace(cfg, gpu=None if self.gpus is None else self.gpus[0],
                                   fast=self.fast)  # fmt: skip


def sort_runs(runs: Sequence[Run], setting: Setting) -> tuple[dict[str, list[str]], list[Run]]:
    """The runs that have ended (reused) and those refused (failed: their folder holds a run of
    that name made with other settings), by name; and the others, to run."""
    outcome: dict[str, list[str]] = {"reused": [], "resumed": [], "started": [], "failed": []}
    todo = []
    for r in runs:
        try:
            done = ended(setting.config(r))
        except InputError as err:
            print(f"error: {err}", file=sys.stderr)
            outcome["failed"].append(r.ckpt(setting.profile))
            continue
        if done:
            outcome["reused"].append(r.ckpt(setting.profile))
        else:
            todo.append(r)
    return outcome, todo


def run_all(runs: Sequence[Run], setting: Setting, jobs: int = 1, batch: int = 1,
            executor: Any = None, wait: bool = False) -> dict[str, list[str]]:  # fmt: skip
    """Run the missing runs: in this process (up to ``batch`` compatible runs sharing one loop),
    or ``jobs`` subprocesses at a time, each on a GPU slot taken from a queue of free ones
    (``gpu_slots``). With a submitit ``executor`` (Slurm, or a local one in tests) they are
    submitted as one job array instead (``submit_all``).

    Returns the run names by outcome: reused, resumed, started, failed (and, with an executor,
    submitted and in flight)."""
    outcome, todo = sort_runs(runs, setting)
    if executor is not None:
        return submit_all(todo, setting, batch, executor, wait, outcome)
    configs = [setting.config(r) for r in todo]
    resuming = {cfg.ckpt for cfg in configs if has_checkpoint(cfg)}

    def record(cfg: RunConfig, code: int) -> None:
        if code == 130:  # a run was interrupted (Ctrl-C): stop the whole set
            raise KeyboardInterrupt
        key = "failed" if code else ("resumed" if cfg.ckpt in resuming else "started")
        outcome[key].append(cfg.ckpt)

    if jobs == 1:
        for cfg, o in zip(configs, run(configs, max_batch=batch), strict=True):
            record(cfg, o.code)
        return outcome
    slots = gpu_slots(setting.gpus, jobs)
    threads = max(1, (os.cpu_count() or 1) // jobs)  # per subprocess, unless OMP_NUM_THREADS

    def one(index: int) -> None:
        gpu = slots.get()
        try:
            cfg = dataclasses.replace(configs[index], gpu=gpu)
            print(f"[{index + 1}/{len(configs)}] {cfg.ckpt}" + (f" on {gpu}" if gpu else ""),
                  flush=True)  # fmt: skip
            record(cfg, launch(cfg, threads))
        finally:
            slots.put(gpu)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, range(len(configs))))
    return outcome


def gpu_slots(gpus: tuple[str, ...] | None, jobs: int) -> queue.Queue:
    """A queue of ``jobs`` device slots spread evenly over ``gpus`` (None: each run's default):
    a subprocess takes a free slot and gives it back when it ends, so runs never stack on one GPU
    while another idles."""
    slots: queue.Queue = queue.Queue()
    for index in range(jobs):
        slots.put(None if gpus is None else gpus[index % len(gpus)])
    return slots


def launch(cfg: RunConfig, threads: int) -> int:
    """Run ``cfg`` in a subprocess (denoising.py), its output to OUT_DIR/CKPT.log; its exit code."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads))
    log = RunDir(Path(cfg.out_dir), cfg.ckpt).log
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        command = [sys.executable, str(ROOT / "denoising.py"), *to_argv(cfg)]
        return subprocess.run(command, cwd=ROOT, env=env, stdout=f,
                              stderr=subprocess.STDOUT).returncode  # fmt: skip


def run_baselines(cases: Sequence[Case], setting: Setting) -> None:
    """The classical baselines (experiments/baselines.py) on each comparison case's observation,
    made as the case's runs make it (same settings and seed), kept in ``Case.baselines_path``;
    reused when there. BM3D gets the true σ for Gaussian noise and estimates it otherwise."""
    for case in cases:
        path = case.baselines_path(setting.out_dir)
        if path.is_file():
            continue
        setting.out_dir.mkdir(parents=True, exist_ok=True)
        cfg = setting.config(case.run(PAPER_VARIANTS[0], observe=True))  # any variant's noise
        observation = observe(cfg.resolved())
        sigma = case.nlevel if case.noise == "gaussian" else None
        print(f"baselines on {case.label}", flush=True)
        rows = baselines.evaluate(observation.y, observation.clean, sigma)
        save_json(path, {"case": case.label, "sigma_given": sigma, "baselines": rows})


def find_masks(mask_search: MaskSearch, setting: Setting, executor: Any = None,
               wait: bool = False) -> str:  # fmt: skip
    """The set's mask search (``experiments.imp``): found once, before the runs that train its
    mask, and reused. Here, or with an ``executor`` as one job (``launcher.Script``), which a
    later call finds in flight. Returns "ready" when the mask is there (found earlier, here, or
    by a job waited for), "submitted" or "in flight", or "failed" (the search failed, or the
    folder holds one made with other settings: said in one line)."""
    search = mask_search.search(setting.profile, setting.out_dir, setting.data_dir)
    gpu = None if setting.gpus is None else setting.gpus[0]
    cfg = dataclasses.replace(search.cfg, gpu=gpu, fast=setting.fast, overwrite=True)
    search = dataclasses.replace(search, cfg=cfg)  # over the rounds a killed search left
    if search.record.is_file():
        try:
            search.same_as_record()
        except InputError as err:
            print(f"error: {err}", file=sys.stderr)
            return "failed"
        return "ready"
    log = setting.out_dir / f"{cfg.ckpt}.log"
    if executor is None:
        print(f"mask search {cfg.ckpt}", flush=True)
        try:
            run_search(search)
        except InputError as err:
            print(f"error: {err}", file=sys.stderr)
            return "failed"
        return "ready"
    setting.out_dir.mkdir(parents=True, exist_ok=True)
    busy = bool(launcher.in_flight(executor, [cfg.ckpt]))
    if busy:
        job = launcher.job_of(executor, cfg.ckpt)
    else:
        job = launcher.submit_script(executor, cfg.ckpt, launcher.Script(search), log)
    if not wait:
        return "in flight" if busy else "submitted"
    launcher.wait(executor, [job])
    if not search.record.is_file():
        print(f"error: the mask search {cfg.ckpt} failed: see {log}", file=sys.stderr)
        return "failed"
    return "ready"


def submit_all(todo: Sequence[Run], setting: Setting, batch: int, executor: Any, wait: bool,
               outcome: dict[str, list[str]]) -> dict[str, list[str]]:  # fmt: skip
    """Submit the runs of ``todo`` as one job array (``experiments.launcher``), but those whose
    job from an earlier call is still queued or running (in flight). Without ``wait`` the others
    are "submitted"; with it, they are started or failed once their jobs have ended."""
    configs = {r.ckpt(setting.profile): setting.config(r) for r in todo}
    resuming = {name for name, cfg in configs.items() if has_checkpoint(cfg)}
    busy = launcher.in_flight(executor, list(configs))
    for image in sorted({r.image for r in todo if r.ckpt(setting.profile) not in busy}):
        if image in PAPER_IMAGES:  # fetched here, once: the jobs' nodes may have no internet
            fetch_paper_image(image, setting.data_dir)
    jobs = launcher.submit(executor, [c for k, c in configs.items() if k not in busy], batch)
    outcome["in flight"] = busy
    if not wait:
        return outcome | {"submitted": [name for name in configs if name not in busy]}
    launcher.wait(executor, jobs)
    for name, cfg in configs.items():
        if name not in busy:
            done = "resumed" if name in resuming else "started"
            outcome[done if ended(cfg) else "failed"].append(name)
    return outcome


def has_checkpoint(cfg: RunConfig) -> bool:
    return RunDir(Path(cfg.out_dir), cfg.ckpt).path("state").is_file()


def reproduce(names: list[str], setting: Setting, figs_dir: Path = ROOT / "figs",
              table_dir: Path = ROOT / "docs", *, jobs: int = 1, batch: int = 1,
              cases: dict[str, tuple[Case, ...]] | None = None, executor: Any = None,
              wait: bool = False, collect: bool = False
              ) -> tuple[dict[str, list[str]], list[Path]]:  # fmt: skip
    """Run the runs of the named figures that are missing, then draw them and write the tables.

    With a submitit ``executor`` the runs are submitted (``run_all``) and the figures drawn only
    when none is left to a job. ``collect``: run nothing, draw what has finished, and name the
    others as missing. ``cases`` may shrink the sets (tests do); returns the outcome and the
    files written."""
    runs = figure_runs(names, cases)
    profile = setting.profile
    if collect:
        outcome, todo = sort_runs(runs, setting)
        outcome = {"reused": outcome["reused"], "missing": [r.ckpt(profile) for r in todo],
                   "failed": outcome["failed"]}  # fmt: skip
    else:
        if "compare" in check_names(names):
            run_baselines((DEFAULT_CASES | (cases or {}))["compare"], setting)
        masked, search = [r for r in runs if r.needs_mask()], "ready"
        if masked:
            search = find_masks(LIP_MASKS, setting, executor, wait)
        if search != "ready":  # the runs that train the mask wait for it
            runs = [r for r in runs if not r.needs_mask()]
        outcome = run_all(runs, setting, jobs, batch, executor, wait)
        if search == "failed":  # so are the runs of its mask
            outcome["failed"] += [LIP_MASKS.ckpt(profile), *(r.ckpt(profile) for r in masked)]
        elif search != "ready":
            outcome[search] = [*outcome.get(search, []), LIP_MASKS.ckpt(profile)]
            outcome["waiting for the mask"] = [r.ckpt(profile) for r in masked]
    if outcome.get("submitted") or outcome.get("in flight"):
        return outcome, []
    files = plots.draw(names, profile, setting.out_dir, figs_dir, table_dir, cases)
    return outcome, files
