"""benchmarks/levin.py: the command lines of both profiles, a tiny profile end to end (blind,
over-specified and true-kernel runs scored after the alignment), refusals. On Levin et al.'s set
when ../shared has it, else on a stand-in of the same layout made from scikit-image's camera."""

from csv import DictReader
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.signal import convolve2d

from benchmarks import levin
from engine.config import parse
from tests.conftest import HAVE_LEVIN, LEVIN

SIZES = (19, 17, 15, 27, 13, 21, 23, 23)  # Levin's kernels 1 to 8
ROTATED = (1, 2, 3, 5, 6, 7)  # stored as the rotation of the kernel that blurred (docs/RESULTS.md)


def standin(root: Path, side: int = 96) -> Path:
    """Levin's layout (gt/imI.png, gt/kernelK.png, imI_kernelK_img.png) with camera crops and
    kernels of Levin's sizes (an anti-diagonal line, heavier at one end), each observation the
    'valid' blur of a larger scene; all kernels but 4 and 8 are stored rotated by 180°, as in
    the set."""
    from skimage.data import camera

    (root / "gt").mkdir(parents=True)
    scene = camera().astype(np.float64) / 255
    for k, size in enumerate(SIZES, 1):
        kernel = np.diag(np.linspace(0.2, 1.0, size))[::-1]
        stored = kernel[::-1, ::-1] if k in ROTATED else kernel
        Image.fromarray(np.uint8(255 * stored / stored.max())).save(root / "gt" / f"kernel{k}.png")
        for i in range(1, 5):
            top = 60 * i
            sharp = scene[top : top + side + size - 1, top : top + side + size - 1]
            inner = sharp[size // 2 : size // 2 + side, size // 2 : size // 2 + side]
            blurred = convolve2d(sharp, kernel / kernel.sum(), mode="valid")
            for image, path in ((inner, f"gt/im{i}.png"), (blurred, f"im{i}_kernel{k}_img.png")):
                Image.fromarray(np.uint8(np.round(255 * image))).save(root / path)
    return root


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return LEVIN if HAVE_LEVIN else standin(tmp_path / "levin")


def test_full_profile_is_selfdeblurs_setting_on_all_32_cases(data_dir: Path, tmp_path,
                                                              capsys) -> None:  # fmt: skip
    argv = ["--profile", "full", "--data_dir", str(data_dir), "--out_dir", str(tmp_path)]
    assert levin.main([*argv, "--dry_run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 64  # 32 blind runs and 32 with the true kernel
    cfgs = [parse(line.split()[2:]) for line in lines]
    for cfg in cfgs:
        cfg.check()  # settings denoising.py accepts
    blind = [c for c in cfgs if c.task == "blind-deblur"]
    assert len(blind) == 32 and sum(c.task == "deblur" for c in cfgs) == 32
    for cfg in (c.resolved() for c in cfgs):  # SelfDeblur's, the defaults of both tasks
        assert (cfg.width, cfg.num_iter, cfg.crop, cfg.method) == (128, 5000, None, "dip")
        assert (cfg.loss, cfg.loss_switch, cfg.lr_milestones) == ("l2_then_ssim", 1000,
                                                                  "2000,3000,4000")  # fmt: skip
    for cfg in blind:  # the kernel size given is SelfDeblur's (selfdeblur_levin.py:54-69)
        k = int(cfg.ckpt.split("_k")[1].split("_")[0])
        assert cfg.kernel_size == (17, 15, 13, 27, 11, 19, 21, 21)[k - 1]
        assert not cfg.no_nonlocal  # SelfDeblur's generator, with its non-local blocks
    assert levin.main([*argv, "--dry_run", "--kernel_sizes", "file"]) == 0
    files = [parse(line.split()[2:]) for line in capsys.readouterr().out.strip().splitlines()]
    for cfg in (c for c in files if c.task == "blind-deblur"):  # the option: the file's side
        with Image.open(cfg.kernel) as kernel:
            assert kernel.size == (cfg.kernel_size, cfg.kernel_size)
    known = [c.resolved() for c in cfgs if c.task == "deblur"]
    ours = blind[0].resolved()  # the same optimizer as SelfDeblur's blind runs
    assert all((c.alg, c.lr, c.reg_noise_std) == (ours.alg, ours.lr, ours.reg_noise_std)
               for c in known)  # fmt: skip


def test_the_quick_profiles_command_lines_are_accepted(data_dir: Path, tmp_path, capsys) -> None:
    argv = ["--profile", "quick", "--data_dir", str(data_dir), "--out_dir", str(tmp_path)]
    assert levin.main([*argv, "--dry_run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 9  # 4 cases, blind and true kernel, and one over-specified blind run
    for line in lines:
        parse(line.split()[2:]).check()


def test_a_tiny_profile_runs_and_scores(
    data_dir: Path, tmp_path: Path, monkeypatch, one_thread
) -> None:
    """An exact and a 1.5x over-specified kernel size on one case (kernel 5, 13x13), 64x64
    crops, width 4, 4 iterations: three runs (the true-kernel run is shared), two rows."""
    tiny = levin.Profile((levin.Case(1, 5), levin.Case(1, 5, 1.5)), 4, 4, 64)
    monkeypatch.setitem(levin.PROFILES, "tiny", tiny)
    csv = tmp_path / "levin.csv"
    argv = ["--profile", "tiny", "--data_dir", str(data_dir), "--out_dir", str(tmp_path / "out"),
            "--csv", str(csv), "--gpu", "cpu"]  # fmt: skip
    assert levin.main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*_config.json")) == [
        "blind_im1_k5_n11_config.json", "blind_im1_k5_n21_config.json",
        "deblur_im1_k5_config.json"]  # fmt: skip
    with csv.open() as f:
        rows = list(DictReader(f))
    assert len(rows) == 2
    sizes = [(r["true_size"], r["given_size"], float(r["max_shift"])) for r in rows]
    assert sizes == [("13", "11", 5.0), ("13", "21", 9.0)]  # SelfDeblur's 11; 5 + (21 - 13) / 2
    for row in rows:
        assert float(row["error_ratio_ssd"]) > 0 and float(row["error_ratio_spectral"]) > 0
        assert 0 < float(row["kernel_correlation"]) <= 1
        assert abs(float(row["blind_shift_rows"])) <= float(row["max_shift"])
        assert row["kernel_rotated"] == "True"  # kernel 5 is stored rotated
    used, stored = tmp_path / "out" / "kernels" / "kernel5.png", data_dir / "gt" / "kernel5.png"
    with Image.open(used) as used, Image.open(stored) as stored:
        np.testing.assert_array_equal(np.asarray(used), np.asarray(stored)[::-1, ::-1])
    before = csv.read_text()
    assert levin.main([*argv, "--table"]) == 0  # scores the same finished runs again
    assert csv.read_text() == before


@pytest.mark.parametrize("kernel", [4, 6])
def test_the_true_kernel_is_oriented_by_the_observation(data_dir: Path, kernel: int) -> None:
    """Kernel 6 of the set explains its observations as a correlation (its file is the rotation
    of the convolution's kernel), kernel 4 as a convolution; the stand-in copies that."""
    assert levin.rotated(data_dir, kernel) == (kernel in ROTATED)
    as_is, turned = levin.misfits(data_dir, kernel)
    assert max(as_is, turned) > 10 * min(as_is, turned)  # not a close call: > 10 dB apart


def test_orientation_prints_every_kernel(data_dir: Path, capsys) -> None:
    assert levin.main(["--data_dir", str(data_dir), "--orientation"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.endswith("rotated") for line in lines] == [k in ROTATED for k in range(1, 9)]


@pytest.mark.parametrize("bad", [["--data_dir", "DIR"], ["--profile", "huge"], ["--nope"]])
def test_bad_input_is_one_line(tmp_path: Path, capsys, bad: list[str]) -> None:
    bad = [str(tmp_path) if arg == "DIR" else arg for arg in bad]
    assert levin.main([*bad, "--out_dir", str(tmp_path), "--dry_run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err, err
