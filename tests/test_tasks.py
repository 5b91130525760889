"""--task from the command line: every task with every prior and method (the registries),
inpainting, super-resolution, deblurring and blind deblurring, their outputs, batches, resume,
refusals; blind deblurring's kernel on a Levin crop."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import denoising
import lip
from engine import run
from engine.config import METHODS, RunConfig, parse
from engine.loop import build_model, fit
from models import PRIORS
from tasks import TASKS
from tasks.operators import KernelNet, convolve_valid
from tests.conftest import HAVE_LEVIN, IMAGE, LEVIN, cli, outputs
from utils.metrics import kernel_correlation


def kernel_png(tmp_path: Path, size: int = 7, colour: bool = False) -> str:
    """A small motion-like kernel as an 8-bit image."""
    k = np.zeros((size, size))
    k[size // 2, 1 : size - 1] = 1.0
    k[size // 2 - 1, size - 2] = 0.5
    pixels = (k / k.max() * 255).astype(np.uint8)
    path = tmp_path / ("kernel_rgb.png" if colour else "kernel.png")
    Image.fromarray(np.stack([pixels] * 3, -1) if colour else pixels).save(path)
    return str(path)


@pytest.fixture(scope="module")
def mask(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A lottery-prior mask of the width-4 skip net (one round of IMP, 3 iterations)."""
    out = tmp_path_factory.mktemp("mask")
    argv = ["--image", "astronaut", "--crop", "64", "--width", "4", "--rounds", "1",
            "--num_iter", "3", "--show_every", "1", "--save_every", "1", "--gpu", "cpu",
            "--ckpt", "m", "--out_dir", str(out), "--quiet", "--inits", "1"]  # fmt: skip
    assert lip.main(argv) == 0
    return str(out / "m_mask_1.pt")


# What the tests know each task and prior needs on the command line (a new one without an entry
# here is tried without: it must then run, or be refused in one line).
NEEDS = {"deblur": ["--kernel", "KERNEL"], "blind-deblur": ["--kernel", "KERNEL"],
         "lip": ["--mask", "MASK"]}  # fmt: skip


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("method", METHODS)
def test_every_task_prior_and_method_runs_or_is_refused_in_one_line(
    tmp_path: Path, capsys, mask: str, task: str, prior: str, method: str
) -> None:
    """Every combination of the registries runs three iterations and writes its outputs, or
    exits 2 with one line and writes nothing; those the tests know the flags of must run."""
    extra = [a.replace("KERNEL", kernel_png(tmp_path)).replace("MASK", mask)
             for a in NEEDS.get(task, []) + NEEDS.get(prior, [])]  # fmt: skip
    argv = cli(tmp_path, "--image", "astronaut", "--task", task, "--prior", prior,
               "--method", method, "--num_iter", "3", "--show_every", "1", "--save_every", "1",
               *extra)  # fmt: skip
    code = denoising.main(argv)
    err = capsys.readouterr().err.strip()
    if code == 2:
        assert re.fullmatch(r"error: [^\n]+", err) and "Traceback" not in err
        assert not (tmp_path / "out").exists()
    else:
        assert code == 0, err
        record = outputs(tmp_path).config()
        assert record["report"]["iterations_done"] == 3 and outputs(tmp_path).path("last").is_file()
        assert (record["settings"]["task"], record["settings"]["prior"]) == (task, prior)
    known = (task in ("denoise", "inpaint", "sr") or task in NEEDS) and prior in (
        "skip", "decoder", "drp", *NEEDS)  # fmt: skip
    assert code == 0 or not known, err


@pytest.mark.parametrize("task", ["inpaint", "sr", "deblur", "blind-deblur"])
def test_tasks_write_their_outputs(tmp_path: Path, task: str) -> None:
    extra = {"inpaint": ["--nlevel", "0.1"], "sr": [], "deblur": ["--kernel", kernel_png(tmp_path)],
             "blind-deblur": ["--kernel", kernel_png(tmp_path), "--kernel_size", "9", "--loss",
                              "l2_then_ssim", "--loss_switch", "10"]}[task]  # fmt: skip
    watch = ["--ema", "0.9", "--stop", "wmv", "--stop_observe"]  # observers of x, not of y
    argv = cli(tmp_path, "--task", task, "--image", IMAGE, "--num_iter", "20", *extra, *watch)
    assert denoising.main(argv) == 0
    run = outputs(tmp_path)
    last, clean, noisy, ema = (run.image(name) for name in ("last", "clean", "noisy", "ema"))
    assert last.shape == clean.shape == ema.shape and {"wmv", "emv"} <= set(run.history())
    expected = {"inpaint": (64, 64), "sr": (16, 16), "deblur": (58, 58), "blind-deblur": (58, 58)}
    assert noisy.shape[:2] == expected[task]
    assert clean.shape[:2] == (64, 64) if task in ("inpaint", "sr") else (58, 58)
    report = run.config()["report"]
    assert report["status"] == "finished" and np.isfinite(report["final_psnr"])
    if task == "inpaint":
        mask = run.image("pixel_mask")
        assert set(np.unique(mask)) == {0.0, 1.0} and 0.4 < mask.mean() < 0.6  # --keep 0.5
        assert (noisy[mask == 0] == 0).all()  # unobserved pixels are 0, outliers or not
    if task in ("deblur", "blind-deblur"):
        assert run.image("kernel").shape == (7, 7)
    if task == "blind-deblur":
        kernels = np.load(run.path("kernels"))
        assert kernels["estimated"].shape == (9, 9) and kernels["true"].shape == (7, 7)
        assert kernels["estimated"].sum() == pytest.approx(1.0, abs=1e-5)
        assert run.image("estimated_kernel").shape == (9, 9)
        assert 0 < report["kernel_correlation"] <= 1
        settings = run.config()["settings"]  # SelfDeblur's optimiser, filled in by the task
        assert (settings["alg"], settings["lr"], settings["lr_kernel"]) == ("adam", 0.01, 1e-4)
        assert settings["lr_milestones"] == "2000,3000,4000"


@pytest.mark.parametrize("task", ["sr", "deblur"])
def test_observers_watch_x_of_every_task(tmp_path: Path, task: str) -> None:
    """The stopping rules and the moving average keep images of x as the task reports it (for
    sr the high-resolution image, larger than y): their images have the last iterate's size."""
    extra = ["--kernel", kernel_png(tmp_path)] if task == "deblur" else []
    argv = cli(tmp_path, "--task", task, "--image", IMAGE, "--num_iter", "8", "--stop", "wmv",
               "--stop_window", "3", "--stop_patience", "2", "--ema", "0.9", *extra)  # fmt: skip
    assert denoising.main(argv) == 0
    run = outputs(tmp_path)
    assert run.image("stopped").shape == run.image("ema").shape == run.image("last").shape


def test_batched_sr_runs_with_the_lanczos2_downsampler_are_the_runs_alone(tmp_path: Path) -> None:
    """The projector's SR model downsamples by a constant Lanczos-2 kernel: not a run's state,
    so K runs share it through their checkpoints (it once broke the batch's first one)."""

    def argv(out: str, seed: str) -> list[str]:
        return cli(tmp_path / out, "--task", "sr", "--prior", "drp", "--factor", "2",
                   "--image", "astronaut", "--num_iter", "12", "--seed", seed,
                   "--ckpt", f"s{seed}")  # fmt: skip

    outcomes = run([parse(argv("batched", "0")), parse(argv("batched", "1"))], max_batch=2)
    assert [o.code for o in outcomes] == [0, 0]
    assert denoising.main(argv("alone", "1")) == 0
    batched, alone = outputs(tmp_path / "batched", "s1"), outputs(tmp_path / "alone", "s1")
    assert batched.config()["report"]["batch_size"] == 2
    assert batched.config()["settings"]["downsampler"] == "lanczos2"
    assert batched.history()["psnr"][-1] == pytest.approx(alone.history()["psnr"][-1], abs=1e-3)


def test_batched_inpainting_runs_have_their_own_masks(tmp_path: Path) -> None:
    def argv(out: str, seed: str) -> list[str]:
        return cli(tmp_path / out, "--task", "inpaint", "--image", "astronaut", "--num_iter",
                   "10", "--seed", seed, "--ckpt", f"s{seed}")  # fmt: skip

    outcomes = run([parse(argv("batched", "0")), parse(argv("batched", "1"))], max_batch=4)
    assert [o.code for o in outcomes] == [0, 0]
    assert denoising.main(argv("alone", "1")) == 0
    batched, alone = outputs(tmp_path / "batched", "s1"), outputs(tmp_path / "alone", "s1")
    assert batched.path("pixel_mask").read_bytes() == alone.path("pixel_mask").read_bytes()
    other = outputs(tmp_path / "batched", "s0")
    assert batched.path("pixel_mask").read_bytes() != other.path("pixel_mask").read_bytes()
    assert batched.config()["report"]["batch_size"] == 2
    assert batched.history()["psnr"][0] == pytest.approx(alone.history()["psnr"][0], abs=1e-4)


def test_blind_deblurring_resumes_exactly(tmp_path: Path) -> None:
    """The kernel generator, the loss switch and the step schedule continue where they were."""
    base = ["--task", "blind-deblur", "--image", "astronaut", "--kernel", kernel_png(tmp_path),
            "--loss", "l2_then_ssim", "--loss_switch", "15",
            "--lr_milestones", "12,25"]  # fmt: skip
    assert denoising.main(cli(tmp_path / "a", *base, "--num_iter", "30")) == 0
    assert denoising.main(cli(tmp_path / "b", *base, "--num_iter", "20")) == 0
    assert denoising.main(cli(tmp_path / "b", *base, "--num_iter", "30", "--resume")) == 0
    a, b = outputs(tmp_path / "a"), outputs(tmp_path / "b")
    assert a.path("history").read_text() == b.path("history").read_text()
    assert a.path("kernels").read_bytes() == b.path("kernels").read_bytes()


@pytest.mark.parametrize(
    "extra,message",
    [
        (lambda t: ["--task", "deblur"], "--task deblur needs --kernel"),
        (lambda t: ["--task", "deblur", "--kernel", kernel_png(t, colour=True)], "2-D"),
        (lambda t: ["--task", "deblur", "--kernel", kernel_png(t, size=60)], "too large"),
        (lambda t: ["--task", "sr", "--factor", "5"], "--factor 5 does not divide"),
        (lambda t: ["--task", "blind-deblur", "--kernel_size", "9"], "--kernel PATH"),
        (lambda t: ["--pixel_mask", kernel_png(t)], "--pixel_mask goes with --task inpaint"),
        (lambda t: ["--task", "inpaint", "--keep", "0"], "--keep"),
        (lambda t: ["--task", "inpaint", "--pixel_mask", kernel_png(t)], "kernel.png"),  # too small
        (lambda t: ["--lr_milestones", "a,b"], "--lr_milestones"),
        (lambda t: ["--task", "sr", "--noise", "shot"], "--noise shot has no level 0"),
    ],
)
def test_bad_task_input_is_one_line(tmp_path: Path, capsys, extra, message: str) -> None:
    assert denoising.main(cli(tmp_path, "--image", "astronaut", *extra(tmp_path))) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err, err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def levin_case(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(scene, kernel): Levin et al.'s image 1 and kernel 5 (13x13), the scene of a size x size
    observation; without ../shared, scikit-image's camera and a 13x13 diagonal motion kernel."""
    if HAVE_LEVIN:
        image = np.asarray(Image.open(LEVIN / "gt" / "im1.png"), np.float32) / 255
        kernel = np.asarray(Image.open(LEVIN / "gt" / "kernel5.png"), np.float32)
    else:
        from skimage.data import camera

        image = camera().astype(np.float32)[::2, ::2] / 255
        kernel = np.eye(13, dtype=np.float32)[::-1] + np.eye(13, k=1, dtype=np.float32)[::-1]
    n = size + kernel.shape[0] - 1
    top = (image.shape[0] - n) // 2
    return image[top : top + n, top : top + n], kernel / kernel.sum()


@pytest.mark.parametrize("size", [None, pytest.param(19, marks=pytest.mark.slow)])
def test_blind_deblurring_finds_the_kernel(size) -> None:
    """SelfDeblur's two generators on a 32x32 blurred crop, width 8, 200 iterations, the kernel's
    step 3e-3 (1e-4 needs thousands of iterations); the true size (13) or an over-specified one
    (19, marked slow: it took 147 s on the contended 2-core CPU, against 8 s for 13). Measured
    (2-core CPU, 2026-11-25), correlation with the true kernel at the start (a near-uniform
    softmax) -> after: Levin im1, kernel 5: 0.343 -> 0.617; the fresh clone's camera with a
    diagonal kernel: 0.383 -> 0.547. The over-specified size passed the same bound on Levin
    (its value was not recorded). One thread: the fallback's result depends on the thread count
    (two threads gave 0.423 in CI on a fresh clone, one thread 0.547)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        check_blind_deblurring(size)
    finally:
        torch.set_num_threads(threads)


def check_blind_deblurring(size) -> None:
    scene, kernel = levin_case(32)
    n = size or kernel.shape[0]
    cfg = RunConfig(method="dip", task="blind-deblur", width=8, num_iter=200, show_every=100,
                    kernel_size=n, lr_kernel=3e-3, loss="l2_then_ssim",
                    loss_switch=100).resolved()  # fmt: skip
    y = convolve_valid(torch.from_numpy(scene)[None, None], torch.from_numpy(kernel)[None])
    operator = KernelNet((n, n), [0])
    start = kernel_correlation(operator.kernel()[0].detach().numpy(), kernel)
    model = build_model(cfg, (1, 32 + n - 1, 32 + n - 1), [0], operator, scales=3, input_depth=8,
                        skip=16)  # fmt: skip
    fit(model, y, cfg, progress=False)
    estimate = operator.kernel()[0].detach().numpy()
    assert estimate.shape == (n, n) and (estimate >= 0).all()
    assert estimate.sum() == pytest.approx(1.0, abs=1e-5)
    assert kernel_correlation(estimate, kernel) > start + 0.1
