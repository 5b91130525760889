"""The one runner: RunConfigs in, runs ended (or reused, or refused in one line) out.

``run(configs)`` is what every driver calls: the command line (denoising.py), the figure sets
(reproduce.py), the lottery prior's evaluation, the benchmarks, a Slurm job. For each config it

1. checks the settings and reads the observation (``engine.data.observe``), checks that the run
   fits the device's memory, all before anything is written (an ``InputError`` is one line on
   stderr and exit code 2 for that config);
2. takes the run's lock and decides, by the policy, whether it starts, resumes, is reused or is
   refused (``utils.rundir.RunDir.claim``: the one implementation of reuse and resume);
3. runs the configs that can share a loop (same shapes, same shared settings, same start) as one
   batch (``engine.loop.fit_batch``), as large as the memory allows, and writes each run's
   outputs (``engine.outputs``).

Exit codes: 0 ended (finished or stopped by its rule), 1 diverged, 2 refused, 3 out of memory; a
reused run's is that of how it ended. ``recover`` is the same for one config, as a Python call
that returns the image.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.config import RunConfig, to_argv
from engine.data import observe
from engine.device import check_fits, fitting_batch, pick_device, use_device
from engine.loop import build_model, fit_batch, steps
from engine.outputs import DivergedError, Written, describe, finish, save_inputs
from tasks import TASKS, Observation
from tasks.task import stack
from utils import InputError, memory
from utils.images import to_float_chw
from utils.io import TEMPORARY_EXTRA, check_writable, name_limit
from utils.rundir import FILES, RunDir, RunLock


@dataclass
class Job:
    """One run, ready for the loop: its settings (resolved), folder (locked), observation and
    the state it resumes from."""

    cfg: RunConfig
    rundir: RunDir
    observation: Observation
    state: dict | None
    device: torch.device
    device_name: str
    lock: RunLock
    started: float = 0.0  # when its loop began (time.time())

    def batch_key(self) -> tuple:
        """Runs with equal keys can share one loop."""
        obs, start = self.observation, 0 if self.state is None else self.state["iteration"]
        return (str(self.device), obs.y.shape, obs.x_shape, obs.clean is None,
                tuple(sorted(obs.inputs)), start, self.cfg.shared())  # fmt: skip


@dataclass
class Outcome:
    """What became of one config: its exit code, what was done, and (when it ran now and
    ended) what it wrote."""

    cfg: RunConfig
    code: int  # 0 ended (or reused, having ended so), 1 diverged, 2 refused, 3 out of memory
    action: str  # "started", "resumed", "reused" or "refused"
    written: Written | None = field(default=None, repr=False)


def policy_of(cfg: RunConfig) -> str:
    """What to do with an earlier run of the same name (``utils.rundir.POLICIES``): --resume,
    --overwrite, --reuse ("auto"), or refuse it."""
    return ("resume" if cfg.resume else "overwrite" if cfg.overwrite else
            "auto" if cfg.reuse else "new")  # fmt: skip


def run(
    configs: Sequence[RunConfig],
    *,
    max_batch: int = 1,
    progress: bool = False,
    wait: float = 0.0,
    arrays: Sequence[np.ndarray | None] | None = None,
) -> list[Outcome]:
    """Run ``configs``: up to ``max_batch`` that can share a loop at a time. What happens to an
    earlier run of the same name is each config's --resume, --overwrite or --reuse
    (``policy_of``); ``wait``: seconds to wait for a run that another process holds;
    ``arrays``: observed images given in memory, one per config (or None). Returns each config's
    outcome, in order."""
    outcomes: list[Outcome | None] = [None] * len(configs)
    groups: dict[tuple, list[tuple[int, Job]]] = {}
    jobs: list[Job] = []
    try:
        for i, cfg in enumerate(configs):
            try:
                prepared = prepare(cfg, wait, None if arrays is None else arrays[i])
            except InputError as err:
                print(f"error: {err}", file=sys.stderr)
                outcomes[i] = Outcome(cfg, 2, "refused")
                continue
            if isinstance(prepared, Outcome):
                outcomes[i] = prepared
                continue
            jobs.append(prepared)
            groups.setdefault(prepared.batch_key(), []).append((i, prepared))
        for group in groups.values():
            first = group[0][1]
            size = fitting_batch(first.cfg, first.observation.x_shape, first.device,
                                 min(max_batch, len(group)))  # fmt: skip
            for start in range(0, len(group), size):
                part = group[start : start + size]
                if len(part) > 1:
                    print(f"batch of {len(part)}: {', '.join(j.cfg.ckpt for _, j in part)}",
                          flush=True)  # fmt: skip
                ended = fit_jobs([j for _, j in part], progress)
                for (i, job), (code, written) in zip(part, ended, strict=True):
                    action = "started" if job.state is None else "resumed"
                    outcomes[i] = Outcome(configs[i], code, action, written)
    finally:
        for job in jobs:
            job.lock.release()
    return outcomes  # type: ignore[return-value]


def run_listed(configs: Sequence[RunConfig], *, max_batch: int = 1, dry_run: bool = False) -> int:
    """A benchmark's runs: with ``dry_run`` their denoising.py command lines printed, else run
    (``run``: ended ones reused, killed ones resumed); 1, naming them, when any failed."""
    if dry_run:
        print("\n".join("python denoising.py " + shlex.join(to_argv(c)) for c in configs))
        return 0
    if failed := [o.cfg.ckpt for o in run(configs, max_batch=max_batch) if o.code]:
        print(f"error: {len(failed)} runs failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def ended(cfg: RunConfig) -> bool:
    """Whether the run of ``cfg`` has ended with these settings (its data is not read);
    InputError when its folder holds a run of that name made with other settings."""
    cfg = cfg.resolved()
    return RunDir(Path(cfg.out_dir), cfg.ckpt).ended(cfg.defining(), None, cfg.num_iter)


def recover(cfg: RunConfig, observed: np.ndarray | None = None) -> Written:
    """One run from Python: ``cfg`` as the command line would run it (its --resume,
    --overwrite or --reuse decide about an earlier run of its name), on ``cfg``'s images or on
    ``observed``, an observed image in memory ((C, H, W), (H, W, C) or (H, W); floats in
    [0, 1], or 8- or 16-bit integers). Returns the image, the history and the report;
    InputError when the run is refused, DivergedError when it diverged, MemoryError when it ran
    out of memory."""
    array = None if observed is None else as_chw(observed)
    (outcome,) = run([cfg], arrays=[array])
    if outcome.code == 2:
        raise InputError(f"{cfg.ckpt}: refused (the line above says why)")
    if outcome.code == 1:
        raise DivergedError(f"{cfg.ckpt}: the loss became NaN or infinite")
    if outcome.code == 3:
        raise MemoryError(f"{cfg.ckpt}: out of memory")
    return outcome.written or read_written(RunDir(Path(cfg.out_dir), cfg.ckpt))


def as_chw(array: np.ndarray) -> np.ndarray:
    """An image array as float32 (C, H, W) in [0, 1] (InputError when it is not an image)."""
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.floating):
        return to_float_chw(array, "the observed array")
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3 and array.shape[0] not in (1, 3) and array.shape[-1] in (1, 3):
        array = np.moveaxis(array, -1, 0)
    if array.ndim != 3 or array.shape[0] not in (1, 3):
        raise InputError(f"an observed image is (C, H, W), (H, W, C) or (H, W) with 1 or 3 "
                         f"channels, got {array.shape}")  # fmt: skip
    if not (np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1):
        raise InputError("an observed float image must have values in [0, 1]")
    return np.ascontiguousarray(array, np.float32)


def read_written(rundir: RunDir) -> Written:
    """A run that ended earlier, read back from its folder (the image from its 8-bit PNG)."""
    image = rundir.image("last")
    image = image[None] if image.ndim == 2 else np.moveaxis(image, -1, 0)
    columns = rundir.history()
    rows = [dict(zip(columns, values, strict=True))
            for values in zip(*columns.values(), strict=True)]  # fmt: skip
    return Written(image.astype(np.float32), rows, rundir.config()["report"])


def checked(cfg: RunConfig, array: np.ndarray | None = None
            ) -> tuple[RunConfig, Observation, torch.device, str]:  # fmt: skip
    """Every check a run makes before it writes anything (InputError): its settings, folder and
    names, its observation (read here), the device and its memory. The settings resolved, the
    observation, the device and its description."""
    cfg.check()
    device, device_name = pick_device(cfg.gpu)
    cfg = cfg.resolved()
    check_paths(cfg)
    observation = observe(cfg, array)
    check_fits(cfg, observation.x_shape, device, device_name)
    return cfg, observation, device, device_name


def prepare(cfg: RunConfig, wait: float, array: np.ndarray | None) -> Job | Outcome:
    """Check the settings, read the observation, claim the run's folder and write the inputs;
    an Outcome when there is nothing to run (reused, or already ended)."""
    cfg, observation, device, device_name = checked(cfg, array)
    rundir = RunDir(Path(cfg.out_dir), cfg.ckpt)
    if policy_of(cfg) == "resume" and not Path(cfg.out_dir).is_dir():  # refused: no checkpoint
        rundir.resumable(cfg.defining(), observation.identity, cfg.num_iter, device.type)
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    lock = rundir.lock(wait)
    try:
        action, state = rundir.claim(cfg.defining(), observation.identity, cfg.num_iter,
                                     policy_of(cfg), device.type)  # fmt: skip
        ended = ended_message(cfg, rundir, action, state)
        if ended is not None:
            print(ended, flush=True)
            lock.release()
            diverged = rundir.config()["report"]["status"] == "diverged"
            return Outcome(cfg, 1 if diverged else 0, "reused")  # its exit code, as it ended
        if state is None:
            save_inputs(rundir, cfg, observation)
        else:
            print(f"{cfg.ckpt}: resuming from iteration {state['iteration']}", flush=True)
    except BaseException:
        lock.release()
        raise
    return Job(cfg, rundir, observation, state, device, device_name, lock)


def ended_message(cfg: RunConfig, rundir: RunDir, action: str, state: dict | None
                  ) -> str | None:  # fmt: skip
    """Why there is nothing to run (the run has ended earlier), or None."""
    if action == "reuse":
        status = rundir.config()["report"]["status"]
        return f"{cfg.ckpt}: ended earlier ({status}) with these settings; reused"
    if state is None:
        return None
    if state["iteration"] == cfg.num_iter:
        if rundir.config() is None:
            raise InputError(f"{cfg.ckpt}: its checkpoint is at the last iteration but its "
                             "outputs were never written; run it with --overwrite")  # fmt: skip
        return f"{cfg.ckpt}: already finished at iteration {cfg.num_iter}; outputs are kept"
    if state["stopped_at"] is not None:
        return (f"{cfg.ckpt}: already stopped by --stop {cfg.stop} at iteration "
                f"{state['stopped_at']}; outputs are kept (a run with --stop_observe and another "
                "--ckpt shows what comes after)")  # fmt: skip
    return None


def check_paths(cfg: RunConfig) -> None:
    """--out_dir must be a folder (or one that can be made) and the run's file names must fit the
    file system's limit on a name (with atomic writes' temporary names)."""
    check_writable(cfg.out_dir, "--out_dir", folder=True)
    out = Path(cfg.out_dir)
    folder = next(p for p in (out, *out.parents, Path(".")) if p.exists())
    longest = max(len(f"{cfg.ckpt}_{name}".encode()) for name in FILES.values()) + TEMPORARY_EXTRA
    limit = name_limit(folder)
    if longest > limit:
        spare = limit - (longest - len(cfg.ckpt.encode()))
        raise InputError(f"--ckpt is {len(cfg.ckpt)} characters: its file names would exceed the "
                         f"file system's {limit}; use at most {spare}")  # fmt: skip


def fit_jobs(jobs: list[Job], progress: bool) -> list[tuple[int, Written | None]]:
    """Run jobs that share a batch key in one loop; write each run's outputs. Each run's exit
    code and what it wrote."""
    first, cfg = jobs[0], jobs[0].cfg
    use_device(first.device)
    task, seeds = TASKS[cfg.task], [j.cfg.seed for j in jobs]
    operator = task.operator(cfg, stack([j.observation.inputs for j in jobs]), seeds)
    model = build_model(cfg, first.observation.x_shape, seeds, operator)
    in_operator = sum(p.numel() for p in getattr(model.operator, "trainable", list)())
    parameters = model.prior.count_trained() + in_operator // len(jobs)
    step = steps(model, cfg)
    if cfg.deterministic and first.device.type == "cuda":
        print("--deterministic: torch has no deterministic CUDA backward for reflection padding "
              "or bilinear upsampling, so runs may still differ in the last bits (and so in "
              "PSNR, slightly)", flush=True)  # fmt: skip
    for job in jobs:
        print(describe(job.cfg, job.observation, parameters, step), flush=True)
        job.started = time.time()  # a run's wall time is its batch's, not the batches' before
    on = lambda arrays: torch.from_numpy(np.stack(arrays)).to(first.device)  # noqa: E731
    has_clean = first.observation.clean is not None
    try:
        results = fit_batch(
            model.to(first.device), on([j.observation.y for j in jobs]), cfg, seeds=seeds,
            clean=on([j.observation.clean for j in jobs]) if has_clean else None,
            states=None if first.state is None else [j.state for j in jobs],
            checkpoint=lambda states: [save_state(j, s) for j, s in zip(jobs, states, strict=True)],
            progress=progress,
        )  # fmt: skip
    except RuntimeError as err:  # torch.OutOfMemoryError included
        if not memory.is_out_of_memory(err):
            raise
        failure = memory.describe_failure(err)
        del err, model  # the tensors the failed iteration held go with its traceback
        return [(out_of_memory(job, failure), None) for job in jobs]
    ended = []
    for k, (job, result) in enumerate(zip(jobs, results, strict=True)):
        context = {"device": job.device_name, "batch_size": len(jobs), "parameters": parameters,
                   "steps": step, "started": job.started}  # fmt: skip
        extras = task.outputs(model.operator, k, job.observation)
        try:
            ended.append((0, finish(job.rundir, job.cfg, job.observation, result, extras,
                                    context)))  # fmt: skip
        except DivergedError as err:
            print(f"error: {err}", file=sys.stderr)
            ended.append((1, None))
    return ended


def save_state(job: Job, state: dict | None) -> None:
    if state is not None:  # None: the run diverged, its last good checkpoint is kept
        job.rundir.save_state(job.cfg.defining(), job.observation.identity, state)


def out_of_memory(job: Job, failure: str) -> int:
    """Report a run that ran out of memory in one line, like a divergence (exit 3). A run that
    has a checkpoint keeps it, to be resumed with settings that fit; a run that has none has
    nothing to resume, and the inputs it wrote are removed."""
    cfg, rundir = job.cfg, job.rundir
    elsewhere = "a GPU with more free memory" if job.device.type == "cuda" else "more free memory"
    options = "--low_memory" if not cfg.low_memory else elsewhere
    if rundir.path("state").exists():
        iteration = rundir.state()["iteration"]
        kept = (f"its last checkpoint (iteration {iteration}) is kept: continue it with "
                f"--resume and {options}")  # fmt: skip
    else:
        for path in rundir.existing():
            path.unlink()
        kept = (f"it had no checkpoint and nothing is kept; try {options}, a smaller --crop "
                "or --width")  # fmt: skip
    print(f"error: {cfg.ckpt}: out of memory ({failure}); {kept}", file=sys.stderr)
    return 3
