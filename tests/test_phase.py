"""Far-field phase retrieval (--task phase-retrieval): the operator's shapes and Parseval on odd
sizes, the trivial ambiguities (shift, twin, global phase) that give the same measurement and
that the metric removes, the noise model, Fienup's baselines, the double DIP from the command
line (batched, resumed, refused in one line)."""

import math
from csv import DictReader

import numpy as np
import pytest
import torch

import denoising
from benchmarks import phase
from engine import run
from engine.config import parse
from experiments.phase import Fienup
from tasks.operators import FarField, KnownPhase
from tasks.phase_retrieval import box_support, measure, synthetic_phase
from tests.conftest import cli, outputs
from utils.metrics import align_fourier, psnr, twin

ODD = [((7, 9), 2.0), ((6, 5), 2.5), ((11, 11), 3.0)]  # object sides, oversampling


def rng_complex(shape, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=torch.complex128, generator=g)


def operators(size, oversampling):
    support = torch.from_numpy(box_support(size, oversampling))
    phase = torch.from_numpy(synthetic_phase(size, 1.3))
    return FarField(support[None].expand(2, -1, -1)), KnownPhase(support[None], phase)


@pytest.mark.parametrize("size,oversampling", ODD)
def test_the_operator_keeps_the_energy_and_its_shapes_invert(size, oversampling) -> None:
    model, physics = operators(size, oversampling)
    n1, n2 = size
    big = tuple(math.ceil(oversampling * n) for n in size)
    assert model.canvas == big and model.size == size
    assert model.output_shape((2, n1, n2)) == (1, *big)
    assert model.input_shape((1, *big)) == (2, *size)
    assert physics.output_shape((1, n1, n2)) == (1, *big)
    assert physics.crop_shape((1, *size)) == (1, *size)
    x = torch.rand(2, 2, n1, n2, dtype=torch.float64)
    y = model(x)
    assert y.shape == (2, *model.output_shape((2, n1, n2)))
    energy = (x[:, :1] ** 2).sum((1, 2, 3))  # Σ|o|² = Σ m² (|e^{iφ}| = 1)
    torch.testing.assert_close((y**2).sum((1, 2, 3)), energy.float(), rtol=1e-5, atol=0)
    assert torch.equal(model.crop(x), x[:, :1])
    assert (model.support.sum((1, 2)) == n1 * n2).all()


@pytest.mark.parametrize("size,oversampling", ODD)
def test_shift_twin_and_global_phase_give_the_same_measurement(size, oversampling) -> None:
    """On the canvas: |F(o(· − t))| = |F(conj(o(−·)))| = |F(e^{iθ} o)| = |F(o)|; in the model,
    the twin of the object in its box, (flip(m), −flip(φ)), measures the same y."""
    model, _ = operators(size, oversampling)
    o = model.pad(rng_complex((1, 1, *size)))
    y = torch.fft.fft2(o, norm="ortho").abs()
    for other in (o.roll((2, -3), (-2, -1)), twin(o), o * np.exp(0.7j)):
        torch.testing.assert_close(torch.fft.fft2(other, norm="ortho").abs(), y)
    x = torch.rand(1, 2, *size, dtype=torch.float64)
    flipped = torch.cat([x[:, :1].flip(-2, -1), 1 - x[:, 1:].flip(-2, -1)], 1)  # φ → −flip(φ)
    torch.testing.assert_close(model(flipped), model(x))


@pytest.mark.parametrize("shape", [(2, 1, 13, 11), (1, 3, 9, 14)])
def test_alignment_undoes_the_ambiguities_on_odd_sizes(shape) -> None:
    """A shifted, twinned, phase-rotated copy aligns back to the original exactly (complex),
    and a shifted, flipped magnitude (real, no global phase) scores as the original."""
    x = rng_complex(shape, 1)
    theta = torch.tensor([0.7, -2.5])[: shape[0]].view(-1, 1, 1, 1)
    copy = torch.exp(1j * theta) * twin(x).roll((3, -5), (-2, -1))
    torch.testing.assert_close(align_fourier(copy, x), x)
    torch.testing.assert_close(align_fourier(x.roll((1, 2), (-2, -1)), x), x)
    m = x.abs()
    moved = align_fourier(twin(m).roll((-4, 6), (-2, -1)), m, phase=False)
    assert torch.equal(moved, m) and torch.isinf(psnr(moved, m))
    noisy = m + 0.01 * torch.randn(m.shape, generator=torch.Generator().manual_seed(2))
    shifted = align_fourier(twin(noisy).roll((2, 2), (-2, -1)), m, phase=False)
    assert psnr(shifted, m) == pytest.approx(psnr(noisy, m).item(), abs=1e-9)


def test_the_models_metric_aligns_magnitudes_within_the_canvas() -> None:
    model, _ = operators((9, 7), 2.0)
    m = torch.rand(2, 1, 9, 7, dtype=torch.float64)
    assert torch.equal(model.align(m.flip(-2, -1), m), m)  # the twin of a box's content
    worse = model.align(torch.rand(2, 1, 9, 7, dtype=torch.float64), m)
    assert worse.shape == m.shape and (psnr(worse, m, dim=(1, 2, 3)) < 20).all()


def test_the_noise_counts_photons_and_adds_outliers() -> None:
    clean = np.abs(rng_complex((40, 50), 3).numpy())
    y, fields = measure(clean, photons=1e6, outliers=0.0, seed=0)
    assert set(fields) == {"counts"} and np.abs(y - clean).max() < 0.01 * clean.max()
    y, _ = measure(clean, photons=4.0, outliers=0.0, seed=0)
    counts = 4.0 * y**2  # integers: Poisson with mean 4 |F o|²
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-3)
    assert abs(counts.mean() / (4.0 * (clean**2).mean()) - 1) < 0.05
    y, fields = measure(clean, photons=0.0, outliers=0.2, seed=1)
    hit = fields["dead"] | fields["hot"]
    assert abs(hit.mean() - 0.2) < 0.03 and abs(fields["hot"].mean() - 0.1) < 0.03
    assert (y[fields["dead"]] == 0).all() and np.allclose(y[fields["hot"]], clean.max())
    np.testing.assert_allclose(y[~hit], clean[~hit], rtol=1e-6)
    assert np.array_equal(measure(clean, 0.0, 0.0, 5)[0], clean.astype(np.float32))


def test_hio_recovers_a_noiseless_object_up_to_the_ambiguities() -> None:
    """A 15 x 13 complex object (a camera crop with the synthetic phase), 2x oversampling, the
    box as support: HIO (10 starts, 300 + 50 ER iterations) finds it to a relative error below
    1e-4 after alignment; ER alone stagnates (Fienup, 1982)."""
    from skimage.data import camera

    size = (15, 13)
    m = camera()[200:215, 250:263].astype(np.float32) / 255
    support = box_support(size, 2.0)
    physics = KnownPhase(torch.from_numpy(support)[None],
                         torch.from_numpy(synthetic_phase(size, np.pi / 2)))  # fmt: skip
    y = physics(torch.from_numpy(m)[None, None])[0, 0].numpy()
    truth = physics.pad(physics.object(torch.from_numpy(m)[None, None].double()))
    errors = {}
    for method in (Fienup(hio=300, er=50), Fienup(hio=0, er=350)):
        found = method.run(y, support, seed=0)
        aligned = align_fourier(torch.from_numpy(found.x)[None, None], truth)
        errors[method.name] = float((aligned - truth).abs().norm() / truth.abs().norm())
        assert found.fit == pytest.approx(found.fits.min()) and found.x[support == 0].max() == 0
    assert errors["HIO+ER"] < 1e-4 < 0.01 < errors["ER"]


def pr_cli(tmp_path, *extra: str) -> list[str]:
    """A tiny phase-retrieval run: a 21 x 21 object (odd), its 42 x 42 measurement."""
    return cli(tmp_path, "--task", "phase-retrieval", "--image", "astronaut", "--pad",
               "--num_iter", "20", "--show_every", "5", "--noise", "shot", "--nlevel", "1000",
               *extra, crop="21")  # fmt: skip


def test_the_double_dip_runs_batched_as_alone_and_resumes(tmp_path) -> None:
    argv = lambda where, seed, *more: pr_cli(tmp_path / where, "--seed", seed, "--ckpt",  # noqa: E731
                                             f"s{seed}", *more)  # fmt: skip
    outcomes = run([parse(argv("batched", "0")), parse(argv("batched", "1"))], max_batch=2)
    assert [o.code for o in outcomes] == [0, 0]
    assert denoising.main(argv("alone", "1")) == 0
    batched, alone = outputs(tmp_path / "batched", "s1"), outputs(tmp_path / "alone", "s1")
    assert batched.path("noise").read_bytes() == alone.path("noise").read_bytes()
    # the same start (float32 rounding of the grouped nets then drifts apart, as for inpainting)
    assert batched.history()["psnr"][0] == pytest.approx(alone.history()["psnr"][0], abs=1e-4)
    assert batched.config()["report"]["batch_size"] == 2
    record = alone.config()
    assert record["report"]["noisy_psnr"] is None and record["data"]["shape"] == [1, 21, 21]
    assert alone.image("noisy").shape == (42, 42) and alone.image("last").shape == (21, 21)
    assert alone.image("support").shape == (42, 42)
    assert np.load(alone.path("noise"))["noisy"].shape == (1, 42, 42)
    assert record["report"]["trained_parameters"] > 0
    assert denoising.main(argv("resumed", "1", "--num_iter", "10")) == 0
    assert denoising.main(argv("resumed", "1", "--resume")) == 0
    resumed = outputs(tmp_path / "resumed", "s1")
    assert resumed.path("history").read_text() == alone.path("history").read_text()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--oversampling", "1.5"], "--oversampling must be at least 2"),
        (["--noise", "gaussian", "--nlevel", "0.1"], "--noise shot"),
        (["--outliers", "1"], "--outliers"),
        (["--observed", "x.png"], "no --observed"),
    ],
)
def test_bad_phase_retrieval_input_is_one_line(tmp_path, capsys, extra, message) -> None:
    argv = pr_cli(tmp_path, *extra)
    if "--observed" in extra:  # --observed excludes --image and --nlevel
        argv = [a for a in argv if a not in ("--image", "astronaut", "--nlevel", "1000")]
    assert denoising.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err, err
    assert not (tmp_path / "out").exists()


def test_the_benchmark_writes_its_table_and_the_comparison_page(tmp_path, monkeypatch,
                                                                one_thread) -> None:  # fmt: skip
    """benchmarks.phase on a 16x16 crop, 3 iterations, 2 starts: every method's row for both
    measurements, its markdown table, and that table on docs/COMPARISON.md."""
    monkeypatch.setitem(phase.PROFILES, "quick", {"crop": 16, "pad": True, "width": 4,
                                                  "num_iter": 3, "show_every": 1})  # fmt: skip
    monkeypatch.setattr(phase, "STARTS", 2)
    docs = tmp_path / "docs"
    argv = ["--images", "astronaut", "--table_dir", str(docs), "--out_dir", str(tmp_path / "o"),
            "--gpu", "cpu"]  # fmt: skip
    assert phase.main(argv) == 0
    with (docs / "phase_quick.csv").open() as f:
        rows = list(DictReader(f))
    assert [(r["measurement"], r["method"].split(" (")[0]) for r in rows] == [
        (case, method) for case in phase.CASES
        for method in ("HIO+ER", "ER", "double DIP", "double DIP + DOP")]  # fmt: skip
    assert all(0 < float(r["psnr"]) < 100 for r in rows)
    page = (docs / "COMPARISON.md").read_text()
    assert "## Phase retrieval, profile `quick`" in page
    assert (docs / "phase_quick.md").read_text().splitlines()[-1] in page
