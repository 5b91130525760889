"""The command line end to end: outputs, refusals, resume, bad input. Tiny nets, few iterations."""

import csv
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import denoising
from tests.conftest import ROOT


def cli(tmp_path: Path, *extra: str, data_dir: Path | None = None) -> list[str]:
    args = ["--crop", "64", "--width", "4", "--num_iter", "30", "--show_every", "10",
            "--save_every", "10", "--device", "cpu", "--out_dir", str(tmp_path / "out"),
            "--quiet"]  # fmt: skip
    if data_dir is not None:
        args += ["--data_dir", str(data_dir)]
    return args + list(extra)


def read_history(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_run_writes_every_output(tmp_path: Path, data_dir: Path) -> None:
    assert denoising.main(cli(tmp_path, "--image", "F16", "--ckpt", "f16", data_dir=data_dir)) == 0
    out = tmp_path / "out"
    for name in ("last", "noisy", "clean", "sparse"):
        with Image.open(out / f"f16_{name}.png") as img:
            assert img.format == "PNG" and img.size == (64, 64) and img.mode == "RGB"
    history = read_history(out / "f16_history.csv")
    assert [int(r["iteration"]) for r in history] == [0, 10, 20, 29]
    config = json.loads((out / "f16_config.json").read_text())
    assert config["status"] == "finished" and config["seed"] == 0 and config["method"] == "dop"
    assert config["final_psnr"] == pytest.approx(float(history[-1]["psnr"]))
    assert config["oracle_best_psnr_vs_clean"] == max(float(r["psnr"]) for r in history)
    assert config["device"].startswith("cpu") and "torch" in config["versions"]
    noise = np.load(out / "f16_noise.npz")
    hit = noise["salt"] | noise["pepper"]
    assert 0.45 < hit.mean() < 0.55  # --nlevel 0.5 by default
    assert np.all(noise["noisy"][noise["salt"]] == 1)
    noisy_png = np.asarray(Image.open(out / "f16_noisy.png")).transpose(2, 0, 1) / 255
    np.testing.assert_allclose(noisy_png, noise["noisy"], atol=0.5 / 255 + 1e-6)
    assert not list(out.glob(".*tmp"))  # atomic writes leave no temporaries


def test_refuses_to_overwrite_another_run(tmp_path: Path, capsys) -> None:
    args = cli(tmp_path, "--image", "astronaut", "--num_iter", "5")
    assert denoising.main(args) == 0
    before = (tmp_path / "out" / "test_history.csv").read_bytes()
    assert denoising.main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "out" / "test_history.csv").read_bytes() == before
    assert denoising.main(args + ["--overwrite", "--num_iter", "6"]) == 0


def test_resume_ends_like_an_uninterrupted_run(tmp_path: Path) -> None:
    base = ["--image", "astronaut", "--method", "dop"]
    assert denoising.main(cli(tmp_path / "a", *base, "--num_iter", "40")) == 0
    assert denoising.main(cli(tmp_path / "b", *base, "--num_iter", "20")) == 0
    assert denoising.main(cli(tmp_path / "b", *base, "--num_iter", "40", "--resume")) == 0
    a, b = tmp_path / "a" / "out", tmp_path / "b" / "out"
    assert read_history(a / "test_history.csv") == read_history(b / "test_history.csv")
    assert (a / "test_last.png").read_bytes() == (b / "test_last.png").read_bytes()
    # a finished run is reused, and a checkpoint of other settings is refused
    assert denoising.main(cli(tmp_path / "b", *base, "--num_iter", "40", "--resume")) == 0
    assert (
        denoising.main(
            cli(tmp_path / "b", *base, "--num_iter", "60", "--resume", "--nlevel", "0.3")
        )
        == 2
    )


def test_grayscale_and_padding_keep_every_pixel(tmp_path: Path) -> None:
    args = cli(tmp_path, "--image", "camera", "--method", "dip")
    args[args.index("--crop") + 1] = "45"
    assert denoising.main(args + ["--pad"]) == 0
    with Image.open(tmp_path / "out" / "test_last.png") as img:
        assert img.size == (45, 45) and img.mode == "L"
    assert not (tmp_path / "out" / "test_sparse.png").exists()  # DIP has no sparse term


def test_default_image_falls_back_to_the_embedded_one(tmp_path: Path, monkeypatch, capsys) -> None:
    def offline(url, timeout):
        raise OSError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert denoising.main(cli(tmp_path, "--num_iter", "2", data_dir=tmp_path / "empty")) == 0
    assert "astronaut" in capsys.readouterr().err
    config = json.loads((tmp_path / "out" / "test_config.json").read_text())
    assert config["image"] == "skimage.data.astronaut"


def tiny_png(tmp_path: Path) -> str:
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "tiny.png")
    return str(tmp_path / "tiny.png")


def garbage(tmp_path: Path) -> str:
    (tmp_path / "garbage.png").write_bytes(b"GIF89a broken")
    return str(tmp_path / "garbage.png")


@pytest.mark.parametrize(
    "make_args,message",
    [
        (lambda t: ["--image", str(t / "missing.png")], "no image file"),
        (lambda t: ["--image", "no_such_image"], "known image"),
        (lambda t: ["--image", garbage(t)], "cannot read"),
        (lambda t: ["--image", tiny_png(t), "--crop", "20"], "--pad"),
        (lambda t: ["--image", "astronaut", "--crop", "40"], "--pad"),
        (lambda t: ["--image", "astronaut", "--crop", "600"], "exceeds"),
        (lambda t: ["--image", "astronaut", "--nlevel", "1.5"], "--nlevel"),
        (lambda t: ["--image", "astronaut", "--nlevel", "-0.1"], "--nlevel"),
        (lambda t: ["--image", "astronaut", "--width", "0"], "--width"),
        (lambda t: ["--image", "astronaut", "--lr", "-1"], "--lr"),
        (lambda t: ["--image", "astronaut", "--resume"], "no checkpoint"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys, make_args, message
) -> None:
    args = cli(tmp_path, *make_args(tmp_path))
    if "--crop" in make_args(tmp_path):  # the case sets its own crop
        i = args.index("--crop")
        del args[i : i + 2]
    assert denoising.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_divergence_is_reported_and_keeps_finite_outputs(tmp_path: Path, capsys) -> None:
    args = cli(tmp_path, "--image", "astronaut", "--lr_c", "1e9", "--num_iter", "60")
    assert denoising.main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "NaN" in err and "iteration" in err and "\n" not in err
    config = json.loads((tmp_path / "out" / "test_config.json").read_text())
    assert config["status"] == "diverged" and np.isfinite(config["final_psnr"])
    assert Image.open(tmp_path / "out" / "test_last.png").size == (64, 64)


def test_command_line_process(tmp_path: Path) -> None:
    """The real entry point: exit codes and a one-line error without traceback."""
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
