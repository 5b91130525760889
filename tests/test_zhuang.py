"""Zhuang et al.'s practical blind deblurring (--variant zhuang): the ℓ1/ℓ2 gradient ratio, the
over-specified kernel box and the window of x that follows the kernel, the FFT convolution of
large boxes, DOP's g, h by plain gradient descent beside Adam, the command line, resume, refusals
and benchmarks/blind.py end to end on a stand-in of Levin's layout."""

import re
from csv import DictReader
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.signal import convolve2d

import denoising
from benchmarks import blind
from engine import run
from engine.config import RunConfig, parse
from engine.loop import Optimizers, build_model, make_optimizer
from tasks.blind_deblur import odd_nearest
from tasks.operators import FFT_ABOVE, Blur, KernelNet, convolve_valid, fft_convolve_valid
from tests.conftest import IMAGE, cli, outputs
from utils.losses import gradient_l1_over_l2, objective


def differences(h: int, w: int, c: int = 1) -> int:
    """m: the forward differences of a (c, h, w) image."""
    return c * ((h - 1) * w + h * (w - 1))


def test_l1_over_l2_on_known_images() -> None:
    """A vertical step in a 9x7 image: 9 differences of 1 among m, ratio sqrt(9 / m); one
    bright interior pixel: 4 of 1, 2 / sqrt(m); a constant image: 0."""
    step = torch.zeros(1, 1, 9, 7)
    step[..., 3:] = 1.0
    m = differences(9, 7)
    assert gradient_l1_over_l2(step).item() == pytest.approx((9 / m) ** 0.5, rel=1e-6)
    dot = torch.zeros(1, 1, 9, 7)
    dot[..., 4, 3] = 0.7
    assert gradient_l1_over_l2(dot).item() == pytest.approx(2 / m**0.5, rel=1e-6)
    assert gradient_l1_over_l2(torch.full((1, 3, 5, 5), 0.4)).item() == 0.0
    checker = torch.from_numpy(np.indices((5, 7)).sum(0) % 2).float()[None, None]
    assert gradient_l1_over_l2(checker).item() == pytest.approx(1.0)  # all of equal size


def test_l1_over_l2_is_scale_and_shift_invariant_per_run(rng) -> None:
    x = torch.from_numpy(rng.random((3, 2, 11, 9))).float()
    ratios = gradient_l1_over_l2(x)
    m = differences(11, 9, 2)
    assert ((ratios > m**-0.5) & (ratios < 1)).all()
    for scale, shift in ((0.3, 0.0), (-2.0, 0.5), (7.0, -3.0)):
        torch.testing.assert_close(gradient_l1_over_l2(scale * x + shift), ratios, rtol=1e-5,
                                   atol=0)  # fmt: skip
    torch.testing.assert_close(gradient_l1_over_l2(x[1:2]), ratios[1:2])  # each run its own


def test_l1_over_l2_gradient_is_finite_and_lowers_it(rng) -> None:
    """The gradient is finite (0 at a constant image, where the ratio is 0/ε) and a small step
    against it lowers the ratio; the objective adds exactly λ times it."""
    flat = torch.full((1, 1, 7, 5), 0.3, requires_grad=True)
    (grad,) = torch.autograd.grad(gradient_l1_over_l2(flat).sum(), flat)
    assert torch.equal(grad, torch.zeros_like(grad))
    x = torch.from_numpy(rng.random((1, 1, 13, 11))).float().requires_grad_()
    ratio = gradient_l1_over_l2(x)
    (grad,) = torch.autograd.grad(ratio.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().max() > 0
    assert gradient_l1_over_l2(x - 1e-2 * grad / grad.norm()) < ratio
    y = torch.rand(1, 1, 13, 11)
    plain = objective(x, y, x, 0, loss="l2")
    torch.testing.assert_close(objective(x, y, x, 0, loss="l2", l1l2=2e-4), plain + 2e-4 * ratio)


@pytest.mark.parametrize("value,odd", [(64, 65), (63.9, 63), (63.5, 63), (65, 65), (66, 67),
                                       (0.2, 1)])  # fmt: skip
def test_the_box_is_the_nearest_odd_side(value: float, odd: int) -> None:
    assert odd_nearest(value) == odd


def test_fft_convolution_is_the_valid_convolution(rng) -> None:
    """Odd sizes, two runs, two channels: the FFT path equals SciPy's 'valid' convolution for a
    box above FFT_ABOVE and the direct grouped convolution for a small kernel."""
    x = rng.random((2, 2, 47, 41))
    big = rng.random((2, 33, 35))
    assert FFT_ABOVE < 33 * 35
    out = convolve_valid(torch.from_numpy(x), torch.from_numpy(big)).numpy()
    for k in range(2):
        for c in range(2):
            np.testing.assert_allclose(out[k, c], convolve2d(x[k, c], big[k], mode="valid"),
                                       rtol=1e-9)  # fmt: skip
    small = torch.from_numpy(rng.random((2, 7, 5)))
    torch.testing.assert_close(fft_convolve_valid(torch.from_numpy(x), small),
                               convolve_valid(torch.from_numpy(x), small))  # fmt: skip


def test_the_kernel_window_undoes_an_off_centre_kernel(rng) -> None:
    """y = x ∗ k with a 5x5 kernel; the same y is x̂ ∗ K with K the kernel moved to offset o in a
    15x15 box and x̂ the scene moved by o − 10. The kernel window of x̂ is then exactly the
    centre window of the true model (the reference), for two runs with their own offsets; the
    centre window is off by up to 5 pixels."""
    h, m, n, margin = 21, 5, 15, 12
    scene = torch.from_numpy(rng.random((1, 1, h + n - 1 + 2 * margin, h + n - 1 + 2 * margin)))
    k = torch.from_numpy(rng.random((m, m)))
    k /= k.sum()
    x = scene[..., margin : margin + h + m - 1, margin : margin + h + m - 1]
    y, reference = convolve_valid(x, k[None]), Blur(k[None]).crop(x)
    offsets = [(0, 0), (10, 10), (3, 7), (10, 0)]
    for pair in (offsets[:2], offsets[2:]):
        boxes, canvases = [], []
        for o in pair:
            box = torch.zeros(n, n, dtype=k.dtype)
            box[o[0] : o[0] + m, o[1] : o[1] + m] = k
            top, left = (margin - (n - m) + a for a in o)
            canvases.append(scene[0, :, top : top + h + n - 1, left : left + h + n - 1])
            boxes.append(box)
        boxes, canvases = torch.stack(boxes), torch.stack(canvases)
        torch.testing.assert_close(convolve_valid(canvases, boxes), y.expand(2, -1, -1, -1))
        window = KernelNet((n, n), [0, 1], window="kernel")
        window.kernel = lambda boxes=boxes: boxes  # the kernels of this test
        torch.testing.assert_close(window.crop(canvases), reference.expand(2, -1, -1, -1))
        centre = KernelNet((n, n), [0, 1]).crop(canvases)
        assert not torch.allclose(centre, reference.expand(2, -1, -1, -1))


def test_the_zhuang_variant_fills_its_settings_and_selfdeblur_defines_runs_as_before() -> None:
    zhuang = RunConfig(task="blind-deblur", variant="zhuang", kernel="k.png").resolved()
    assert (zhuang.loss, zhuang.l1l2, zhuang.lr, zhuang.kernel_fraction, zhuang.x_window) == (
        "l2", 1e-4, 1e-3, 0.5, "kernel")  # fmt: skip
    assert {"kernel_fraction", "x_window", "l1l2"} <= set(zhuang.defining())
    given = RunConfig(task="blind-deblur", variant="zhuang", kernel="k.png", l1l2=2e-4,
                      kernel_size=9).resolved()  # fmt: skip
    assert given.l1l2 == 2e-4 and "kernel_fraction" not in given.defining()  # the size rules
    faithful = RunConfig(task="blind-deblur", kernel="k.png")
    assert faithful.resolved().variant == "selfdeblur"
    new = {"variant", "kernel_fraction", "x_window", "l1l2", "alg_c"}
    assert not new & set(faithful.defining())  # earlier runs keep their definition
    assert not new & set(RunConfig(task="blind-deblur", kernel="k.png", method="dop",
                                   alg_c="adam").defining())  # fmt: skip
    assert "alg_c" in RunConfig(task="blind-deblur", kernel="k.png", method="dop").defining()


def test_dop_steps_g_and_h_by_plain_gradient_descent_beside_adam() -> None:
    """Blind deblurring under DOP: the skip net and the kernel generator take Adam, g and h one
    SGD step of exactly −lr_c times their gradient; --alg_c adam puts every group in one Adam."""
    cfg = RunConfig(task="blind-deblur", method="dop", kernel="k.png", width=4, lr_c=50.0
                    ).resolved()  # fmt: skip
    operator = KernelNet((5, 5), [0])
    model = build_model(cfg, (1, 20, 20), [0], operator, scales=2)
    optimizer = make_optimizer(model, cfg)
    assert isinstance(optimizer, Optimizers)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-2, 50.0, 1e-4]  # prior, g h, kernel
    assert [type(p).__name__ for p in optimizer.parts] == ["Adam", "SGD"]
    y = torch.rand(1, 1, 16, 16)
    x, prediction = model(None)
    ((prediction - y) ** 2).mean().backward()
    before = [p.detach().clone() for p in (model.sparse.g, model.sparse.h)]
    grads = [p.grad.clone() for p in (model.sparse.g, model.sparse.h)]
    weight = model.operator.w2.detach().clone()
    optimizer.step()
    for p, b, g in zip((model.sparse.g, model.sparse.h), before, grads, strict=True):
        torch.testing.assert_close(p.detach(), b - 50.0 * g)
    moved = (model.operator.w2.detach() - weight).abs()  # Adam's first step: lr per entry
    assert moved.max() <= 1e-4 * 1.001 and moved.max() > 0.5e-4
    single = make_optimizer(model, RunConfig(**(vars(cfg) | {"alg_c": "adam"})))
    assert isinstance(single, torch.optim.Adam) and len(single.param_groups) == 3


def zhuang_argv(tmp_path: Path, *extra: str) -> list[str]:
    kernel = np.zeros((7, 7), np.uint8)
    kernel[3, 1:6], kernel[2, 5] = 255, 128
    tmp_path.mkdir(parents=True, exist_ok=True)
    Image.fromarray(kernel).save(tmp_path / "kernel.png")
    return cli(tmp_path, "--task", "blind-deblur", "--variant", "zhuang", "--image", IMAGE,
               "--kernel", str(tmp_path / "kernel.png"), "--crop", "63", *extra)  # fmt: skip


def test_the_variant_runs_with_dop_and_resumes_exactly(tmp_path: Path) -> None:
    """A 57x57 observation of a 63x63 crop: --kernel_fraction 0.6 gives a 35x35 box (the FFT
    path), x 91x91; DOP with impulse outliers, 12 iterations at once or 8 then 4 more."""
    base = ["--kernel_fraction", "0.6", "--method", "dop", "--noise", "mixture", "--nlevel",
            "0.1", "--mixture_sigma", "0.01", "--lr_milestones", "5,9", "--num_iter", "12",
            "--show_every", "4", "--save_every", "4"]  # fmt: skip
    assert denoising.main(zhuang_argv(tmp_path / "a", *base)) == 0
    assert denoising.main(zhuang_argv(tmp_path / "b", *base, "--num_iter", "8")) == 0
    assert denoising.main(zhuang_argv(tmp_path / "b", *base, "--resume")) == 0
    a, b = outputs(tmp_path / "a"), outputs(tmp_path / "b")
    assert a.path("history").read_text() == b.path("history").read_text()
    assert a.path("kernels").read_bytes() == b.path("kernels").read_bytes()
    report = a.config()["report"]
    assert report["kernel_box"] == [35, 35] and FFT_ABOVE < 35 * 35
    assert a.image("last").shape[:2] == a.image("clean").shape[:2] == (57, 57)
    assert all(abs(v) <= 17 for v in report["kernel_centre_offset"])
    settings = a.config()["settings"]
    assert (settings["alg"], settings["alg_c"], settings["loss"]) == ("adam", "sgd", "l2")


@pytest.mark.parametrize("extra,message", [
    (["--kernel_size", "61"], "kernel box 61x61 exceeds the 57x57 observation"),
    (["--kernel_fraction", "0"], "--kernel_fraction must be in (0, 1]"),
    (["--kernel_fraction", "1.04"], "--kernel_fraction must be in (0, 1]"),
    (["--l1l2=-1e-4"], "--l1l2 must be a number >= 0"),
    (["--x_window", "left"], "--x_window"),
])  # fmt: skip
def test_bad_settings_are_one_line(tmp_path: Path, capsys, extra: list[str], message: str
                                   ) -> None:  # fmt: skip
    code = denoising.main(zhuang_argv(tmp_path, "--num_iter", "1", *extra))
    err = capsys.readouterr().err.strip()
    assert code == 2 and re.fullmatch(r"error: [^\n]+", err) and message in err, err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_only_deblurring_has_variants(tmp_path: Path, capsys) -> None:
    argv = cli(tmp_path, "--image", IMAGE, "--variant", "zhuang", "--num_iter", "1")
    assert denoising.main(argv) == 2
    assert capsys.readouterr().err.strip() == "error: --task denoise has no --variant zhuang"


def standin(root: Path, kernel: int = 5, side: int = 72) -> Path:
    """Levin's layout for one kernel (13x13, a heavier-ended anti-diagonal, stored as it
    blurs; also as kernel 1, which --data_dir is checked by) and 4 side x side crops of
    scikit-image's camera, each observation the 'valid' blur of a larger crop around it."""
    from skimage.data import camera

    (root / "gt").mkdir(parents=True)
    k = np.diag(np.linspace(0.2, 1.0, 13))[::-1]
    Image.fromarray(np.uint8(255 * k / k.max())).save(root / "gt" / f"kernel{kernel}.png")
    Image.fromarray(np.uint8(255 * k / k.max())).save(root / "gt" / "kernel1.png")
    scene = camera().astype(np.float64) / 255
    for i in range(1, 5):
        sharp = scene[70 * i : 70 * i + side + 12, 70 * i : 70 * i + side + 12]
        blurred = convolve2d(sharp, k / k.sum(), mode="valid")
        for image, path in ((sharp[6:-6, 6:-6], f"gt/im{i}.png"),
                            (blurred, f"im{i}_kernel{kernel}_img.png")):  # fmt: skip
            Image.fromarray(np.uint8(np.round(255 * image))).save(root / path)
    return root


def test_the_benchmark_runs_and_scores_a_tiny_profile(tmp_path: Path, monkeypatch, one_thread,
                                                      capsys) -> None:  # fmt: skip
    """One case (image 1, kernel 5), low noise and impulses, 3 iterations at width 4 on 56x56
    observations (box 29): 5 blind runs and 2 references, scored with both error ratios."""
    data = standin(tmp_path / "levin")
    monkeypatch.setitem(blind.PROFILES, "tiny", blind.Profile(((1, 5),), 4, 3, 56,
                                                              ("low", "impulse")))  # fmt: skip
    argv = ["--profile", "tiny", "--data_dir", str(data), "--out_dir", str(tmp_path / "out"),
            "--csv", str(tmp_path / "blind_tiny.csv"), "--gpu", "cpu"]  # fmt: skip
    assert blind.main([*argv, "--dry_run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 7
    cfgs = [parse(line.split()[2:]) for line in lines]
    for cfg in cfgs:
        cfg.check()
    assert {c.resolved().kernel_fraction for c in cfgs if c.task == "blind-deblur"} == {0.5}
    assert blind.main(argv) == 0
    with (tmp_path / "blind_tiny.csv").open() as f:
        rows = list(DictReader(f))
    assert [(r["noise"], r["method"]) for r in rows] == [
        ("low", "l1l2"), ("low", "tv"), ("low", "selfdeblur"), ("impulse", "l1l2-dop"),
        ("impulse", "l1l2")]  # fmt: skip
    assert {row["generator"] for row in rows} == {blind.GENERATORS[False]}  # SelfDeblur's
    for row in rows:
        assert row["kernel_box"] == "29" and row["true_size"] == "13"
        assert float(row["error_ratio"]) > 0 and float(row["error_ratio_spectral"]) > 0
        assert abs(float(row["shift_rows"])) <= float(row["max_shift"]) <= 15
    assert "| low (σ 0.01) | ℓ1/ℓ2 (0.0001) | 1 |" in capsys.readouterr().out
    page = (tmp_path / "COMPARISON.md").read_text()  # the comparison page carries the table
    assert "## Blind deblurring with noise (Zhuang et al.), profile `tiny`" in page
    assert "| low (σ 0.01) | ℓ1/ℓ2 (0.0001) | 1 |" in page and "| 32.64 |" in page


def test_the_profiles_command_lines(tmp_path: Path, monkeypatch, capsys) -> None:
    """The full profile's settings on one case of the stand-in (whole 72x72 images: a 60x60
    observation, a 31x31 box): 4 runs per Gaussian noise, 3 for impulses; a bad --shard."""
    data = standin(tmp_path / "levin")
    full = blind.PROFILES["full"]
    monkeypatch.setitem(blind.PROFILES, "one", blind.Profile(((1, 5),), full.width,
                                                             full.num_iter, full.side))  # fmt: skip
    argv = ["--data_dir", str(data), "--out_dir", str(tmp_path), "--dry_run"]
    assert blind.main(["--profile", "one", *argv]) == 0
    cfgs = [parse(line.split()[2:]) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(cfgs) == 11 and sum(c.task == "deblur" for c in cfgs) == 3
    for cfg in (c.resolved() for c in cfgs):
        assert (cfg.width, cfg.num_iter, cfg.crop) == (128, 5000, None)
    assert blind.main(["--profile", "quick", *argv, "--shard", "3/2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --shard must be I/N with 1 <= I <= N, got 3/2"


def test_batched_runs_are_the_runs_alone(tmp_path: Path, one_thread) -> None:
    """Two seeds of the variant in one loop (grouped generators, batched kernel nets, the FFT
    path, per-run windows) log what the second logs alone."""

    def argv(out: str, seed: str) -> list[str]:
        return zhuang_argv(tmp_path / out, "--kernel_fraction", "0.6", "--num_iter", "4",
                           "--show_every", "3", "--save_every", "3", "--seed", seed, "--ckpt",
                           f"s{seed}")  # fmt: skip

    outcomes = run([parse(argv("batched", "0")), parse(argv("batched", "1"))], max_batch=2)
    assert [o.code for o in outcomes] == [0, 0]
    assert denoising.main(argv("alone", "1")) == 0
    batched, alone = outputs(tmp_path / "batched", "s1"), outputs(tmp_path / "alone", "s1")
    assert batched.config()["report"]["batch_size"] == 2
    for column in ("loss", "psnr"):
        np.testing.assert_allclose(batched.history()[column], alone.history()[column],
                                   rtol=1e-4)  # fmt: skip
