"""Denoising: y = noise(x), A the identity (You, Zhu, Qu, Ma, NeurIPS 2020: salt-and-pepper)."""

from __future__ import annotations

from tasks.task import Task


class Denoise(Task):
    """y = x + noise; x is the image (cropped to the prior's multiple, as the public code)."""

    name = "denoise"
    noisy_by_default = True  # --nlevel: the noise type's default (0.5 salt-and-pepper)
    default = True  # every run before tasks existed was a denoising run
