"""A run's observation: the clean image observed through its task, or an observed image as it is.

``observe(cfg)`` reads and checks everything a run needs before anything is written: the images,
the crops, the task's inputs (a mask, a kernel), the sizes its prior and its metrics accept, the
lottery prior's mask file. Every problem is a one-line ``InputError``.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

from engine.config import RunConfig
from models import PRIORS
from models.lip import check_fits, file_sha256, load_ticket
from models.skip import INPUT_DEPTH, SCALES
from tasks import TASKS, Observation
from tasks.task import stack
from utils import InputError
from utils.images import EMBEDDED_DEFAULT, LoadedImage, centre_crop, crop_to_multiple, resolve_image
from utils.seeding import derive_seed

SMALLEST_SIDE = 11  # of an observation and a clean image: SSIM's 11 x 11 window


def observe(cfg: RunConfig, array: np.ndarray | None = None) -> Observation:
    """The observation of ``cfg`` (resolved): y = noise(A(x)) of the clean image (--image), or
    --observed as it is with an optional --clean reference, or ``array`` (an observed image given
    in memory, (C, H, W) in [0, 1]). With --mask (the lottery prior) the mask file's sha256 joins
    the data's identity, once it is found to fit."""
    if array is not None:
        observation = load_observed(cfg, LoadedImage(np.asarray(array, np.float32), "array",
                                                     None))  # fmt: skip
    elif cfg.observed is not None:
        observation = load_observed(cfg, resolve_image(cfg.observed, Path(cfg.data_dir)))
    else:
        observation = synthetic(cfg)
    sides = [*observation.y.shape[1:]]
    sides += [] if observation.clean is None else [*observation.clean.shape[1:]]
    if min(sides) < SMALLEST_SIDE:
        raise InputError(f"the observation would be {observation.y.shape[1]}x"
                         f"{observation.y.shape[2]}: images need sides of at least "
                         f"{SMALLEST_SIDE} pixels (SSIM's window); use a larger image or "
                         "--crop")  # fmt: skip
    if cfg.mask is not None:
        sizes = dict(in_channels=INPUT_DEPTH, out_channels=observation.y.shape[0],
                     width=cfg.width, scales=SCALES, skip=4)  # fmt: skip
        check_fits(load_ticket(cfg.mask), sizes)
        observation.identity |= {"mask": cfg.mask, "mask_sha256": file_sha256(cfg.mask)}
    return observation


def fit_to_prior(image: np.ndarray, cfg: RunConfig, what: str, multiple: bool = True
                 ) -> np.ndarray:  # fmt: skip
    """--crop, then the crop to the prior's multiple (unless --pad, or ``multiple`` is off: the
    image is not the prior's canvas), then the size check."""
    prior = PRIORS[cfg.prior]
    original = image.shape
    if cfg.crop is not None:
        if cfg.crop > min(image.shape[1:]):
            raise InputError(f"--crop {cfg.crop} exceeds the size of {what}, "
                             f"{image.shape[1]}x{image.shape[2]}")  # fmt: skip
        image = centre_crop(image, cfg.crop, cfg.crop)
    if not cfg.pad and multiple:
        image = crop_to_multiple(image, prior.multiple)
    smallest = prior.smallest_side(cfg.pad)
    if multiple and min(image.shape[1:]) < smallest:
        raise InputError(
            f"{what} is {original[1]}x{original[2]} (after crops {image.shape[1]}x"
            f"{image.shape[2]}) but the {cfg.prior} prior needs both sides >= {smallest} after "
            f"the crop to multiples of {prior.multiple}; use a larger image or --pad"
        )
    return np.ascontiguousarray(image)


def check_x(cfg: RunConfig, x_shape: tuple[int, ...]) -> None:
    smallest = PRIORS[cfg.prior].smallest_side(cfg.pad)
    if min(x_shape[1:]) < smallest:
        raise InputError(f"--task {cfg.task}: the image x would be {x_shape[1]}x{x_shape[2]} but "
                         f"the {cfg.prior} prior needs both sides >= {smallest}; use a larger "
                         "image or --crop")  # fmt: skip


def clean_image(cfg: RunConfig) -> LoadedImage:
    """--image, or the public default F16, or the image embedded in scikit-image when F16 is not
    at hand (said on stderr)."""
    if cfg.image is not None:
        return resolve_image(cfg.image, Path(cfg.data_dir))
    try:
        return resolve_image("F16", Path(cfg.data_dir))
    except InputError as err:
        print(f"note: {err}; using scikit-image's '{EMBEDDED_DEFAULT}'", file=sys.stderr)
        return resolve_image(EMBEDDED_DEFAULT)


def synthetic(cfg: RunConfig) -> Observation:
    """y = noise(A(x)) of the clean image x, A the task's operator (``Task.observe``)."""
    task = TASKS[cfg.task]
    loaded = clean_image(cfg)
    x = fit_to_prior(task.image(loaded.pixels), cfg, loaded.source, multiple=task.crops_to_prior)
    fit = lambda a, what: fit_to_prior(a, cfg, what, multiple=task.crops_to_prior)  # noqa: E731
    inputs, identity = task.inputs(cfg, x.shape, fit, Path(cfg.data_dir))
    physics = task.physics(cfg, inputs)
    y, noise = task.observe(cfg, x, physics, derive_seed(cfg.seed, "noise"))
    clean = physics.crop(torch.from_numpy(x)).numpy()  # the reference of the reported x
    x_shape = task.operator(cfg, stack([inputs]), [cfg.seed]).input_shape(y.shape)
    check_x(cfg, x_shape)
    identity = {"image": loaded.source, "image_sha256": loaded.sha256} | identity
    identity["shape"] = list(clean.shape)
    return Observation(y, np.ascontiguousarray(clean), noise, identity, x_shape, inputs)


def load_observed(cfg: RunConfig, observed: LoadedImage) -> Observation:
    """An observed image as it is, with an optional --clean reference of the reported x's size
    (y's, or y's ×factor for sr) and the task's inputs (--pixel_mask, --kernel)."""
    task = TASKS[cfg.task]
    canvas = task.crops_to_prior and task.keeps_shape  # y is then the prior's canvas
    y = fit_to_prior(observed.pixels, cfg, observed.source, multiple=canvas)
    fit = lambda a, what: fit_to_prior(a, cfg, what, multiple=canvas)  # noqa: E731
    inputs, identity = task.inputs(cfg, y.shape, fit, Path(cfg.data_dir))
    operator = task.operator(cfg, stack([inputs]), [cfg.seed])
    x_shape = operator.input_shape(y.shape)
    check_x(cfg, x_shape)
    clean = None
    reference = None if cfg.clean is None else resolve_image(cfg.clean, Path(cfg.data_dir))
    if reference is not None:
        whole = operator.crop_shape(operator.input_shape(observed.pixels.shape))
        if reference.pixels.shape != whole:
            raise InputError(
                f"--clean is {reference.pixels.shape} (channels, height, width) but --observed "
                f"{observed.pixels.shape} needs a reference of {whole}; give images that match"
            )
        scale = whole[1] // observed.pixels.shape[1]  # sr: the factor; else 1
        crop = None if cfg.crop is None else cfg.crop * scale
        clean = fit_to_prior(reference.pixels, dataclasses.replace(cfg, crop=crop), cfg.clean,
                             multiple=canvas)  # fmt: skip
    identity |= {"observed": observed.source, "observed_sha256": observed.sha256,
                 "clean": None if reference is None else reference.source,
                 "clean_sha256": None if reference is None else reference.sha256}  # fmt: skip
    return Observation(y, clean, None, identity | {"shape": list(y.shape)}, x_shape, inputs)
