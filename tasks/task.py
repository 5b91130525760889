"""What a task is to the engine: the forward model of an observation, y = noise(A(x)).

DeepInverse calls this the physics. A task owns, for one kind of observation:

* ``operator(cfg, inputs, seeds)``: the forward operator A of the model y ≈ A(x) [+ g⊙g − h⊙h]
  for K runs (``tasks/operators.py``), from each run's ``inputs`` stacked along dimension 0;
  ``physics(cfg, inputs)``: the A that made a synthetic observation (the same operator, but for
  blind deblurring, whose model generates its kernel while the observation used the true one);
* ``inputs(cfg, shape, fit, data_dir)``: what its operator needs per run besides the image (an
  inpainting mask, a blur kernel) as arrays, and their identity (files, sha256), checked and
  loaded before anything is written; ``shape`` is the clean image's, or the observation's;
* ``observe(cfg, x, physics, seed)``: a synthetic observation of the clean image x, y = noise(A(x));
* ``check(cfg)``: one-line errors (``InputError``) for its settings, before anything is read;
* ``own_settings``: the ``RunConfig`` fields that are its own (meaningless for the other tasks:
  refused there when given, and left out of what defines a run); ``defaults``: the settings it
  fills where the command line leaves them (its paper's iterations, loss, schedule);
  ``prior_settings`` and ``prior_options``: per prior, the settings and the constructor options
  of the paper that ran that prior on this task (SelfDeblur's skip net for deblurring, the random
  projector's nets for inpainting and super-resolution); ``options(cfg, prior)`` gives the
  latter for a run (a task may let a setting of its own change them);
  ``variants``: named sets of settings that ``--variant NAME`` fills after those (the first is
  the default: SelfDeblur's for deblurring, beside Zhuang et al.'s), and ``unused(cfg)``: its
  own settings that play no part in a run (left out of what defines it);
* ``outputs(operator, k, observation)``: what a finished run writes besides the image (blind
  deblurring: the estimated kernel, its correlation with the true one);
* ``image(pixels)``: the clean image made of the loaded one (phase retrieval: its luminance);
  ``display(y)``: the observation shown as noisy.png; ``measures_image``: whether y is an
  image of x, whose PSNR is the input's (not a diffraction pattern).

The x that the prior generates has ``operator.input_shape(y.shape)``; what is reported and compared
with the clean image is ``operator.crop(x)``. A new task is a file in tasks/ with a subclass of
``Task`` and an entry in ``tasks.TASKS``: the command line, batching, resume and the registry test
then cover it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from tasks.operators import Operator
from utils import InputError
from utils.images import resolve_image
from utils.noise import Corruption, corrupt

# ``fit(a, what)`` crops an array (C, H, W) as the image was (--crop, the prior's multiple).
Fit = Callable[[np.ndarray, str], np.ndarray]


@dataclass
class Observation:
    """One run's observation y, its clean reference, and what its task's operator needs."""

    y: np.ndarray  # (C, H, W) float32 in [0, 1]
    clean: np.ndarray | None  # the reference of the reported x (operator.crop(x)), if any
    noise: Corruption | None  # the synthetic corruption, None for an observed image
    identity: dict  # sources, sha256 and shape: recorded, and checked on --resume
    x_shape: tuple[int, ...]  # the prior's output x (C, H, W)
    inputs: dict[str, np.ndarray] = field(default_factory=dict)  # the operator's, per run


class Task:
    """Denoising's defaults: A = I, x the image itself."""

    name: ClassVar[str] = "denoise"
    own_settings: ClassVar[tuple[str, ...]] = ()
    defaults: ClassVar[dict[str, Any]] = {}
    prior_settings: ClassVar[dict[str, dict[str, Any]]] = {}
    prior_options: ClassVar[dict[str, dict[str, Any]]] = {}
    variants: ClassVar[dict[str, dict[str, Any]]] = {}
    crops_to_prior: ClassVar[bool] = True  # x is the image: cropped to the prior's multiple
    keeps_shape: ClassVar[bool] = True  # A(x) has x's shape (an observed y is the canvas)
    noisy_by_default: ClassVar[bool] = False  # --nlevel default: the noise type's, or 0
    default: ClassVar[bool] = False  # the default task: unnamed in a run's identity and lines
    measures_image: ClassVar[bool] = True  # y is an image of x (its PSNR is the input's)

    def check(self, cfg: Any) -> None:
        """Refuse this task's bad settings in one line."""

    def variant_settings(self, variant: str | None) -> dict[str, Any]:
        """The settings ``--variant`` fills (None: the first variant's), with its name."""
        if not self.variants:
            return {}
        name = variant or next(iter(self.variants))
        return {"variant": name} | self.variants[name]

    def unused(self, cfg: Any) -> set[str]:
        """Own settings that play no part in the run of ``cfg`` (resolved)."""
        return set()

    def inputs(self, cfg: Any, shape: Sequence[int], fit: Fit, data_dir: Path
               ) -> tuple[dict[str, np.ndarray], dict]:  # fmt: skip
        """The operator's per-run arrays for an image (synthetic) or observation (observed) of
        ``shape``, and their identity."""
        return {}, {}

    def operator(self, cfg: Any, inputs: dict[str, Tensor], seeds: Sequence[int]) -> Operator:
        return Operator()

    def options(self, cfg: Any, prior: str) -> dict[str, Any]:
        """The constructor options of ``prior`` for a run of ``cfg`` on this task."""
        return dict(self.prior_options.get(prior, {}))

    def physics(self, cfg: Any, inputs: dict[str, np.ndarray]) -> Operator:
        """The operator that makes a synthetic observation of one run."""
        return self.operator(cfg, stack([inputs]), [cfg.seed])

    def observe(self, cfg: Any, x: np.ndarray, physics: Operator, seed: int
                ) -> tuple[np.ndarray, Corruption]:  # fmt: skip
        """y = noise(A(x)), the noise from the run's "noise" stream (``seed``)."""
        with torch.no_grad():
            clean = physics(torch.from_numpy(x)[None]).numpy()[0]
        noise = corrupt(clean, cfg.noise, cfg.nlevel, seed, cfg.mixture_sigma)
        return noise.noisy, noise

    def image(self, pixels: np.ndarray) -> np.ndarray:
        """The clean image a synthetic observation is made of, from the loaded (C, H, W)
        pixels (phase retrieval: their luminance)."""
        return pixels

    def display(self, y: np.ndarray) -> np.ndarray:
        """The observation as an image in [0, 1] (noisy.png)."""
        return y

    def saved(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Images of the inputs written beside the run (RunDir names), shown in [0, 1]."""
        return {}

    def outputs(self, operator: Operator, k: int, observation: Observation
                ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:  # fmt: skip
        """A finished run k's (images, arrays, report entries) beyond the recovered image."""
        return {}, {}, {}


def stack(inputs: Sequence[dict[str, np.ndarray]]) -> dict[str, Tensor]:
    """K runs' inputs as tensors with the runs along dimension 0."""
    return {name: torch.from_numpy(np.stack([i[name] for i in inputs])) for name in inputs[0]}


def load_kernel(path: str, data_dir: Path) -> tuple[np.ndarray, dict]:
    """A blur kernel from a gray image: (kh, kw) float32, non-negative, normalised to sum 1."""
    loaded = resolve_image(path, data_dir)
    if loaded.pixels.shape[0] != 1:
        raise InputError(f"--kernel {path}: a kernel is a 2-D (gray) image, got a colour image")
    kernel = loaded.pixels[0].astype(np.float64)
    if kernel.sum() <= 0:
        raise InputError(f"--kernel {path}: the kernel is all zeros")
    identity = {"kernel": loaded.source, "kernel_sha256": loaded.sha256}
    return (kernel / kernel.sum()).astype(np.float32), identity


def shown(kernel: np.ndarray) -> np.ndarray:
    """A kernel as an image: (1, kh, kw) scaled to its largest entry."""
    return kernel[None] / kernel.max()
