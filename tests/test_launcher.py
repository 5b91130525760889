"""reproduce.py --launcher slurm without a cluster: runs through submitit's local executor (real
processes, real requeue on submitit's preemption signal), and the sbatch script of a set through
a stand-in sbatch on the PATH."""

from __future__ import annotations

import json
import os
import pickle
import signal
import sys
import time
from pathlib import Path

import pytest
import submitit

import reproduce
from engine import run
from experiments import driver, launcher, sets
from experiments.driver import Setting, run_all
from experiments.driver import reproduce as run_set
from experiments.sets import LIP_MASKS, PROFILES, Case, Run, figure_runs
from tests.conftest import ROOT, assert_same_run, tiny_profile
from utils import InputError
from utils.images import PAPER_IMAGES
from utils.rundir import RunDir

ONE_CASE = {"fig3": (Case("cat", 0.5),), "fig4": ()}  # DIP-L1 and DOP on one bundled image


def local_executor(folder: Path) -> submitit.LocalExecutor:
    """submitit's executor of jobs as local processes (the Slurm one's interface); a time limit
    far beyond the test's, so that only the test's own signal stops a job."""
    executor = submitit.LocalExecutor(folder)
    executor.update_parameters(timeout_min=30, stderr_to_stdout=True)
    return executor


def test_a_set_through_the_launcher_gives_the_histories_of_direct_runs(
    tmp_path: Path, monkeypatch, one_thread
) -> None:
    monkeypatch.chdir(ROOT)  # the jobs' processes import the repository's modules from there
    tiny = tiny_profile(60)
    kw = dict(figs_dir=tmp_path / "figs", table_dir=tmp_path / "docs", cases=ONE_CASE)
    direct, _ = run_set(["fig3"], Setting(tiny, tmp_path / "direct", tmp_path, ("cpu",)), **kw)
    out = tmp_path / "jobs"
    executor = local_executor(out / "submitit")
    setting = Setting(tiny, out, tmp_path, ("cpu",))
    outcome, files = run_set(["fig3"], setting, executor=executor, wait=True, **kw)
    runs = [run.ckpt(tiny) for run in figure_runs(["fig3"], ONE_CASE)]
    assert sorted(outcome["started"]) == sorted(direct["started"]) == sorted(runs)
    assert not outcome["failed"] and not outcome["in flight"]
    assert tmp_path / "figs" / "fig3_tiny.png" in files
    record = json.loads((out / "submitit" / "jobs.json").read_text())
    assert sorted(record) == sorted(runs) and len(set(record.values())) == 2  # a job each
    for name in runs:
        assert_same_run(RunDir(tmp_path / "direct", name), RunDir(out, name))
        log = RunDir(out, name).log  # beside the run's outputs: a link to its job's log
        assert log.is_symlink() and log.resolve().parent == (out / "submitit").resolve()
        assert f"{name}: last iterate PSNR" in log.read_text()

    # A rerun submits nothing: every run has finished.
    outcome, files = run_set(["fig3"], setting, executor=executor, **kw)
    assert sorted(outcome["reused"]) == sorted(runs) and not outcome["submitted"] and files


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.is_file() else []


def wait_for(condition, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def checkpoint_id(path: Path) -> tuple[int, int] | None:
    """Which checkpoint file is there (each is written anew and renamed into place)."""
    return (path.stat().st_ino, path.stat().st_mtime_ns) if path.is_file() else None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the job's task in /proc")
def test_a_stopped_job_goes_on_from_its_checkpoint_to_the_uninterrupted_result(
    tmp_path: Path, monkeypatch, one_thread
) -> None:
    """A job stopped mid-run twice: by submitit's signal (a preemption, or a time limit close),
    after which submitit requeues it, then by SIGKILL (nothing requeues it), after which the
    same reproduce.py call submits it again. Each start goes on from the last checkpoint, and the
    run ends with the very history of a run that was never stopped."""
    monkeypatch.chdir(ROOT)
    tiny = tiny_profile(200)
    dop = Run("cat", 0.5, "dop")
    name = dop.ckpt(tiny)
    setting = lambda out: Setting(tiny, out, tmp_path, ("cpu",))  # noqa: E731
    [direct] = run([setting(tmp_path / "direct").config(dop)])
    assert direct.code == 0

    out = tmp_path / "jobs"
    out.mkdir()
    executor = local_executor(out / "submitit")
    (job,) = launcher.submit(executor, [setting(out).config(dop)])
    rundir, controller = RunDir(out, name), int(job.job_id)
    state = rundir.path("state")
    wait_for(state.is_file, "the first checkpoint")
    assert rundir.config() is None, "the run ended before the test could stop it"
    (first,) = children(controller)  # the job's process, under submitit's local controller
    os.kill(first, launcher_signal())
    wait_for(lambda: children(controller) not in ([], [first]), "the requeued task")
    (second,) = children(controller)
    resumed_from = checkpoint_id(state)
    wait_for(lambda: checkpoint_id(state) != resumed_from, "a checkpoint of the requeued task")
    assert rundir.config() is None, "the run ended before the test could stop it"
    os.kill(second, signal.SIGKILL)
    job.wait()
    assert not job.paths.result_pickle.exists()  # the job ended without a result

    log = job.paths.stdout.read_text()
    assert f"requeued: {name} go on from their checkpoints" in log
    commands = [line for line in log.splitlines() if line.startswith("python denoising.py")]
    assert len(commands) == 2 and commands[0] == commands[1] and "--reuse" in commands[0]
    assert log.count(f"{name}: resuming from iteration") == 1  # the requeued start

    outcome = run_all([dop], setting(out), executor=executor, wait=True)
    assert outcome["resumed"] == [name] and not outcome["failed"] + outcome["in flight"]
    assert rundir.log.resolve() != job.paths.stdout.resolve()  # linked to the new job's log
    assert f"{name}: resuming from iteration" in rundir.log.read_text()
    assert_same_run(RunDir(tmp_path / "direct", name), rundir)


def launcher_signal() -> signal.Signals:
    """The signal submitit's jobs take as preemption or time-out (Slurm sends it before the
    limit: #SBATCH --signal=USR2@90)."""
    return getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch) -> Path:
    """srun, sbatch and squeue stand-ins on the PATH: sbatch answers as Slurm does (job ids from
    4242 up), squeue prints ``squeue.txt`` (and what ``squeue.err`` holds on stderr, exit 1
    when there is one). Returns their folder."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "srun": "exit 0",
        "sbatch": f"n=$(cat {bin_dir}/last 2>/dev/null || echo 4241); n=$((n + 1)); "
        f'echo $n > {bin_dir}/last; echo "Submitted batch job $n"',
        "squeue": f"cat {bin_dir}/squeue.txt; if [ -s {bin_dir}/squeue.err ]; then "
        f"cat {bin_dir}/squeue.err >&2; exit 1; fi",
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    (bin_dir / "squeue.txt").write_text("")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def sbatch_lines(folder: Path, job_id: str) -> list[str]:
    return (folder / f"{job_id}_submission.sh").read_text().splitlines()


def test_the_sbatch_script_of_a_set(tmp_path: Path, fake_slurm: Path, monkeypatch, capsys) -> None:
    """The quick Figures 3 and 4 (14 runs) as one array: the sbatch script, the array size, the
    tasks' command lines; a rerun leaves runs whose jobs are queued or running to them."""
    fetched = []  # the paper images, fetched before submitting (here: not downloaded)
    monkeypatch.setattr(driver, "fetch_paper_image", lambda name, d: fetched.append((name, d)))
    out = tmp_path / "out"
    common = ["fig3", "fig4", "--quick", "--out_dir", str(out), "--data_dir", str(tmp_path),
              "--figs_dir", str(tmp_path / "figs"), "--table_dir", str(tmp_path / "docs"),
              "--launcher", "slurm"]  # fmt: skip
    args = [*common, "--partition", "gpu", "--timeout_min", "90", "--mem_gb", "24",
            "--array_parallelism", "5"]  # fmt: skip
    assert reproduce.main(args) == 0
    printed = capsys.readouterr().out
    assert "14 submitted" in printed and "squeue -j 4242" in printed and "--collect" in printed
    assert sorted(fetched) == sorted((name, tmp_path) for name in PAPER_IMAGES)
    folder = out / "submitit"
    lines = sbatch_lines(folder, "4242")
    for line in ["#SBATCH --array=0-13%5", "#SBATCH --partition=gpu", "#SBATCH --time=90",
                 "#SBATCH --mem=24GB", "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=4",
                 "#SBATCH --signal=USR2@90", "#SBATCH --open-mode=append",
                 f"#SBATCH --output={folder.resolve()}/%A_%a_0_log.out",
                 f"cd {ROOT}"]:  # fmt: skip
        assert line in lines, line
    assert not any(line.startswith("#SBATCH --error") for line in lines)  # one log per job
    assert any("-m submitit.core._submit" in line for line in lines)

    quick = PROFILES["quick"]
    runs = figure_runs(["fig3", "fig4"])
    record = json.loads((folder / "jobs.json").read_text())
    assert record == {run.ckpt(quick): f"4242_{i}" for i, run in enumerate(runs)}
    for i, r in enumerate(runs):
        with (folder / f"4242_{i}_submitted.pkl").open("rb") as f:
            task = pickle.load(f).function
        assert task == launcher.Runs((Setting(quick, out, tmp_path).config(r),))
        log = RunDir(out, r.ckpt(quick)).log
        assert os.readlink(log) == f"submitit/4242_{i}_0_log.out"

    # A rerun while the array runs submits nothing; once task 3 has failed, it submits its run.
    states = ["RUNNING"] * 5 + ["PENDING"] * 9
    queue = lambda: "".join(f"4242_{i}|{s}\n" for i, s in enumerate(states))  # noqa: E731
    (fake_slurm / "squeue.txt").write_text(queue())
    assert reproduce.main(common) == 0
    assert "14 in flight, 0 submitted" in capsys.readouterr().out
    assert not (folder / "4243_submission.sh").exists()
    states[3] = "FAILED"
    states[13] = ""  # forgotten by squeue (ended MinJobAge ago): ended too
    (fake_slurm / "squeue.txt").write_text(queue().replace("4242_13|\n", ""))
    assert reproduce.main(common) == 0
    assert "12 in flight, 2 submitted" in capsys.readouterr().out
    record = json.loads((folder / "jobs.json").read_text())
    assert record[runs[3].ckpt(quick)] == "4243_0" and record[runs[13].ckpt(quick)] == "4243_1"
    assert "#SBATCH --array=0-1%2" in sbatch_lines(folder, "4243")  # the two runs only
    assert sorted(fetched[4:]) == sorted({(runs[i].image, tmp_path) for i in (3, 13)})


def test_squeue_says_which_jobs_are_active(tmp_path: Path, fake_slurm: Path) -> None:
    """A cluster without accounting has no sacct: the jobs' states come from squeue (every
    state, array tasks one by one); a job it no longer knows has ended; a squeue that cannot
    answer is one line."""
    executor = launcher.slurm_executor(tmp_path / "submitit", launcher.read_options(None, {}))
    (fake_slurm / "squeue.txt").write_text("7_0|RUNNING\n7_1|COMPLETING\n7_2|CANCELLED\n"
                                           "8|REQUEUED\n9|COMPLETED\n")  # fmt: skip
    ids = ["7_0", "7_1", "7_2", "7_3", "8", "9"]
    assert launcher.squeue_states(ids) == {"7_0": "RUNNING", "7_1": "COMPLETING", "7_2":
                                           "CANCELLED", "7_3": "", "8": "REQUEUED",
                                           "9": "COMPLETED"}  # fmt: skip
    jobs = [executor.job_class(folder=tmp_path, job_id=job_id) for job_id in ids]
    assert launcher.active(executor, jobs) == {"7_0", "7_1", "8"}
    (fake_slurm / "squeue.txt").write_text("")  # one id, forgotten: squeue exits 1
    (fake_slurm / "squeue.err").write_text("slurm_load_jobs error: Invalid job id specified\n")
    assert launcher.active(executor, jobs[-1:]) == set()
    launcher.wait(executor, jobs[-1:])  # returns at once
    (fake_slurm / "squeue.err").write_text("slurm_load_jobs error: Unable to contact slurm "
                                           "controller (connect failure)\n")  # fmt: skip
    with pytest.raises(InputError, match="could not tell the jobs' states: slurm_load_jobs "
                       "error: Unable to contact"):  # fmt: skip
        launcher.active(executor, jobs[-1:])


def test_batches_are_tasks_of_runs_that_share_a_loop(
    tmp_path: Path, fake_slurm: Path, monkeypatch
) -> None:
    """With --batch 4, the 14 runs are 4 tasks: DIP-L1's 7 runs in two, DOP's in two; settings
    from a --slurm_config file, a flag given winning over it."""
    monkeypatch.setattr(driver, "fetch_paper_image", lambda name, d: None)
    out = tmp_path / "out"
    config = tmp_path / "cluster.json"
    config.write_text(json.dumps({"account": "lab", "partition": "a100", "setup": ["module load x"],
                                  "timeout_min": 600}))  # fmt: skip
    args = ["fig3", "fig4", "--quick", "--out_dir", str(out), "--data_dir", str(tmp_path),
            "--launcher", "slurm", "--batch", "4", "--slurm_config", str(config),
            "--partition", "h100"]  # fmt: skip
    assert reproduce.main(args) == 0
    folder = out / "submitit"
    lines = sbatch_lines(folder, "4242")
    for line in ["#SBATCH --array=0-3%4", "#SBATCH --account=lab", "#SBATCH --partition=h100",
                 "#SBATCH --time=600", "module load x"]:  # fmt: skip
        assert line in lines, line
    tasks = []
    for i in range(4):
        with (folder / f"4242_{i}_submitted.pkl").open("rb") as f:
            tasks.append(pickle.load(f).function)
    assert [len(t.configs) for t in tasks] == [4, 3, 4, 3] and {t.max_batch for t in tasks} == {4}
    for task in tasks:  # one variant a task
        assert len({name.split("_")[2] for name in task.names}) == 1, task.names
    assert sorted(n for t in tasks for n in t.names) == sorted(
        r.ckpt(PROFILES["quick"]) for r in figure_runs(["fig3", "fig4"])
    )


def test_a_parameter_submitit_does_not_know_is_one_line(
    tmp_path: Path, fake_slurm: Path, capsys
) -> None:
    config = tmp_path / "cluster.json"
    config.write_text('{"acount": "lab"}')
    args = [
        "fig3",
        "--out_dir",
        str(tmp_path),
        "--launcher",
        "slurm",
        "--slurm_config",
        str(config),
    ]
    assert reproduce.main(args) == 2
    assert "acount" in one_line_error(capsys)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1, err
    return err


def test_slurm_launcher_errors_are_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    base = ["fig3", "--quick", "--out_dir", str(tmp_path / "out"), "--launcher", "slurm"]
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    assert reproduce.main(base) == 2
    assert "srun" in one_line_error(capsys)
    monkeypatch.setitem(sys.modules, "submitit", None)  # not installed
    assert reproduce.main(base) == 2
    assert 'pip install -e ".[slurm]"' in one_line_error(capsys)
    assert reproduce.main([*base, "--jobs", "2"]) == 2
    one_line_error(capsys)
    assert reproduce.main([*base, "--gpus_per_job", "-1"]) == 2
    one_line_error(capsys)
    config = tmp_path / "cluster.json"
    config.write_text('{"time": 60}')
    assert reproduce.main([*base, "--slurm_config", str(config)]) == 2
    assert "'timeout_min'" in one_line_error(capsys)
    assert reproduce.main(["fig3", "--wait"]) == 2
    one_line_error(capsys)


def test_collect_draws_what_has_ended_and_never_an_empty_figure(tmp_path: Path, capsys) -> None:
    """--collect with nothing ended: one line, exit 2, nothing written; with one of the two runs
    ended: the figure from that one, the other named as missing (exit 1)."""
    args = ["fig3", "--quick", "--out_dir", str(tmp_path / "out"), "--figs_dir",
            str(tmp_path / "figs"), "--table_dir", str(tmp_path / "docs"), "--collect"]  # fmt: skip
    assert reproduce.main(args) == 2
    assert "nothing drawn" in one_line_error(capsys)
    assert not (tmp_path / "figs").exists() and not (tmp_path / "docs").exists()
    setting = Setting(tiny_profile(20), tmp_path / "out", tmp_path, ("cpu",))
    [first, second] = figure_runs(["fig3"], ONE_CASE)
    assert run([setting.config(first)])[0].code == 0
    outcome, files = run_set(["fig3"], setting, tmp_path / "figs", tmp_path / "docs",
                             cases=ONE_CASE, collect=True)  # fmt: skip
    assert outcome["missing"] == [second.ckpt(setting.profile)] and outcome["reused"]
    assert tmp_path / "figs" / "fig3_tiny.png" in files
    assert "drawn from 1 of 2 runs" in capsys.readouterr().out


def test_the_mask_search_is_a_job_and_the_runs_of_its_mask_wait_for_it(
    tmp_path: Path, monkeypatch, one_thread
) -> None:
    """A set with the lottery prior through the launcher: the mask search is submitted as one
    job and the runs that train its mask are held back; once it has ended, a rerun submits them
    (and not the search again). (A rerun while the search's job runs finds it in flight through
    squeue, as any run's: test_the_sbatch_script_of_a_set.)"""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sets, "COMPARE_VARIANTS", ("lip",))  # the lottery runs only
    tiny = tiny_profile(40, imp_rounds=1, imp_iters=10)
    cases = {"compare": (Case("cat", 0.5),)}
    out = tmp_path / "out"
    executor = local_executor(out / "submitit")
    setting = Setting(tiny, out, tmp_path, ("cpu",))
    kw = dict(figs_dir=tmp_path / "figs", table_dir=tmp_path / "docs", cases=cases,
              executor=executor)  # fmt: skip
    outcome, files = run_set(["compare"], setting, **kw)
    search, run = LIP_MASKS.ckpt(tiny), cases["compare"][0].run("lip", observe=True).ckpt(tiny)
    assert outcome["submitted"] == [search] and outcome["waiting for the mask"] == [run]
    assert not files and (out / f"{search}.log").is_symlink()
    job = json.loads((out / "submitit" / "jobs.json").read_text())[search]
    wait_for(lambda: (out / f"{search}_imp.json").is_file(), "the mask search")
    outcome, files = run_set(["compare"], setting, wait=True, **kw)
    assert outcome["started"] == [run] and tmp_path / "docs" / "COMPARISON.md" in files
    record = json.loads((out / "submitit" / "jobs.json").read_text())
    assert record[search] == job and record[run] != job  # the search was submitted once
    assert LIP_MASKS.mask(tiny, out).is_file() and "round 1" in (out / f"{search}.log").read_text()
