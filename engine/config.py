"""The settings of a run, in one form: ``RunConfig``.

The command line is built from its fields (one flag per field, with the field's name, default and
help), ``config.json`` stores the fields as they are, the loop reads them, and ``--resume`` compares
the fields that define a run (``defining``). Settings left as None are filled once, by
``resolved``: from the task's and the prior's registries (``tasks.TASKS``, ``models.PRIORS``).
``to_argv`` is the inverse of ``parse``, for the places that start a process.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from models import PRIORS
from tasks import TASKS
from tasks.operators import DOWNSAMPLERS
from utils import InputError
from utils.images import DEFAULT_DATA_DIR
from utils.losses import LOSS_NAMES
from utils.metrics import SSIM_PADDINGS
from utils.noise import NOISES
from utils.stopping import EMV_IMAGES, RULES

REFERENCE_NUMEL = 3 * 512 * 512  # image size at which the public lr_c = 500 was tuned
LR_C_SCALINGS = ("none", "n", "sqrt")
METHODS = ("dop", "dip")  # with the sparse term g⊙g − h⊙h, or the prior alone
# Settings neither the prior nor the task fills (either may set any of them).
GENERIC_DEFAULTS = {"method": "dop", "num_iter": 150_000, "lr_milestones": "", "width": 128,
                    "loss": "l2", "tv": 0.0, "l1l2": 0.0, "stop": "none"}  # fmt: skip
RESOLVED = (*GENERIC_DEFAULTS, "alg", "lr", "reg_noise_std")  # never None once resolved
VARIANTS = tuple(dict.fromkeys(name for task in TASKS.values() for name in task.variants))


def setting(default: Any, help: str, group: str, *, type: Any = None, choices=None,
            defines_run: bool = True, per_run: bool = False) -> Any:  # fmt: skip
    """A field of RunConfig and its flag: ``type`` is needed where the default is None.
    ``defines_run``: a resumed run must have the same value; ``per_run``: runs that differ in it
    may still share one loop (a batch)."""
    meta = {"help": help, "group": group, "type": type, "choices": choices,
            "defines_run": defines_run, "per_run": per_run}  # fmt: skip
    return field(default=default, metadata=meta)


DATA, TASK, MODEL, OPTIM, STOP, RUN = ("the data", "the task (forward operator)", "the model",
                                       "optimisation",
                                       "early stopping and smoothing (no ground truth)",
                                       "running and outputs")  # fmt: skip


@dataclass(frozen=True)
class RunConfig:
    # --- the data
    image: str | None = setting(
        None, "clean image to corrupt: a paper image (F16, Peppers, Baboon, kodim03), a path, "
        "or a scikit-image image (astronaut, camera, coffee, ...). Default: F16, or astronaut "
        "when F16 cannot be fetched", DATA, type=str, per_run=True)  # fmt: skip
    noise: str = setting(
        "salt_pepper", "the synthetic corruption (utils/noise.py): salt_pepper (the paper's), "
        "gaussian, mixture (gaussian plus salt_pepper outliers), shot or speckle", DATA,
        choices=tuple(NOISES), per_run=True)  # fmt: skip
    nlevel: float | None = setting(
        None, "the noise level: salt_pepper and mixture: the fraction of entries (per channel) "
        "set to 0 or 1; gaussian, speckle: the std; shot: photons at full intensity (default: "
        + ", ".join(f"{name} {kind.default:g}" for name, kind in NOISES.items())
        + "; 0 for every task but denoise)", DATA, type=float, per_run=True)  # fmt: skip
    mixture_sigma: float = setting(0.05, "the Gaussian std of --noise mixture", DATA,
                                   per_run=True)  # fmt: skip
    observed: str | None = setting(
        None, "an already corrupted image to recover, used as it is (no synthetic noise; "
        "excludes --image and --nlevel)", DATA, type=str, per_run=True)  # fmt: skip
    clean: str | None = setting(
        None, "with --observed: the clean reference for PSNR/SSIM (without it only the loss is "
        "logged)", DATA, type=str, per_run=True)  # fmt: skip
    crop: int | None = setting(None, "centre N x N crop first, for quick runs", DATA, type=int,
                               per_run=True)  # fmt: skip
    pad: bool = setting(
        False, "run the net on a canvas padded to a multiple of 32 and crop its output back, so "
        "no pixel is lost (default: centre crop to multiples of 32, as the public code)",
        DATA)  # fmt: skip
    seed: int = setting(
        0, "one seed for everything: the corruption, the weights, the input z, g and h, and the "
        "input perturbation each draw from their own stream derived from it", DATA,
        per_run=True)  # fmt: skip
    # --- the task
    task: str = setting(
        "denoise", "what the observation is (tasks/): denoise (y = x + noise), inpaint (a pixel "
        "mask), sr (x4 antialiased bicubic downsampling), deblur (a 'valid' convolution with "
        "--kernel), blind-deblur (the kernel is unknown and generated too, SelfDeblur), "
        "phase-retrieval (the magnitudes of the Fourier transform of the zero-padded image as "
        "the magnitude of a complex object, two generators); --nlevel adds the --noise on top",
        TASK, choices=tuple(TASKS))  # fmt: skip
    keep: float = setting(0.5, "inpaint: the fraction of pixels kept by a Bernoulli mask", TASK,
                          per_run=True)  # fmt: skip
    pixel_mask: str | None = setting(
        None, "inpaint: a mask image instead of --keep (white = observed; gray thresholded at 0.5, "
        "the channels' mean), the image's size after the crops", TASK, type=str,
        per_run=True)  # fmt: skip
    factor: int = setting(4, "sr: the downsampling factor s (it must divide the image's sides)",
                          TASK)  # fmt: skip
    downsampler: str | None = setting(
        None, "sr: the model's x1/s downsampling: bicubic (antialiased, the kernel that makes the "
        "observation) or lanczos2 (the Deep Image Prior's Lanczos-2 kernel, a strided "
        "convolution, as the random projector's code fits it; the observation stays bicubic) "
        "(default: bicubic; lanczos2 for --prior drp, its code's)", TASK, type=str,
        choices=tuple(DOWNSAMPLERS))  # fmt: skip
    kernel: str | None = setting(
        None, "deblur: the blur kernel, a gray image normalised to sum 1; blind-deblur: the true "
        "kernel that makes a synthetic observation (and is compared with the estimate)", TASK,
        type=str, per_run=True)  # fmt: skip
    oversampling: float = setting(
        2.0, "phase-retrieval: the canvas side over the object's side (>= 2 per side; the "
        "object is zero-padded into the centre of a canvas of ceil(s*n) per side)",
        TASK)  # fmt: skip
    object_phase: float = setting(
        math.pi / 2, "phase-retrieval: the peak (radians) of the object's smooth synthetic "
        "phase, a centred Gaussian bump of width a quarter of the object (0: a real "
        "non-negative object)", TASK, per_run=True)  # fmt: skip
    outliers: float = setting(
        0.0, "phase-retrieval: the fraction of detector pixels that read 0 or the largest "
        "magnitude (dead or hot, equal chance), after the --noise shot photon counts", TASK,
        per_run=True)  # fmt: skip
    kernel_size: int | None = setting(
        None, "blind-deblur: the side N of the estimated N x N kernel (default: the size of "
        "--kernel; with --kernel_fraction, that rule; larger than the true kernel is allowed)",
        TASK, type=int)  # fmt: skip
    variant: str | None = setting(
        None, "deblur, blind-deblur: whose defaults: selfdeblur (Ren et al., CVPR 2020: l2 then "
        "1 - SSIM, the true kernel size; the default) or zhuang (Zhuang et al., IJCV 2023: l2 "
        "plus --l1l2 1e-4, the kernel size over-specified by --kernel_fraction 0.5, the reported "
        "x following the kernel, --x_window kernel; and ours: --lr 1e-3); every setting it "
        "fills can be given too",
        TASK, type=str, choices=VARIANTS, defines_run=False)  # fmt: skip
    kernel_fraction: float | None = setting(
        None, "blind-deblur without --kernel_size: the kernel box's side is the odd number "
        "nearest F x min(H, W) of the observation, ties up (Zhuang et al.'s 'about half the image "
        "size'; default: none, the true kernel's size; --variant zhuang 0.5)", TASK,
        type=float)  # fmt: skip
    x_window: str | None = setting(
        None, "blind-deblur: which observation-sized window of the larger x is reported (and "
        "regularised): centre (the canvas's, SelfDeblur's) or kernel (the one the estimated "
        "kernel's centre of mass aligns with y: an off-centre kernel in an over-specified box "
        "shifts x by as much; --variant zhuang's)", TASK, type=str,
        choices=("centre", "kernel"))  # fmt: skip
    no_nonlocal: bool = setting(
        False, "deblur, blind-deblur: the plain skip net as the image generator, without the "
        "three dot-product non-local blocks of SelfDeblur's (default: with them, as its "
        "networks/skip.py)", TASK)  # fmt: skip
    # --- the model
    method: str | None = setting(
        None, "dop: y ~ A(x) + g*g - h*h (the sparse term absorbs outliers); dip: y ~ A(x) "
        "(default: the prior's: dop for skip, the public code's; dip for the others, as their "
        "papers run them; dip for deblurring, SelfDeblur's)", MODEL, type=str,
        choices=METHODS)  # fmt: skip
    prior: str = setting(
        "skip", "the generator of x (models/): skip (the DIP U-Net, DOP's), lip (a sparse "
        "subnetwork of it, --mask), decoder (the deep decoder), drp (the deep random projector)",
        MODEL, choices=tuple(PRIORS))  # fmt: skip
    width: int | None = setting(
        None, "the prior's channels: at every scale of the skip net; the deep decoder's k "
        "(default: the prior's; 128, the random projector 64)", MODEL, type=int)  # fmt: skip
    # (Not defining by its path: the mask file's sha256 is part of the data's identity.)
    mask: str | None = setting(
        None, "with --prior lip: a mask file written by lip.py (the lottery image prior's sparse "
        "subnetwork and the weights it starts from); the --width it was found with", MODEL,
        type=str, defines_run=False)  # fmt: skip
    loss: str | None = setting(
        None, "data-fit loss: l2 (mean squared), l1 (mean absolute), rmse (root mean squared) or "
        "l2_then_ssim (l2, then 1 - SSIM after --loss_switch iterations: SelfDeblur's) "
        "(default: the prior's and the task's; l2, the random projector rmse, deblurring "
        "l2_then_ssim)", MODEL, type=str, choices=LOSS_NAMES)  # fmt: skip
    ssim_padding: str = setting(
        "zero", "--loss l2_then_ssim: the SSIM map of its 1 - SSIM: zero (SelfDeblur's SSIM.py: "
        "windows zero-padded at the border, a map of the image's size) or valid (only windows "
        "inside the image, as the metric)", MODEL, choices=SSIM_PADDINGS)  # fmt: skip
    tv: float | None = setting(
        None, "weight of the total-variation penalty of x added to the loss (default: the "
        "prior's and the task's; 0, the random projector 0.45, on inpainting 0.01, on sr "
        "0.75)", MODEL, type=float)  # fmt: skip
    l1l2: float | None = setting(
        None, "weight λ of the l1/l2 ratio of x's gradient, λ ||∇x||_1 / (sqrt(m) ||∇x||_2) over "
        "its m forward differences, added to the loss (Krishnan et al. 2011's normalised "
        "sparsity; Zhuang et al.'s regulariser; default 0; --variant zhuang 1e-4, the talk's for "
        "low noise, 2e-4 for high)", MODEL,
        type=float)  # fmt: skip
    # --- optimisation
    alg: str | None = setting(
        None, "optimizer: sgd (no momentum) or adam (default: the prior's; sgd for skip)",
        OPTIM, type=str, choices=("sgd", "adam"))  # fmt: skip
    lr: float | None = setting(
        None, "step for the prior's weights θ (default: the prior's; 1 for skip)", OPTIM,
        type=float)  # fmt: skip
    lr_c: float = setting(500.0, "step for g, h (alpha = lr_c / lr)", OPTIM)
    alg_c: str = setting(
        "sgd", "DOP: the optimizer of g, h: sgd (plain gradient descent with step --lr_c, DOP's "
        "implicit bias, whatever --alg the other groups take) or adam (--alg adam for every "
        "group in one Adam: what DOP with --alg adam did before)", OPTIM,
        choices=("sgd", "adam"))  # fmt: skip
    lr_c_scaling: str = setting(
        "none", "scale --lr_c from a 3x512x512 image to this one's n = C*H*W entries: none (the "
        "public code), n (by n / n_512: same step of g per residual) or sqrt (by "
        "sqrt(n / n_512))", OPTIM, choices=LR_C_SCALINGS)  # fmt: skip
    num_iter: int | None = setting(
        None, "iterations (default: 150000, the public code's; deblurring 5000, SelfDeblur's)",
        OPTIM, type=int, defines_run=False)  # fmt: skip
    loss_switch: int = setting(1000, "--loss l2_then_ssim: iterations of l2 before 1 - SSIM",
                               OPTIM)  # fmt: skip
    lr_kernel: float | None = setting(
        None, "blind-deblur: Adam's step for the kernel generator (default 1e-4, SelfDeblur's)",
        OPTIM, type=float)  # fmt: skip
    lr_milestones: str | None = setting(
        None, "iterations, comma-separated, at which every step is multiplied by --lr_gamma "
        "(default: none; deblurring 2000,3000,4000, SelfDeblur's)", OPTIM,
        type=str)  # fmt: skip
    lr_gamma: float = setting(0.5, "the factor of --lr_milestones", OPTIM)
    reg_noise_std: float | None = setting(
        None, "std of the fresh input perturbation eta (default: the prior's; 1/30 for skip)",
        OPTIM, type=float)  # fmt: skip
    # --- early stopping and smoothing
    stop: str | None = setting(
        None, "stop when a rule detects the peak, without ground truth (utils/stopping.py): "
        "wmv (ES-WMV: the variance over a window of outputs), emv (ES-EMV: its exponential "
        "moving version) or sv (SV-ES: the error of an autoencoder trained online on the recent "
        "outputs; costly); or find_best (the deep decoder's: keep the net after the last step "
        "that lowered the training loss below best/1.005; never stops a run); the image the "
        "rule chose is CKPT_stopped.png (default: none; find_best for --prior decoder, its "
        "code's)", STOP, type=str, choices=("none", *RULES))  # fmt: skip
    stop_window: int = setting(100, "ES-WMV's window W (and ES-EMV's burn-in)", STOP)
    stop_patience: int = setting(
        1000, "ES-WMV and ES-EMV: stop after P iterations without a new variance minimum",
        STOP)  # fmt: skip
    stop_decay: float = setting(0.1, "ES-EMV's moving-average weight a", STOP)
    stop_emv_image: str = setting(
        "average", "ES-EMV's detected image: average (its moving average at the detected "
        "iteration, whose PSNR the ES-EMV notebook plots) or raw (the output x there)", STOP,
        choices=EMV_IMAGES)  # fmt: skip
    sv_window: int = setting(256, "SV-ES: the autoencoder's window W of recent outputs", STOP)
    sv_patience: int = setting(
        500, "SV-ES: stop after P iterations without a new minimum of the autoencoder's error",
        STOP)  # fmt: skip
    sv_every: int = setting(
        1, "SV-ES: check (score, then train the autoencoder) every N iterations once the window "
        "is full (1: the public code's; more: N times cheaper)", STOP)  # fmt: skip
    stop_observe: bool = setting(
        False, "do not stop: run to --num_iter while the rule of --stop and the light rules "
        "(wmv, emv and find_best) watch, and record what each would have detected (the "
        "comparison table's mode)", STOP)  # fmt: skip
    ema: float | None = setting(
        None, "also keep the exponential moving average of the output with this weight (the "
        "DIP paper's 0.99), logged beside the raw output and saved as CKPT_ema.png", STOP,
        type=float)  # fmt: skip
    # --- running and outputs
    ckpt: str = setting("test", "run name: outputs are OUT_DIR/CKPT_*", RUN, defines_run=False,
                        per_run=True)  # fmt: skip
    out_dir: str = setting("checkpoints", "output folder (created)", RUN, defines_run=False,
                           per_run=True)  # fmt: skip
    data_dir: str = setting(str(DEFAULT_DATA_DIR), "where paper images are looked for and "
                            "downloaded to", RUN, defines_run=False, per_run=True)  # fmt: skip
    gpu: str | None = setting(
        None, "CUDA device index, or cpu (default: GPU 0 when there is one, else the CPU)", RUN,
        type=str, defines_run=False)  # fmt: skip
    fast: bool = setting(
        False, "the fast path: on a GPU a fused optimizer, cuDNN's autotuner, torch.compile "
        "(compute capability 7.0 and up), TF32, channels-last and bf16 autocast of the net (8.0 "
        "and up: Ampere's tensor cores); on a CPU bf16 autocast where the CPU has bf16 and "
        "foreach steps (default: fp32 eager, the public code's recipe)", RUN,
        defines_run=False)  # fmt: skip
    low_memory: bool = setting(
        False, "the low-memory path: recompute the prior's activations in the backward instead "
        "of keeping them (activation checkpointing; the same result on the CPU, less memory, "
        "more time); combines with --fast", RUN, defines_run=False)  # fmt: skip
    deterministic: bool = setting(
        False, "on a GPU, torch's deterministic algorithms (warn where it has none: the backward "
        "of reflection padding and bilinear upsampling, which still add with atomics), "
        "deterministic cuDNN convolutions, no cuDNN autotuner, no torch.compile, a fixed cuBLAS "
        "workspace; a CPU run is deterministic without it", RUN, defines_run=False)  # fmt: skip
    show_every: int = setting(500, "iterations between logged rows (the only host syncs)", RUN)
    save_every: int = setting(
        5000, "iterations between resumable checkpoints (a multiple of --show_every)", RUN,
        defines_run=False)  # fmt: skip
    resume: bool = setting(False, "continue the run CKPT from its last checkpoint", RUN,
                           defines_run=False, per_run=True)  # fmt: skip
    overwrite: bool = setting(False, "replace an earlier run CKPT", RUN, defines_run=False,
                              per_run=True)  # fmt: skip
    reuse: bool = setting(
        False, "keep the run CKPT if it has ended with these settings, else continue it from its "
        "checkpoint, or start it (over what a run killed before its first checkpoint left): "
        "what reproduce.py does with every run", RUN, defines_run=False, per_run=True)  # fmt: skip
    quiet: bool = setting(False, "no progress bar", RUN, defines_run=False, per_run=True)

    def resolved(self) -> RunConfig:
        """The settings with every None filled in, once: from the generic defaults, then the
        prior's (``Prior.defaults``), the task's (``Task.defaults``), the task's for this
        prior (``Task.prior_settings``) and its ``--variant``'s (``Task.variant_settings``),
        each overriding the one before; under DOP, a prior
        whose reference optimizer is Adam runs DOP's plain gradient descent instead
        (``Prior.dop_defaults``: α = lr_c / lr is a ratio of gradient steps). ``--nlevel``
        defaults to the noise type's for denoising and 0 for the other tasks."""
        prior, task = PRIORS[self.prior], TASKS[self.task]
        defaults = (GENERIC_DEFAULTS | prior.defaults | task.defaults
                    | task.prior_settings.get(self.prior, {})
                    | task.variant_settings(self.variant))  # fmt: skip
        method = self.method or defaults["method"]
        defaults |= {"method": method} | (prior.dop_defaults if method == "dop" else {})
        filled = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        if self.observed is None and self.nlevel is None:
            filled["nlevel"] = NOISES[self.noise].default if task.noisy_by_default else 0.0
        return dataclasses.replace(self, **filled)

    @property
    def is_resolved(self) -> bool:
        return all(getattr(self, name) is not None for name in RESOLVED)

    def milestones(self) -> list[int]:
        """--lr_milestones as integers (InputError when they are not)."""
        try:
            return [int(m) for m in (self.lr_milestones or "").split(",") if m.strip()]
        except ValueError:
            raise InputError("--lr_milestones must be integers separated by commas") from None

    def lr_c_used(self, numel: int) -> float:
        """lr_c after ``lr_c_scaling`` for an observation of ``numel`` entries per run.

        With the mean loss over n entries each entry of g, h gets a gradient ∝ 1/n while the
        network's does not, so the same lr_c is a larger effective α on a smaller image; ``n``
        undoes that exactly, ``sqrt`` follows the paper's α ∝ √n for an n×n low-rank problem.
        """
        ratio = numel / REFERENCE_NUMEL
        return self.lr_c * {"none": 1.0, "n": ratio, "sqrt": math.sqrt(ratio)}[self.lr_c_scaling]

    def defining(self) -> dict[str, Any]:
        """The settings that define the run (a resumed run must have the same), defaults filled
        in, less those that play no part in it (g, h's step without g, h; another task's or
        prior's own settings)."""
        cfg = self.resolved()
        unused = set(foreign_settings(cfg.task, cfg.prior))
        unused |= {"lr_c", "lr_c_scaling"} if cfg.method != "dop" else set()
        unused |= {"alg_c"} if cfg.method != "dop" or cfg.alg_c == cfg.alg else set()
        unused |= TASKS[cfg.task].unused(cfg)
        unused |= {"mixture_sigma"} if cfg.noise != "mixture" else set()
        if cfg.stop not in ("wmv", "emv") and not cfg.stop_observe:
            unused |= {"stop_window", "stop_patience", "stop_decay"}  # neither ES rule watches
        if cfg.stop != "emv" and not cfg.stop_observe:
            unused.add("stop_emv_image")
        if cfg.stop != "sv":
            unused |= {"sv_window", "sv_patience", "sv_every"}
        unused |= {"task"} if TASKS[cfg.task].default else set()  # as every run before tasks
        unused |= {"loss_switch", "ssim_padding"} if cfg.loss != "l2_then_ssim" else set()
        unused |= {"lr_milestones", "lr_gamma"} if not cfg.lr_milestones else set()
        unused |= {"tv"} if not cfg.tv else set()  # every run before the TV penalty
        unused |= {"l1l2"} if not cfg.l1l2 else set()  # every run before the l1/l2 penalty
        return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                if f.metadata["defines_run"] and f.name not in unused}  # fmt: skip

    def shared(self) -> tuple:
        """The settings that runs sharing one loop must have in common (not ``per_run``)."""
        return tuple((f.name, getattr(self, f.name)) for f in dataclasses.fields(self)
                     if not f.metadata["per_run"])  # fmt: skip

    def check(self) -> None:
        """Refuse bad values with a message that names the flag: the generic ones here, a
        task's and a prior's own in ``Task.check`` and ``Prior.check``."""
        bad = [
            (self.nlevel is not None and not NOISES[self.noise].valid(self.nlevel),
             f"--nlevel of --noise {self.noise} must be {NOISES[self.noise].meaning}"),
            (not self.mixture_sigma >= 0, "--mixture_sigma must be >= 0"),
            (self.nlevel is None and self.observed is None and not NOISES[self.noise].valid(0)
             and not TASKS[self.task].noisy_by_default,
             f"--task {self.task} has no noise unless --nlevel is given, but --noise "
             f"{self.noise} has no level 0: give its --nlevel ({NOISES[self.noise].meaning})"),
            (self.observed is not None and (self.image, self.nlevel) != (None, None),
             "--observed is used as it is: it excludes --image and --nlevel"),
            (self.clean is not None and self.observed is None,
             "--clean goes with --observed (a synthetic run has its own clean image)"),
            (self.width is not None and self.width < 1, "--width must be at least 1"),
            (self.tv is not None and not self.tv >= 0, "--tv must be >= 0"),
            (self.l1l2 is not None and not (self.l1l2 >= 0 and math.isfinite(self.l1l2)),
             "--l1l2 must be a number >= 0"),
            (self.variant is not None and self.variant not in TASKS[self.task].variants,
             f"--task {self.task} has no --variant {self.variant}"),
            (self.lr_kernel is not None and not (self.lr_kernel > 0
                                                 and math.isfinite(self.lr_kernel)),
             "--lr_kernel must be a positive number"),
            (not 0 < self.lr_gamma <= 1, "--lr_gamma must be in (0, 1]"),
            (self.loss_switch < 0, "--loss_switch must be >= 0"),
            (any(m < 1 for m in self.milestones()), "--lr_milestones must be positive"),
            (self.num_iter is not None and self.num_iter < 1, "--num_iter must be at least 1"),
            (self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)),
             "--lr must be a positive number"),
            (not (self.lr_c > 0 and math.isfinite(self.lr_c)), "--lr_c must be a positive number"),
            (self.reg_noise_std is not None and not self.reg_noise_std >= 0,
             "--reg_noise_std must be >= 0"),
            (self.seed < 0, "--seed must be >= 0"),
            (min(self.stop_window, self.stop_patience, self.sv_window, self.sv_patience,
                 self.sv_every) < 1,
             "--stop_window, --stop_patience, --sv_window, --sv_patience and --sv_every must "
             "be >= 1"),
            (not 0 < self.stop_decay < 1, "--stop_decay must be in (0, 1)"),
            (self.stop_observe and self.stop in (None, "none"),
             "--stop_observe measures a rule: give --stop wmv, emv or sv"),
            (self.ema is not None and not 0 <= self.ema < 1, "--ema must be in [0, 1)"),
            (self.show_every < 1 or self.save_every < 1 or self.save_every % self.show_every,
             "--save_every must be a positive multiple of --show_every (>= 1)"),
            (self.crop is not None and self.crop < 1, "--crop must be positive"),
            (self.resume + self.overwrite + self.reuse > 1,
             "--resume, --overwrite and --reuse exclude each other"),
            (not self.ckpt or "/" in self.ckpt or self.ckpt.startswith("."),
             "--ckpt must be a plain name"),
        ]  # fmt: skip
        for failed, message in bad:
            if failed:
                raise InputError(message)
        defaults = RunConfig()
        for name in foreign_settings(self.task, self.prior):
            if getattr(self, name) != getattr(defaults, name):
                raise InputError(f"--{name} goes with {owners(name)}")
        resolved = self.resolved()  # the task's and prior's checks see the defaults filled
        TASKS[self.task].check(resolved)
        PRIORS[self.prior].check(resolved)


def foreign_settings(task: str, prior: str) -> list[str]:
    """The settings owned by other tasks and priors than these (``own_settings``)."""
    mine = set(TASKS[task].own_settings) | set(PRIORS[prior].own_settings)
    return [name for name in _OWNERS if name not in mine]


def owners(name: str) -> str:
    """'--task inpaint', '--task deblur or blind-deblur', '--prior lip': who owns a setting."""
    return " or ".join(f"--{kind} {' or '.join(names)}" for kind, names in _OWNERS[name].items())


_OWNERS: dict[str, dict[str, list[str]]] = {}
for _kind, _registry in (("task", TASKS), ("prior", PRIORS)):
    for _name, _part in _registry.items():
        for _setting in _part.own_settings:
            _OWNERS.setdefault(_setting, {}).setdefault(_kind, []).append(_name)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (the CLI catches InputError)
        raise InputError(f"{message} (see --help)")


def parser(description: str) -> argparse.ArgumentParser:
    """The command line of RunConfig: one flag per field, grouped as the fields are, plus the
    public code's ``--l1`` (the same setting as ``--loss l1``)."""
    p = _Parser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,  # an absent flag keeps the dataclass's default
    )
    groups: dict[str, Any] = {}  # argparse argument groups by title
    for f in dataclasses.fields(RunConfig):
        meta = f.metadata
        if meta["group"] not in groups:
            groups[meta["group"]] = p.add_argument_group(meta["group"])
        group = groups[meta["group"]]
        if f.name == "loss":  # --l1 and --loss: one setting
            group = group.add_mutually_exclusive_group()
            group.add_argument("--l1", dest="loss", action="store_const", const="l1",
                               help="the public code's flag: --loss l1")  # fmt: skip
        if f.default is False:
            group.add_argument(f"--{f.name}", action="store_true", help=meta["help"])
            continue
        shown = "" if f.default is None or "default" in meta["help"] else f" (default: {f.default})"
        group.add_argument(
            f"--{f.name}", type=meta["type"] or type(f.default), choices=meta["choices"],
            help=meta["help"] + shown,
        )  # fmt: skip
    return p


def parse(argv: list[str] | None, description: str = "") -> RunConfig:
    """RunConfig from command-line arguments (InputError on bad ones)."""
    return RunConfig(**vars(parser(description).parse_args(argv)))


def to_argv(cfg: RunConfig) -> list[str]:
    """The command line that ``parse`` turns into ``cfg``: a flag for every setting that differs
    from its default (for a subprocess, a Slurm job, or a command printed for the user)."""
    argv: list[str] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value == f.default:
            continue
        text = repr_value(value)
        if value is True:
            argv.append(f"--{f.name}")
        elif text.startswith("-"):  # -1e-05, -inf, -x: a value, not a flag, only so
            argv.append(f"--{f.name}={text}")
        else:
            argv += [f"--{f.name}", text]
    return argv


def repr_value(value: Any) -> str:
    """A value as its flag takes it back: floats by ``repr`` (exact), the rest by ``str``."""
    return repr(value) if isinstance(value, float) else str(value)
