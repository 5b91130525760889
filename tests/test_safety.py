"""Nothing clobbered, nothing lost, no traceback (issue 23): two processes on one run, a run
killed by SIGKILL, figures drawn from no runs, and the bad inputs a new user tried, each one
line and exit 2 with nothing written, at every entry point."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import denoising
import plot
import reproduce
import structural_bias
from tests.conftest import ROOT, cli, outputs
from utils import InputError
from utils.rundir import RunDir

# A denoising.py process that imports everything, says it is ready (its first argument, a file),
# then waits for the second to exist before it runs: two of them start their runs together.
AT_ONCE = """import sys, time, pathlib
import denoising
ready, go = map(pathlib.Path, sys.argv[1:3])
ready.touch()
while not go.exists():
    time.sleep(0.002)
sys.exit(denoising.main(sys.argv[3:]))
"""


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}  # fmt: skip


def test_two_runs_started_at_once_one_is_refused_and_the_folder_holds_the_other(
    tmp_path: Path, one_thread
) -> None:
    """The issue's race: seeds 0 and 1 with the same --ckpt and --out_dir, started together.
    One takes the run's lock, the other is refused in one line naming the holder; the folder
    holds one run, every file of it from the same seed."""
    starts = []
    for seed in (0, 1):
        ready, go = tmp_path / f"ready{seed}", tmp_path / "go"
        argv = cli(tmp_path, "--image", "astronaut", "--seed", str(seed), "--num_iter", "100",
                   "--show_every", "20", "--save_every", "20")  # fmt: skip
        starts.append(subprocess.Popen(
            [sys.executable, "-c", AT_ONCE, str(ready), str(go), *argv], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))  # fmt: skip
    deadline = time.time() + 120
    while not all((tmp_path / f"ready{seed}").exists() for seed in (0, 1)):
        assert time.time() < deadline and all(p.poll() is None for p in starts)
        time.sleep(0.01)
    (tmp_path / "go").touch()
    ended = [p.communicate(timeout=300) for p in starts]
    codes = [p.returncode for p in starts]
    assert sorted(codes) == [0, 2], ended
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    err = ended[loser][1]
    assert re.fullmatch(rf"error: test is being written by process {starts[winner].pid} since "
                        r"\d{4}-\d\d-\d\dT[\d:]+ \(.*test\.lock\); wait for it to end, or choose "
                        r"another --ckpt\n", err), err  # fmt: skip
    run = outputs(tmp_path)
    assert run.config()["settings"]["seed"] == winner
    assert run.state()["settings"]["seed"] == winner
    noise = np.load(run.path("noise"))
    noisy_png = np.moveaxis(run.image("noisy"), -1, 0)
    np.testing.assert_allclose(noisy_png, noise["noisy"], atol=0.5 / 255 + 1e-6)
    assert run.history()["iteration"].tolist() == [0, 20, 40, 60, 80, 99]
    assert not (tmp_path / "out" / "test.lock").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGKILL, flock")
def test_a_run_killed_by_sigkill_resumes_without_clean_up(tmp_path: Path, one_thread, capsys
                                                          ) -> None:  # fmt: skip
    """kill -9 leaves the run's lock file (its holder never removed it) but not its lock: the
    next command is told to --resume, and --resume goes on from the last checkpoint."""
    argv = cli(tmp_path, "--image", "astronaut", "--num_iter", "60", "--show_every", "10",
               "--save_every", "10")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "denoising.py", *argv], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    run = outputs(tmp_path)
    deadline = time.time() + 120
    while not run.path("state").is_file():
        assert time.time() < deadline and proc.poll() is None, "no checkpoint"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert run.config() is None and (tmp_path / "out" / "test.lock").is_file()
    assert denoising.main(argv) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert denoising.main([*argv, "--resume"]) == 0
    assert re.search(r"test: resuming from iteration [1-9]\d*\n", capsys.readouterr().out)
    assert run.config()["report"]["iterations_done"] == 60
    assert not (tmp_path / "out" / "test.lock").exists()


def test_a_held_run_names_its_holder_and_a_waiter_gets_it_when_it_ends(tmp_path: Path) -> None:
    """A requeued Slurm task waits (``wait`` seconds) for the runs its previous incarnation
    still holds; without waiting it is refused, told who holds the run since when."""
    rundir = RunDir(tmp_path, "run")
    held = rundir.lock()
    with pytest.raises(InputError, match=rf"^run is being written by process {os.getpid()} "
                       r"since \d{4}-"):  # fmt: skip
        rundir.lock(wait=0.2)
    threading.Timer(0.3, held.release).start()
    start = time.monotonic()
    with rundir.lock(wait=30):
        assert time.monotonic() - start >= 0.25
        assert (tmp_path / "run.lock").read_text().split()[0] == str(os.getpid())
    assert not (tmp_path / "run.lock").exists()


def test_figures_from_no_runs_leave_the_committed_ones(tmp_path: Path, monkeypatch, capsys
                                                       ) -> None:  # fmt: skip
    """plot.py on a fresh clone (no runs in checkpoints/), and reproduce.py --collect: one line,
    a non-zero exit, and figs/ and docs/ as they were, byte for byte (copies of the committed
    ones here)."""
    for folder in ("figs", "docs"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    (tmp_path / "checkpoints").mkdir()
    before = files_under(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert plot.main(["all", "--profile", "quick"]) == 2
    assert one_line_error(capsys).startswith("error: nothing drawn")
    assert reproduce.main(["--quick", "fig5", "--collect", "--out_dir", "checkpoints/quick",
                           "--figs_dir", "figs", "--table_dir", "docs"]) == 2  # fmt: skip
    assert one_line_error(capsys).startswith("error: nothing drawn")
    assert files_under(tmp_path) == before


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def kernel_png(folder: Path) -> str:
    kernel = np.zeros((9, 9), np.uint8)
    kernel[4, 1:8] = 255
    Image.fromarray(kernel).save(folder / "kernel.png")
    return str(folder / "kernel.png")


def blind_deblur(t: Path, size: str) -> list[str]:
    return cli(t, "--image", "astronaut", "--task", "blind-deblur", "--kernel", kernel_png(t),
               "--kernel_size", size)  # fmt: skip


def out(t: Path, *more: str) -> list[str]:
    return ["--out_dir", str(t / "out"), "--figs_dir", str(t / "figs"), "--table_dir",
            str(t / "docs"), *more]  # fmt: skip


def curves(t: Path, *more: str) -> list[str]:
    return ["--image", "astronaut", "--num_iter", "2", "--every", "1", "--gpu", "cpu", "--csv",
            str(t / "c.csv"), "--figure", str(t / "f.png"), "--out_dir", str(t / "o"),
            *more]  # fmt: skip


@pytest.mark.parametrize(
    "main,argv,message",
    [
        (denoising.main, lambda t: cli(t, "--out_dir", str(t / "file")), "is a file"),
        (denoising.main, lambda t: cli(t, "--out_dir", str(t / "file" / "x")), "below"),
        (denoising.main, lambda t: cli(t, "--ckpt", "c" * 300), "--ckpt is 300 characters"),
        (denoising.main, lambda t: cli(t, "--out_dir", str(t / ("d" * 300))), "too long"),
        (denoising.main, lambda t: cli(t, "--image", "astronaut", "--pad", crop="10"), "11"),
        (denoising.main, lambda t: blind_deblur(t, "100"), "kernel box 100x100 exceeds the 56x56"),
        (reproduce.main, lambda t: ["--quick", "fig5", "--images", "Nope", *out(t)], "Nope"),
        (reproduce.main, lambda t: ["--quick", "fig5", "--images", "F16,Nope", *out(t)], "Nope"),
        (structural_bias.main, lambda t: curves(t, "--crop", "10"), "--crop 10"),
        (structural_bias.main, lambda t: curves(t, "--crop", "100000"), "--crop 100000"),
        (structural_bias.main, lambda t: curves(t, "--crop", "0"), "--crop"),
        (
            structural_bias.main,
            lambda t: [
                "table",
                "--images",
                "astronaut",
                "--crop",
                "10",
                "--gpu",
                "cpu",
                "--out_dir",
                str(t / "o"),
            ],
            "64",
        ),
    ],
)
def test_the_issues_bad_inputs_are_one_line_and_write_nothing(
    tmp_path: Path, capsys, main, argv, message: str
) -> None:
    (tmp_path / "file").write_text("a file where a folder is expected")
    args = argv(tmp_path)
    before = files_under(tmp_path)
    assert main(args) == 2
    assert message in one_line_error(capsys)
    assert files_under(tmp_path) == before and not (tmp_path / "out").exists()


def test_a_damaged_checkpoint_is_one_short_line_naming_overwrite(tmp_path: Path, capsys) -> None:
    argv = lambda n, *more: cli(tmp_path, "--image", "astronaut", "--num_iter", n,  # noqa: E731
                                "--save_every", "2", "--show_every", "2", *more)  # fmt: skip
    assert denoising.main(argv("4")) == 0
    state = outputs(tmp_path).path("state")
    state.write_bytes(state.read_bytes()[:300])  # a copy cut short
    capsys.readouterr()
    assert denoising.main(argv("6", "--resume")) == 2
    err = one_line_error(capsys)
    assert "--overwrite" in err and len(err) < len(str(state)) + 150, err
    assert denoising.main(argv("6", "--overwrite")) == 0


def entry(name: str):
    return importlib.import_module(name).main


@pytest.mark.parametrize(
    "name,argv,message",
    [
        ("denoising", lambda t: ["--bogus"], "--bogus"),
        ("reproduce", lambda t: ["fig3", "--bogus"], "--bogus"),
        ("reproduce", lambda t: ["fig3", "--figs_dir", str(t / "file")], "--figs_dir"),
        ("plot", lambda t: ["fig3", "--bogus"], "--bogus"),
        ("plot", lambda t: ["fig3", "--table_dir", str(t / "file")], "--table_dir"),
        ("lip", lambda t: ["--bogus"], "--bogus"),
        (
            "lip",
            lambda t: ["--image", "cat", "--crop", "64", "--out_dir", str(t / "file")],
            "--out_dir",
        ),  # fmt: skip
        ("lip", lambda t: ["evaluate", "--bogus"], "required"),
        (
            "lip",
            lambda t: [
                "evaluate",
                "--masks",
                "m",
                "--rounds",
                "1",
                "--images",
                "cat",
                "--csv",
                str(t),
            ],
            "--csv",
        ),  # fmt: skip
        ("structural_bias", lambda t: ["--bogus"], "--bogus"),
        ("structural_bias", lambda t: ["table", "--images", "Nope"], "Nope"),
        ("structural_bias", lambda t: ["--image", "cat", "--figure", str(t)], "--figure"),
        ("lowrank", lambda t: ["--bogus"], "--bogus"),
        ("lowrank", lambda t: ["--results", str(t)], "--results"),
        ("lowrank", lambda t: ["--out_dir", str(t / "file")], "--out_dir"),
        ("benchmarks.speed", lambda t: ["--bogus"], "--bogus"),
        ("benchmarks.speed", lambda t: ["--gpu", "cpu", "--nlevel", "2"], "--nlevel"),
        ("benchmarks.speed", lambda t: ["--gpu", "cpu", "--image", "Nope"], "Nope"),
        ("benchmarks.memory", lambda t: ["--bogus"], "--bogus"),
        ("benchmarks.memory", lambda t: ["--gpu", "cpu", "--width", "0"], "--width"),
        ("benchmarks.time_to_quality", lambda t: ["--bogus"], "--bogus"),
        (
            "benchmarks.time_to_quality",
            lambda t: ["--gpu", "cpu", "--image", "cat", "--size", "10"],
            "--size 10",
        ),  # fmt: skip
        ("benchmarks.levin", lambda t: ["--bogus"], "--bogus"),
        ("benchmarks.levin", lambda t: ["--data_dir", str(t)], "--data_dir"),
        ("benchmarks.gpu_smoke", lambda t: ["--bogus"], "--bogus"),
        (
            "benchmarks.gpu_smoke",
            lambda t: ["--gpu", "cpu", "--out_dir", str(t / "file")],
            "--out_dir",
        ),  # fmt: skip
        ("benchmarks.gpu_smoke", lambda t: ["--gpu", "cpu", "--size", "0"], "--size"),
        ("benchmarks.tasks", lambda t: ["--bogus"], "--bogus"),
        (
            "benchmarks.tasks",
            lambda t: ["--images", "F16,Nope", "--out_dir", str(t / "o")],
            "Nope",
        ),  # fmt: skip
        ("benchmarks.tasks", lambda t: ["--batch", "0", "--out_dir", str(t / "o")], "--batch"),
    ],
)
def test_every_entry_point_refuses_bad_input_in_one_line_before_writing(
    tmp_path: Path, capsys, name: str, argv, message: str
) -> None:
    """Each entry point (its main, as ``python NAME.py`` or ``python -m NAME`` calls it) goes
    through utils.guarded: argparse's errors and its own checks of names, sizes and paths are
    one line and exit 2, before anything is computed or written."""
    (tmp_path / "file").write_text("a file where a folder is expected")
    before = files_under(tmp_path)
    assert entry(name)(argv(tmp_path)) == 2
    assert message in one_line_error(capsys)
    assert files_under(tmp_path) == before


def test_a_matrix_too_large_for_the_memory_is_one_line(tmp_path: Path, capsys) -> None:
    """lowrank.py --n 2000000: 32 TB a matrix, refused by the allocator at once; exit 3 (out of
    memory, as the runner's), one line, nothing written."""
    args = ["--n", "2000000", "--steps", "2", "--l1_steps", "2", "--out_dir", str(tmp_path),
            "--results", str(tmp_path / "r.json")]  # fmt: skip
    assert entry("lowrank")(args) == 3
    assert "out of memory" in one_line_error(capsys)
    assert not any(tmp_path.iterdir())


def test_resume_of_an_ended_run_without_checkpoint(tmp_path: Path, capsys) -> None:
    """A run that ended with no checkpoint (its last state was not finite, or it diverged before
    its first): --resume keeps its outputs; asked for more iterations, one line: --overwrite."""
    argv = lambda n, *more: cli(tmp_path, "--image", "astronaut", "--num_iter", n,  # noqa: E731
                                "--save_every", "2", "--show_every", "2", *more)  # fmt: skip
    assert denoising.main(argv("4")) == 0
    outputs(tmp_path).path("state").unlink()
    before = files_under(tmp_path)
    assert denoising.main(argv("4", "--resume")) == 0
    assert "reused" in capsys.readouterr().out
    assert denoising.main(argv("6", "--resume")) == 2
    assert "ended (finished at iteration 4)" in one_line_error(capsys)
    assert files_under(tmp_path) == before


def test_a_resumed_run_that_diverges_at_once_says_so_and_keeps_its_outputs(
    tmp_path: Path, capsys
) -> None:
    """Resumed from a finite checkpoint whose next loss is infinite: config.json says diverged
    (it said finished, from the start before), the images of the last finite row stay (found by
    the property test)."""
    argv = lambda n, *more: cli(tmp_path, "--image", "astronaut", "--lr_c", "1e9",  # noqa: E731
                                "--num_iter", n, "--show_every", "1", "--save_every", "1",
                                *more)  # fmt: skip
    assert denoising.main(argv("3")) == 0
    last = outputs(tmp_path).path("last").read_bytes()
    assert denoising.main(argv("5", "--resume")) == 1
    assert "finite at iteration 2, whose outputs are kept" in one_line_error(capsys)
    report = outputs(tmp_path).config()["report"]
    assert (report["status"], report["diverged_at"], report["final_iteration"]) == (
        "diverged", 3, 2)  # fmt: skip
    assert outputs(tmp_path).path("last").read_bytes() == last


def test_resume_of_a_run_killed_before_its_first_checkpoint_names_overwrite(tmp_path: Path
                                                                            ) -> None:  # fmt: skip
    """Its inputs are there, so a start without --resume would be refused too."""
    rundir = RunDir(tmp_path, "run")
    rundir.save_image("noisy", np.zeros((1, 16, 16)))
    with pytest.raises(InputError, match=r"no checkpoint .*; start the run again with --overwrite"):
        rundir.claim({}, {}, 10, "resume")
    assert rundir.claim({}, {}, 10, "auto") == ("start", None)  # --reuse starts it over
