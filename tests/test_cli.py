"""The command line end to end: outputs, refusals, resume, real observations, bad input; the
Python API beside it."""

import dataclasses
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import denoising
from engine import run
from engine.config import RunConfig, parse
from tests.conftest import IMAGE, ROOT, cli, outputs
from utils import InputError
from utils.rundir import RunDir


def test_run_writes_every_output(tmp_path: Path) -> None:
    assert denoising.main(cli(tmp_path, "--image", IMAGE, "--ckpt", "run")) == 0
    run = outputs(tmp_path, "run")
    for name in ("last", "noisy", "clean", "sparse"):
        with Image.open(run.path(name)) as img:
            assert img.format == "PNG" and img.size == (64, 64) and img.mode == "RGB"
    history = run.history()
    assert list(history) == ["iteration", "loss", "psnr", "ssim"]
    assert history["iteration"].tolist() == [0, 10, 20, 29]
    record = run.config()
    settings, report = record["settings"], record["report"]
    assert settings["seed"] == 0 and settings["method"] == "dop" and settings["nlevel"] == 0.5
    assert settings["alg"] == "sgd" and settings["lr"] == 1.0  # the prior's defaults, filled in
    assert report["status"] == "finished" and report["final_psnr"] == history["psnr"][-1]
    assert report["oracle_best_psnr_vs_clean"] == history["psnr"].max()
    assert report["device"].startswith("cpu") and "torch" in report["versions"]
    assert record["data"]["shape"] == [3, 64, 64]
    noise = np.load(run.path("noise"))
    hit = noise["salt"] | noise["pepper"]
    assert 0.45 < hit.mean() < 0.55  # --nlevel 0.5 by default
    assert np.all(noise["noisy"][noise["salt"]] == 1)
    noisy_png = np.moveaxis(run.image("noisy"), -1, 0)
    np.testing.assert_allclose(noisy_png, noise["noisy"], atol=0.5 / 255 + 1e-6)
    assert not list((tmp_path / "out").glob(".*tmp"))  # atomic writes leave no temporaries


def test_refuses_to_overwrite_another_run(tmp_path: Path, capsys) -> None:
    args = cli(tmp_path, "--image", "astronaut", "--num_iter", "5")
    assert denoising.main(args) == 0
    before = outputs(tmp_path).path("history").read_bytes()
    assert denoising.main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert outputs(tmp_path).path("history").read_bytes() == before
    assert denoising.main(args + ["--overwrite", "--method", "dip"]) == 0
    assert not outputs(tmp_path).path("sparse").exists()  # no file of the old run survives


def test_resume_ends_like_an_uninterrupted_run(tmp_path: Path) -> None:
    base = ["--image", "astronaut", "--method", "dop"]
    assert denoising.main(cli(tmp_path / "a", *base, "--num_iter", "40")) == 0
    assert denoising.main(cli(tmp_path / "b", *base, "--num_iter", "20")) == 0
    assert denoising.main(cli(tmp_path / "b", *base, "--num_iter", "40", "--resume")) == 0
    a, b = outputs(tmp_path / "a"), outputs(tmp_path / "b")
    assert a.path("history").read_text() == b.path("history").read_text()
    assert a.path("last").read_bytes() == b.path("last").read_bytes()
    # a finished run is kept as it is, and a checkpoint of other settings is refused
    assert denoising.main(cli(tmp_path / "b", *base, "--num_iter", "40", "--resume")) == 0
    other = cli(tmp_path / "b", *base, "--num_iter", "60", "--resume", "--nlevel", "0.3")
    assert denoising.main(other) == 2


def test_observed_image_with_its_clean_reference_is_the_synthetic_run(tmp_path: Path) -> None:
    """A synthetic run's noisy.png and clean.png given back as --observed and --clean make the
    same run: the 8-bit PNGs hold the corrupted and the clean pixels exactly."""
    assert denoising.main(cli(tmp_path / "s", "--image", IMAGE, "--num_iter", "20")) == 0
    synthetic = outputs(tmp_path / "s")
    observed = ["--observed", str(synthetic.path("noisy")), "--num_iter", "20"]
    with_clean = cli(tmp_path / "o", *observed, "--clean", str(synthetic.path("clean")), crop=None)
    assert denoising.main(with_clean) == 0
    assert outputs(tmp_path / "o").path("history").read_text() == (
        synthetic.path("history").read_text()
    )
    # without a reference: the loss only, every output that needs none, no noise file
    assert denoising.main(cli(tmp_path / "n", *observed, crop=None)) == 0
    blind = outputs(tmp_path / "n")
    assert list(blind.history()) == ["iteration", "loss"]
    np.testing.assert_array_equal(blind.history()["loss"], synthetic.history()["loss"])
    assert {p.name.split("_", 1)[1] for p in blind.existing()} == {
        "last.png",
        "noisy.png",
        "sparse.png",
        "history.csv",
        "config.json",
        "state.pt",
    }
    report = blind.config()["report"]
    assert report["noisy_psnr"] is None and "final_psnr" not in report


def test_grayscale_and_padding_keep_every_pixel(tmp_path: Path) -> None:
    assert denoising.main(cli(tmp_path, "--image", "camera", "--method", "dip", "--pad",
                              crop="45")) == 0  # fmt: skip
    with Image.open(outputs(tmp_path).path("last")) as img:
        assert img.size == (45, 45) and img.mode == "L"
    assert not outputs(tmp_path).path("sparse").exists()  # DIP has no sparse term


def test_default_image_falls_back_to_the_embedded_one(tmp_path: Path, monkeypatch, capsys) -> None:
    def offline(url, timeout):
        raise OSError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    args = cli(tmp_path, "--num_iter", "2")
    args[args.index("--data_dir") + 1] = str(tmp_path / "empty")
    assert denoising.main(args) == 0
    assert "astronaut" in capsys.readouterr().err
    assert outputs(tmp_path).config()["data"]["image"] == "skimage.data.astronaut"


def tiny_png(tmp_path: Path) -> str:
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "tiny.png")
    return str(tmp_path / "tiny.png")


def garbage(tmp_path: Path) -> str:
    (tmp_path / "garbage.png").write_bytes(b"GIF89a broken")
    return str(tmp_path / "garbage.png")


def flag(name: str) -> str:
    """A pattern for the flag itself, not for a longer flag it begins (--lr in --lr_c)."""
    return re.escape(name) + r"(?![\w-])"


@pytest.mark.parametrize(
    "make_args,message",
    [
        (lambda t: ["--image", str(t / "missing.png")], "no image file"),
        (lambda t: ["--image", "no_such_image"], "known image"),
        (lambda t: ["--image", garbage(t)], "cannot read"),
        (lambda t: ["--image", tiny_png(t), "--crop", "20"], flag("--pad")),
        (lambda t: ["--image", "astronaut", "--crop", "40"], flag("--pad")),
        (lambda t: ["--image", "astronaut", "--crop", "600"], "exceeds"),
        (lambda t: ["--image", "astronaut", "--nlevel", "1.5"], flag("--nlevel")),
        (lambda t: ["--image", "astronaut", "--nlevel", "-0.1"], flag("--nlevel")),
        (lambda t: ["--image", "astronaut", "--width", "0"], flag("--width")),
        (lambda t: ["--image", "astronaut", "--width", "x"], flag("--width")),
        (lambda t: ["--image", "astronaut", "--lr", "-1"], flag("--lr")),
        (lambda t: ["--image", "astronaut", "--lr_c", "0"], flag("--lr_c")),
        (lambda t: ["--image", "astronaut", "--seed", "-1"], flag("--seed")),
        (lambda t: ["--image", "astronaut", "--method", "dip-l1"], flag("--method")),
        (lambda t: ["--image", "astronaut", "--l1", "--loss", "l2"], flag("--l1")),
        (lambda t: ["--image", "astronaut", "--resume"], "no checkpoint"),
        (lambda t: ["--image", "astronaut", "--resume", "--overwrite"], flag("--overwrite")),
        (lambda t: ["--observed", tiny_png(t), "--nlevel", "0.3"], flag("--nlevel")),
        (lambda t: ["--image", "astronaut", "--clean", tiny_png(t)], flag("--clean")),
        (lambda t: ["--observed", "astronaut", "--clean", "camera"], "reference of"),
        (lambda t: ["--image", "astronaut", "--gpu", "7"], flag("--gpu")),
        (
            lambda t: ["--image", "astronaut", "--noise", "gaussian", "--nlevel", "-1"],
            flag("--nlevel"),
        ),
        (lambda t: ["--image", "astronaut", "--noise", "poisson"], flag("--noise")),
        (lambda t: ["--image", "astronaut", "--stop_observe"], flag("--stop_observe")),
        (
            lambda t: ["--image", "astronaut", "--stop", "emv", "--stop_decay", "1"],
            flag("--stop_decay"),
        ),
        (lambda t: ["--image", "astronaut", "--ema", "1"], flag("--ema")),
        (lambda t: ["--image", "astronaut", "--bogus"], "unrecognized"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys, make_args, message
) -> None:
    extra = make_args(tmp_path)
    assert denoising.main(cli(tmp_path, *extra, crop=None if "--crop" in extra else "64")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and re.search(message, err) and "\n" not in err, err
    assert not (tmp_path / "out").exists()


def test_noise_types_and_a_stopped_run(tmp_path: Path, capsys) -> None:
    """--noise gaussian is saved with its draw; a stopped run writes CKPT_stopped.png and
    CKPT_ema.png, and is not redone by --resume."""
    args = cli(tmp_path, "--image", IMAGE, "--noise", "gaussian", "--nlevel", "0.1", "--method",
               "dip", "--stop", "emv", "--stop_window", "5", "--stop_patience", "5", "--ema",
               "0.9", "--num_iter", "200", "--show_every", "5")  # fmt: skip
    assert denoising.main(args) == 0
    run = outputs(tmp_path)
    noise = np.load(run.path("noise"))
    assert sorted(noise) == ["gaussian", "noisy"] and abs(noise["gaussian"].std() - 1) < 0.05
    record = run.config()
    report = record["report"]
    assert record["settings"]["noise"] == "gaussian" and report["status"] == "stopped"
    stopped = report["stopped_at"]
    assert report["emv_fired_at"] <= stopped < 200 and report["iterations_done"] == stopped + 1
    assert run.path("stopped").is_file() and run.path("ema").is_file()
    assert {"psnr_ema", "ssim_ema", "emv", "emv_detected"} <= set(run.history())
    assert denoising.main(args + ["--resume"]) == 0
    assert "already stopped" in capsys.readouterr().out
    assert run.config()["report"] == report


def test_divergence_is_reported_and_keeps_finite_outputs(tmp_path: Path, capsys) -> None:
    args = cli(tmp_path, "--image", "astronaut", "--lr_c", "1e9", "--num_iter", "60")
    assert denoising.main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "NaN" in err and "iteration" in err and "\n" not in err
    report = outputs(tmp_path).config()["report"]
    assert report["status"] == "diverged" and np.isfinite(report["final_psnr"])
    assert Image.open(outputs(tmp_path).path("last")).size == (64, 64)
    assert denoising.main([*args, "--reuse"]) == 1  # reused, as it ended (the property test's)
    assert "ended earlier (diverged)" in capsys.readouterr().out


def test_command_line_process(tmp_path: Path) -> None:
    """The real entry point: exit codes, a one-line error without traceback, --help."""
    bad = subprocess.run(
        [sys.executable, "denoising.py", "--image", "astronaut", "--nlevel", "2"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    good = subprocess.run(
        [sys.executable, "denoising.py", *cli(tmp_path, "--image", "astronaut", "--num_iter", "3")],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert good.returncode == 0, good.stderr
    assert good.stdout.splitlines()[0].startswith("device: cpu")
    shown = subprocess.run([sys.executable, "denoising.py", "--help"], cwd=ROOT,
                           capture_output=True, text=True)  # fmt: skip
    assert shown.returncode == 0 and "--observed" in shown.stdout


def test_batched_command_lines_write_what_separate_ones_write(tmp_path: Path) -> None:
    """Batched and separate runs of the CLI make the same noise, init and first row, and write
    the same files; that the loop computes the same thing batched is tested in float64 in
    tests/test_speed.py (in fp32 the grouped convolutions' rounding grows over iterations)."""
    runs = [("a", "0.3"), ("b", "0.5")]
    argv = lambda out, ckpt, p: cli(tmp_path / out, "--image", "astronaut", "--ckpt", ckpt,  # noqa: E731
                                    "--nlevel", p)  # fmt: skip
    configs = [parse(argv("batched", c, p)) for c, p in runs] + [RunConfig(nlevel=2.0)]
    assert [o.code for o in run(configs, max_batch=4)] == [0, 0, 2]
    for ckpt, nlevel in runs:
        assert denoising.main(argv("alone", ckpt, nlevel)) == 0
        alone, batched = outputs(tmp_path / "alone", ckpt), outputs(tmp_path / "batched", ckpt)
        assert {p.name for p in alone.existing()} == {p.name for p in batched.existing()}
        for name in ("noise", "noisy", "clean"):
            assert alone.path(name).read_bytes() == batched.path(name).read_bytes()
        a, b = alone.history(), batched.history()
        assert a["iteration"].tolist() == b["iteration"].tolist()
        assert a["psnr"][0] == pytest.approx(b["psnr"][0], abs=1e-4)  # same start
        report, alone_report = batched.config()["report"], alone.config()["report"]
        assert report["batch_size"] == 2 and report["status"] == "finished"
        assert report["trained_parameters"] == alone_report["trained_parameters"]
    # a batched run's checkpoint is a single run's: denoising.py --resume extends it alone
    longer = argv("batched", "a", "0.3")
    longer[longer.index("--num_iter") + 1] = "40"
    assert denoising.main(longer + ["--resume"]) == 0
    assert outputs(tmp_path / "batched", "a").history()["iteration"].tolist()[-1] == 39


def test_config_json_holds_the_run_it_was_asked_for(tmp_path: Path) -> None:
    """The settings stored with a run are the command line's, the registries' defaults filled
    in; read back into a RunConfig they make the same run (--reuse finds it ended)."""
    argv = cli(tmp_path, "--image", "astronaut", "--num_iter", "2", "--method", "dip", "--lr",
               "0.3", "--noise", "gaussian", "--stop", "emv", "--seed", "4")  # fmt: skip
    assert denoising.main(argv) == 0
    stored = RunConfig(**json.loads(outputs(tmp_path).path("config").read_text())["settings"])
    assert stored == parse(argv).resolved()
    assert (stored.lr, stored.seed, stored.alg, stored.nlevel) == (0.3, 4, "sgd", 0.18)
    [again] = run([RunConfig(**{**stored.__dict__, "reuse": True})])
    assert (again.code, again.action) == (0, "reused")


def test_python_api_recovers_a_file_and_an_array(tmp_path: Path) -> None:
    """README's example: a config, recovered from a (bundled) image, then from an array in
    memory, the first run's noisy observation: the same run (same seed), the same losses; a
    second call of the same run is refused unless it says --reuse, which returns it read back."""
    from engine import recover

    cfg = RunConfig(image="astronaut", crop=64, width=4, num_iter=20, show_every=10, gpu="cpu",
                    out_dir=str(tmp_path), ckpt="api", quiet=True)  # fmt: skip
    out = recover(cfg)
    assert out.image.shape == (3, 64, 64) and [r["iteration"] for r in out.history] == [0, 10, 19]
    assert out.report["final_psnr"] > out.report["noisy_psnr"]
    noisy = RunDir(tmp_path, "api").image("noisy")  # (H, W, 3) in [0, 1]
    array = recover(RunConfig(width=4, num_iter=20, show_every=10, gpu="cpu", ckpt="array",
                              out_dir=str(tmp_path), quiet=True), observed=noisy)  # fmt: skip
    assert [r["loss"] for r in array.history] == [r["loss"] for r in out.history]
    assert "final_psnr" not in array.report  # no clean image given
    with pytest.raises(InputError):
        recover(cfg)
    again = recover(dataclasses.replace(cfg, reuse=True))
    assert again.report == out.report and np.abs(again.image - out.image).max() <= 0.5 / 255
