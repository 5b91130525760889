"""Shared fixtures and helpers of the tests (no test module imports another: what several use is
here). Paper images come from ../shared/data/denoising when it is there (never committed);
without it the tests use images bundled with scikit-image, so that a fresh clone checks the same
properties. Only tests marked ``gpu``, ``slow`` or ``slurm`` are ever skipped."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings
from torch import Tensor

from engine.config import RunConfig
from engine.loop import build_model, fit_batch
from experiments.sets import Profile
from utils.images import DEFAULT_DATA_DIR, SHARED_DATA, SHARED_IMAGES, centre_crop, resolve_image
from utils.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent


# Property tests (hypothesis): CI draws a fixed set of 100 examples (the same every run: about
# 15 s on a busy 2-core machine); --runslow or HYPOTHESIS_PROFILE=slow draws 1000, at random.
settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True, database=None)
settings.register_profile("slow", max_examples=1000, deadline=None)


def pytest_configure(config: pytest.Config) -> None:
    """Hypothesis's profile ("ci" unless --runslow or HYPOTHESIS_PROFILE says otherwise). Under
    pytest-xdist (pyproject's ``-n auto``: one worker per core) each worker computes on
    one thread, and so do the processes its tests start: OpenMP threads of several workers on
    the same cores would contend (small nets ran several times slower)."""
    slow = "slow" if config.getoption("--runslow") else "ci"
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", slow))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"


HAVE_PAPER_IMAGES = (SHARED_IMAGES / "F16.png").is_file()
# The image of the behavioural tests: the paper's F16, or scikit-image's chelsea (the cat).
TEST_IMAGE = ("F16", SHARED_IMAGES) if HAVE_PAPER_IMAGES else ("cat", DEFAULT_DATA_DIR)
IMAGE, DATA_DIR = TEST_IMAGE
LEVIN = SHARED_DATA / "levin"  # Levin et al.'s deblurring set, beside the clone when it is there
HAVE_LEVIN = (LEVIN / "gt" / "im1.png").is_file()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
SHAPE = (3, 40, 40)  # the engine tests' images


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:  # by marker, not keyword: a clone in a folder named gpu has that keyword
        if item.get_closest_marker("slow") and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if item.get_closest_marker("gpu") and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


def image_crop(size: int) -> np.ndarray:
    """The centre size x size crop of TEST_IMAGE, (3, size, size) float32."""
    return np.ascontiguousarray(centre_crop(resolve_image(IMAGE, DATA_DIR).pixels, size, size))


def small_problem(runs: int = 1, shape=SHAPE, seed: int = 0, fractions=0.3, dtype=torch.float32
                  ) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``runs`` (noisy, clean) pairs of random images, a fraction of entries salted or peppered
    (one fraction, or one per run), as (K, C, H, W) tensors."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.rand(runs, *shape, generator=g)
    hit = torch.rand(clean.shape, generator=g) < torch.as_tensor(fractions).view(-1, 1, 1, 1)
    noisy = torch.where(hit, torch.rand(clean.shape, generator=g).round(), clean)
    return noisy.to(dtype), clean.to(dtype)


def config(**settings) -> RunConfig:
    """A tiny run's settings, resolved (the loop takes them so)."""
    return RunConfig(**({"width": 4, "show_every": 5, "save_every": 10} | settings)).resolved()


def fit_small(cfg: RunConfig, rows, *, shape=SHAPE, scales: int, states=None, saved=None):
    """``cfg`` on rows of the small random problem (run k: seed 5k), float64, batched; ``saved``
    collects the checkpoints."""
    y, clean = (t.double()[list(rows)] for t in small_problem(2, shape=shape))
    seeds = [5 * k for k in rows]
    model = build_model(cfg, y.shape[1:], seeds, scales=scales).double()
    checkpoint = None if saved is None else saved.append
    return fit_batch(model, y, cfg, seeds=seeds, clean=clean, states=states,
                     checkpoint=checkpoint, progress=False)  # fmt: skip


def cli(tmp_path: Path, *extra: str, crop: str | None = "64") -> list[str]:
    """A tiny denoising.py command line with its outputs in tmp_path/out."""
    args = ["--width", "4", "--num_iter", "30", "--show_every", "10", "--save_every", "10",
            "--gpu", "cpu", "--out_dir", str(tmp_path / "out"), "--data_dir", str(DATA_DIR),
            "--quiet"]  # fmt: skip
    return args + ([] if crop is None else ["--crop", crop]) + list(extra)


def outputs(tmp_path: Path, ckpt: str = "test") -> RunDir:
    """The folder of run ``ckpt`` made by ``cli(tmp_path, ...)``."""
    return RunDir(tmp_path / "out", ckpt)


def assert_same_run(a: RunDir, b: RunDir) -> None:
    """The same history, number for number, and the same last iterate."""
    ha, hb = a.history(), b.history()
    assert list(ha) == list(hb)
    for column in ha:
        np.testing.assert_array_equal(ha[column], hb[column], err_msg=column)
    np.testing.assert_array_equal(a.image("last"), b.image("last"))
    assert a.config()["report"]["iterations_done"] == b.config()["report"]["iterations_done"]


def tiny_profile(iters: int, **more) -> Profile:
    """A profile of the figure sets shrunk to 64x64 crops, width / 32 and ``iters`` iterations
    (every run, the early-stopping paper's 5000 too, as the quick profile)."""
    rows = {"show_every": 20, "save_every": 20, "min_iters": iters}
    return Profile("tiny", 64, 1 / 32, iters / 150_000, **(rows | more))


def roundtrip(obj):
    """``obj`` through torch.save and torch.load, as a checkpoint file holds it (so later steps
    of the loop cannot alter what was saved)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def keep_by_iteration(saved: dict):
    """A loop's ``checkpoint`` callback that keeps each (single-run) state by its iteration."""
    return lambda state: saved.setdefault(state["iteration"], roundtrip(state))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def one_thread(monkeypatch) -> None:
    """One torch thread here and in any process a test starts: the same arithmetic on both
    sides, and no two-thread runs contending for the CPU of a small, shared machine."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
