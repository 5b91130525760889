"""Run sets of runs (``RunConfig``s) as one Slurm job array, through submitit.

reproduce.py hands its missing runs here with ``--launcher slurm``: every array task runs one
run (with ``--batch N``, up to N compatible ones in one loop) through the runner
(``engine.run``) in its own Python process, on the GPUs Slurm gives it. The runs carry
``--reuse``: a task that reaches its time limit, or is preempted, is requeued, and every start
of a task goes on with its runs from their folders (from the last checkpoint: at most
``--save_every`` iterations are lost), waiting a while for the lock of a run its previous
incarnation still holds. Nothing here schedules anything: submitit writes the sbatch script,
submits the array and requeues; this module only turns runs into its jobs.

Which jobs are still queued or running comes from ``squeue`` (``active``), not from submitit's
job states, which ask ``sacct``: a cluster without accounting (no slurmdbd: ``sacct`` fails) has
none, and there submitit sees every job as UNKNOWN and a job cancelled before it wrote a result
as never done. squeue knows every queued or running job, and an ended one for MinJobAge seconds
(300 by default); what it cannot tell after that is how a job ended (completed, failed, timed
out, cancelled). Nothing here needs it: whether a run has ended is read from its folder
(``engine.runner.ended``), and a job's log says why it stopped.

Files, in the executor's folder (reproduce.py: ``OUT_DIR/submitit``): submitit's
``JOBID_submission.sh`` (the sbatch script), ``JOBID_TASK_0_log.out`` (each task's output, stdout
and stderr), its pickles, and ``jobs.json`` (the last job of every run, so that a rerun leaves a
run whose job is still queued or running to it). Beside the run's outputs, ``OUT_DIR/CKPT.log`` is
a link to its job's log.

submitit is imported only when a job is submitted (``pip install -e ".[slurm]"``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.config import RunConfig, to_argv
from utils import InputError
from utils.io import save_json
from utils.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent
RECORD = "jobs.json"  # run name -> the id of its last job, in the executor's folder
MAX_TIMEOUTS = 10  # requeues after a time-out per job (preemptions are not counted)
LOCK_WAIT = 120.0  # seconds a requeued task waits for the runs its previous incarnation holds
# The flags of reproduce.py that set a Slurm parameter, their submitit names and defaults.
FLAGS = {
    "partition": ("partition", None),  # None: the cluster's default partition
    "gpus_per_job": ("gpus_per_node", 1),
    "cpus_per_job": ("cpus_per_task", 4),
    "timeout_min": ("time", 240),
    "mem_gb": ("mem", 32),
    "array_parallelism": ("array_parallelism", 64),
}
# Slurm states of a job that still holds its runs (a rerun does not submit them again); every
# other state (COMPLETED, FAILED, CANCELLED, TIMEOUT, ...) is an end, and so is a job squeue no
# longer knows.
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
          "COMPLETING", "SUSPENDED", "STOPPED", "RESIZING", "SIGNALING", "STAGE_OUT",
          "RESV_DEL_HOLD"}  # fmt: skip
POLL = 2.0  # seconds between two looks at the queue while waiting for jobs


def import_submitit() -> Any:
    """The submitit module, or a one-line InputError saying how to install it."""
    try:
        import submitit
    except ImportError:
        raise InputError('the Slurm launcher needs submitit: pip install -e ".[slurm]"') from None
    return submitit


def read_options(path: Path | None, flags: dict[str, Any]) -> dict[str, Any]:
    """The Slurm parameters: FLAGS' defaults, then the JSON file ``path`` (keys: the flags'
    names, or any other parameter of submitit's SlurmExecutor, e.g. account, qos, constraint,
    setup), then the flags given (None: not given). Keys are reproduce.py's flag names."""
    options = {name: default for name, (_, default) in FLAGS.items()}
    if path is not None:
        try:
            loaded = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise InputError(f"--slurm_config {path}: {err}") from None
        if not isinstance(loaded, dict):
            raise InputError(f"--slurm_config {path}: expected a JSON object of parameters")
        renamed = {slurm: flag for flag, (slurm, _) in FLAGS.items() if slurm != flag}
        for key in loaded:
            if key in renamed:
                raise InputError(f"--slurm_config {path}: write {key!r} as {renamed[key]!r}")
        options |= loaded
    options |= {name: value for name, value in flags.items() if value is not None}
    for name in ("gpus_per_job", "cpus_per_job", "timeout_min", "mem_gb", "array_parallelism"):
        value = options[name]
        least = 0 if name == "gpus_per_job" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InputError(f"--{name} must be an integer >= {least}, got {value!r}")
    return options


def slurm_parameters(options: dict[str, Any]) -> dict[str, Any]:
    """submitit SlurmExecutor parameters from ``read_options``' result. Every task runs in the
    repository (its jobs unpickle ``launcher``), with as many CPU threads as it has CPUs, and
    writes stdout and stderr to one log."""
    params = {FLAGS[k][0] if k in FLAGS else k: v for k, v in options.items() if v is not None}
    params["mem"] = f"{params['mem']}GB"
    if not params["gpus_per_node"]:  # CPU jobs: no GPU request at all
        del params["gpus_per_node"]
    params["setup"] = [
        *params.get("setup", []),
        f"cd {shlex.quote(str(ROOT))}",
        "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}",
    ]
    return {"job_name": "reproduce", "stderr_to_stdout": True} | params


def slurm_executor(folder: Path, options: dict[str, Any]) -> Any:
    """A submitit SlurmExecutor writing to ``folder``; InputError without submitit or Slurm, or
    for a parameter submitit does not know."""
    submitit = import_submitit()
    try:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=MAX_TIMEOUTS)
    except RuntimeError as err:  # no srun on the PATH
        raise InputError(f"--launcher slurm: {err}") from None
    try:
        executor.update_parameters(**slurm_parameters(options))
    except ValueError as err:  # its message lists every valid parameter, over many lines
        first = str(err).splitlines()[0]
        raise InputError(f"--launcher slurm: {first} (see submitit's SlurmExecutor)") from None
    return executor


@dataclasses.dataclass(frozen=True)
class Runs:
    """One array task: runs (``RunConfig``s with ``--reuse``) run in this process through the
    runner, up to ``max_batch`` that can share a loop batched, as ``reproduce.py --batch``.

    Every start of the task goes on with each run from what its folder holds, so a task
    started again in any way (requeued by submitit after its signal, or by Slurm itself after a
    preemption or a node failure) resumes its runs from their last checkpoints. submitit calls
    ``checkpoint`` on its signal (a time limit close, or a preemption where the cluster sends it)
    and requeues what it returns; a callable with a ``checkpoint`` method is what submitit's
    ``helpers.Checkpointable`` is, not imported here so that the module loads without submitit.
    """

    configs: tuple[RunConfig, ...]
    max_batch: int = 1

    @property
    def names(self) -> list[str]:
        return [cfg.ckpt for cfg in self.configs]

    def __call__(self) -> list[int]:
        """Run the runs; their exit codes (0 ended, 1 diverged). Raises when a run failed
        otherwise, so that the task ends FAILED in Slurm."""
        from engine import run

        for cfg in self.configs:
            print("python denoising.py " + shlex.join(to_argv(cfg)), flush=True)
        codes = [o.code for o in run(list(self.configs), max_batch=self.max_batch,
                                     wait=LOCK_WAIT)]  # fmt: skip
        failed = [f"{n} (exit {c})" for n, c in zip(self.names, codes, strict=True) if c > 1]
        if failed:
            raise RuntimeError(f"failed runs: {', '.join(failed)}")
        return codes

    def checkpoint(self) -> Any:
        """This task again: submitit requeues it, and it goes on from the runs' checkpoints."""
        from submitit.helpers import DelayedSubmission

        print(f"requeued: {', '.join(self.names)} go on from their checkpoints", flush=True)
        return DelayedSubmission(self)


@dataclasses.dataclass(frozen=True)
class Script:
    """One job that calls ``stage()``: a set's preliminary stage, such as the lottery prior's
    mask search (``experiments.imp.Search``). The stage has no checkpoint of its own: a requeued
    job runs it again from the start."""

    stage: Callable[[], int]

    def __call__(self) -> int:
        print(f"stage {self.stage!r}", flush=True)
        code = self.stage()
        if code != 0:
            raise RuntimeError(f"the stage exited with {code}")
        return code

    def checkpoint(self) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


def submit_script(executor: Any, name: str, script: Script, log: Path) -> Any:
    """Submit ``script`` as one job, recorded in ``jobs.json`` as ``name`` (so that ``in_flight``
    and ``job_of`` find it), its log linked as ``log``. Returns the job."""
    Path(executor.folder).mkdir(parents=True, exist_ok=True)
    job = executor.submit(script)
    record = read_record(Path(executor.folder))
    record[name] = job.job_id
    link_log(log, job)
    save_json(Path(executor.folder) / RECORD, record)
    print(f"submitted {name}: job {job.job_id}; log {log}", flush=True)
    return job


def job_of(executor: Any, name: str) -> Any:
    """The last job recorded for ``name`` in ``jobs.json``."""
    job_id = read_record(Path(executor.folder))[name]
    return executor.job_class(folder=executor.folder, job_id=job_id)


def link_log(log: Path, job: Any) -> None:
    """``log`` (OUT_DIR/CKPT.log) as a link to the job's output."""
    log.unlink(missing_ok=True)
    log.symlink_to(os.path.relpath(job.paths.stdout, log.parent))


def tasks(configs: list[RunConfig], max_batch: int) -> list[Runs]:
    """The array's tasks: one run each, or up to ``max_batch`` that differ only in per-run
    settings (image, level, seed, name, ...), so that they can share a loop."""
    groups: dict[tuple, list[RunConfig]] = {}
    for cfg in configs:
        groups.setdefault(cfg.shared() if max_batch > 1 else (cfg.ckpt,), []).append(cfg)
    return [Runs(tuple(group[i : i + max_batch]), max_batch)
            for group in groups.values() for i in range(0, len(group), max_batch)]  # fmt: skip


def in_flight(executor: Any, names: list[str]) -> list[str]:
    """Those of ``names`` whose last job (in ``jobs.json``) is still queued or running."""
    record = read_record(Path(executor.folder))
    jobs = {name: record[name] for name in names if name in record}
    busy = active(executor, [executor.job_class(folder=executor.folder, job_id=job_id)
                             for job_id in sorted(set(jobs.values()))])  # fmt: skip
    return [name for name, job_id in jobs.items() if job_id in busy]


def active(executor: Any, jobs: list[Any]) -> set[str]:
    """The ids of those of submitit's ``jobs`` that are still queued or running: on Slurm, as
    squeue says (``squeue_states``); with submitit's local executor (the tests'), those whose
    process (known to the job objects that submitted them) has not ended."""
    if isinstance(executor, import_submitit().SlurmExecutor):
        states = squeue_states([job.job_id for job in jobs])
        return {job_id for job_id, state in states.items() if state in ACTIVE}
    return {job.job_id for job in jobs if not job.done()}


def squeue_states(job_ids: list[str]) -> dict[str, str]:
    """Each job's state as squeue gives it (with every state shown, array tasks one by one):
    PENDING, RUNNING, COMPLETED, ...; "" for a job squeue does not know (it ended more than
    MinJobAge seconds ago). InputError when squeue cannot answer (no squeue, no slurmctld)."""
    if not job_ids:
        return {}
    arrays = sorted({job_id.split("_")[0] for job_id in job_ids})
    command = ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T",
               f"--jobs={','.join(arrays)}"]  # fmt: skip
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise InputError(f"--launcher slurm: squeue did not answer ({err})") from None
    if out.returncode != 0 and "Invalid job id" not in out.stderr:  # all of them forgotten
        said = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
        raise InputError(f"--launcher slurm: squeue could not tell the jobs' states: {said}")
    known = dict(line.split("|", 1) for line in out.stdout.split() if "|" in line)
    return {job_id: known.get(job_id, "") for job_id in job_ids}


def read_record(folder: Path) -> dict[str, str]:
    path = folder / RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


def submit(executor: Any, configs: list[RunConfig], max_batch: int = 1) -> list[Any]:
    """Submit the runs as one job array of ``tasks``; records each run's job in ``jobs.json``
    and links ``OUT_DIR/CKPT.log`` to its job's log. Returns the jobs."""
    todo = tasks(configs, max_batch)
    if not todo:
        return []
    Path(executor.folder).mkdir(parents=True, exist_ok=True)
    jobs = executor.submit_array(todo)
    record = read_record(Path(executor.folder))
    for task, job in zip(todo, jobs, strict=True):
        for cfg in task.configs:
            record[cfg.ckpt] = job.job_id
            link_log(RunDir(Path(cfg.out_dir), cfg.ckpt).log, job)
    save_json(Path(executor.folder) / RECORD, record)
    array = jobs[0].job_id.split("_")[0]
    print(f"submitted {len(configs)} runs: job {array}, {len(jobs)} task(s); watch: squeue -j "
          f"{array}; logs: {executor.folder}/, linked as OUT_DIR/CKPT.log", flush=True)  # fmt: skip
    return jobs


def wait(executor: Any, jobs: list[Any]) -> None:
    """Wait until every job has ended (finished, failed, cancelled, or forgotten by Slurm: see
    ``active``). On Ctrl-C the jobs go on; the interrupt is raised again."""
    try:
        while jobs := [job for job in jobs if job.job_id in active(executor, jobs)]:
            time.sleep(POLL)
    except KeyboardInterrupt:
        print("\nstopped waiting: the jobs go on (squeue); collect their runs later with "
              "--collect", file=sys.stderr)  # fmt: skip
        raise
