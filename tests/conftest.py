"""Shared fixtures. Paper images come from ../shared/data/denoising when it is there (never
committed); without it the tests use images bundled with scikit-image, so that a fresh clone
checks the same properties. Only tests marked ``gpu`` or ``slow`` are ever skipped."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.images import DEFAULT_DATA_DIR, SHARED_IMAGES, centre_crop, resolve_image

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (pyproject's ``-n auto``: one worker per core) each worker computes on
    one thread, and so do the processes its tests start: OpenMP threads of several workers on
    the same cores would contend (small nets ran several times slower)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"


HAVE_PAPER_IMAGES = (SHARED_IMAGES / "F16.png").is_file()
# The image of the behavioural tests: the paper's F16, or scikit-image's chelsea (the cat).
TEST_IMAGE = ("F16", SHARED_IMAGES) if HAVE_PAPER_IMAGES else ("cat", DEFAULT_DATA_DIR)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


def image_crop(size: int) -> np.ndarray:
    """The centre size x size crop of TEST_IMAGE, (3, size, size) float32."""
    name, data_dir = TEST_IMAGE
    return np.ascontiguousarray(centre_crop(resolve_image(name, data_dir).pixels, size, size))


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
