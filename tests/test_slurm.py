"""The launcher on a real Slurm: a one-node cluster without accounting (tests/slurm/up.sh; .ci/run
starts it when it can). Skipped unless SLURM_CONF is set and sbatch answers.

A tiny set goes through the launcher as reproduce.py --launcher slurm sends it (a submitit
SlurmExecutor, one array task per run). A second submit while its jobs are queued or running
leaves them alone; one task is requeued mid-run with ``scontrol requeue`` (Slurm ends it, then
starts it again); every run ends with the very history of a run made directly, here."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from engine import run
from experiments import launcher
from experiments.driver import Setting
from experiments.driver import reproduce as run_set
from experiments.sets import Case, figure_runs
from tests.conftest import ROOT, assert_same_run, tiny_profile
from utils.rundir import RunDir


def slurm_answers() -> bool:
    if not os.environ.get("SLURM_CONF") or shutil.which("sbatch") is None:
        return False
    try:
        probe = subprocess.run(["sbatch", "--test-only", "--wrap", "true"], capture_output=True,
                               timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(
        not slurm_answers(),
        reason="no Slurm: SLURM_CONF unset or sbatch fails (tests/slurm/up.sh starts one)",
    ),  # fmt: skip
]
ONE_CASE = {"fig3": (Case("cat", 0.5),), "fig4": ()}  # DIP-L1 and DOP on one bundled image


def slurm_setting(name: str) -> int:
    """An integer setting of the running cluster (``scontrol show config``)."""
    shown = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                           check=True).stdout  # fmt: skip
    return int(re.search(rf"^{name}\s*=\s*(\d+)", shown, re.MULTILINE).group(1))


def wait_for(condition, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def cancel_at_end(tmp_path: Path):
    """Whatever the test leaves in the queue (it failed half-way) is cancelled."""
    yield
    record = tmp_path / "jobs" / "submitit" / "jobs.json"
    if record.is_file():
        ids = sorted({job_id.split("_")[0] for job_id in json.loads(record.read_text()).values()})
        subprocess.run(["scancel", *ids], capture_output=True, timeout=30)


def test_a_set_on_slurm_survives_a_requeue_and_a_second_submit(
    tmp_path: Path, monkeypatch, one_thread, cancel_at_end
) -> None:
    monkeypatch.chdir(ROOT)
    # Long enough that a task requeued at its first checkpoint is still running when Slurm kills
    # it, KillWait seconds after its SIGTERM (which submitit's job ignores).
    iters = 300 + 150 * slurm_setting("KillWait")
    tiny = tiny_profile(iters)
    kw = dict(figs_dir=tmp_path / "figs", table_dir=tmp_path / "docs", cases=ONE_CASE)
    runs = figure_runs(["fig3"], ONE_CASE)
    names = [r.ckpt(tiny) for r in runs]
    out = tmp_path / "jobs"
    options = launcher.read_options(None, {"gpus_per_job": 0, "cpus_per_job": 1, "mem_gb": 1,
                                           "timeout_min": 15})  # fmt: skip
    executor = launcher.slurm_executor(out / "submitit", options)
    setting = Setting(tiny, out, tmp_path, ("cpu",))
    outcome, files = run_set(["fig3"], setting, executor=executor, **kw)
    assert sorted(outcome["submitted"]) == sorted(names) and not files
    record = json.loads((out / "submitit" / "jobs.json").read_text())
    jobs = [executor.job_class(folder=executor.folder, job_id=record[name]) for name in names]
    assert launcher.active(executor, jobs) == {job.job_id for job in jobs}

    # A second submit while they are queued or running submits nothing.
    outcome, files = run_set(["fig3"], setting, executor=executor, **kw)
    assert sorted(outcome["in flight"]) == sorted(names) and not outcome["submitted"]
    assert json.loads((out / "submitit" / "jobs.json").read_text()) == record
    assert len(list((out / "submitit").glob("*_submission.sh"))) == 1

    # The first run's task, requeued at its first checkpoint: Slurm ends it and starts it again.
    first = RunDir(out, names[0])
    wait_for(first.path("state").is_file, "the first checkpoint")
    assert first.config() is None, "the run ended before the test could requeue it"
    requeue = subprocess.run(["scontrol", "requeue", jobs[0].job_id], capture_output=True,
                             text=True)  # fmt: skip
    assert requeue.returncode == 0, requeue.stderr
    direct = Setting(tiny, tmp_path / "direct", tmp_path, ("cpu",))  # meanwhile, here
    assert [o.code for o in run([direct.config(r) for r in runs])] == [0, 0]
    wait_for(lambda: not launcher.active(executor, jobs), "the jobs to end")
    assert launcher.squeue_states([job.job_id for job in jobs]) == dict.fromkeys(
        [job.job_id for job in jobs], "COMPLETED")  # fmt: skip
    shown = subprocess.run(["scontrol", "show", "job", jobs[0].job_id], capture_output=True,
                           text=True).stdout  # fmt: skip
    assert "Restarts=1" in shown, shown
    log = first.log.read_text()
    assert "DUE TO JOB REQUEUE" in log and re.search(r"resuming from iteration [1-9]", log), log

    # Every run has ended, with the history of the direct run; the figure is drawn.
    outcome, files = run_set(["fig3"], setting, executor=executor, wait=True, **kw)
    assert (
        sorted(outcome["reused"]) == sorted(names) and tmp_path / "figs" / "fig3_tiny.png" in files
    )
    for name in names:
        assert_same_run(RunDir(tmp_path / "direct", name), RunDir(out, name))
