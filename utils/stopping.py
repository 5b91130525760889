"""Early stopping without ground truth: ES-WMV and ES-EMV (Wang, Li, Zhuang, Chen, Liang, Sun,
"Early Stopping for Deep Image Prior", TMLR 2023, arXiv 2112.06074; public code
sun-umn/Early_Stopping_for_DIP, notebooks ES_WMV.ipynb and ES_EMV.ipynb), and the group's first
rule, self-validation (SV-ES, ``SelfValidation`` below; BMVC 2021).

A DIP-type fit first learns the image, then the noise; near the peak of its PSNR the outputs
x_t change least. Both rules score how much the outputs still move, keep the score's running
minimum, and fire once P iterations (``--stop_patience``, 1000) pass without a new minimum:

* ES-WMV: the variance over a window of the last W outputs (``--stop_window``, 100), per entry,

      VAR_t = (1/W) Σ_{i=t−W+1..t} mean_entries((x_i − m_t)²),   m_t = (1/W) Σ_i x_i,

  scored from iteration W − 1 on (the first full window).
* ES-EMV: its exponential moving version, a = ``--stop_decay`` (0.1), EMA_0 = x_0, EMV_0 = 0,

      δ = x_t − EMA_{t−1},  EMA_t = EMA_{t−1} + a δ,  EMV_t = (1 − a)(EMV_{t−1} + a ‖δ‖²),

  with the full squared norm ‖δ‖² over all entries, as the notebook, scored after t > W.
* SV-ES: an autoencoder trained online on the last W outputs (``--sv_window``, 256) scores each
  new one by its reconstruction error before it has trained on it; P = ``--sv_patience`` (500).

The detected image is, for WMV, x_{t*} at the minimum t* (the newest iterate of the window, as
the notebook's figure reports and the talk's Algorithm 1 returns: the window ending at t* is the
one whose outputs agree best, and x_{t*} is the only one of its iterates the rule can hold without
keeping W copies); for EMV, by default the moving average EMA_{t*} (the PSNR the ES-EMV notebook
plots at the detection, ES_EMV.ipynb cells 6 and 8), or x_{t*} (``--stop_emv_image raw``, the
talk's Algorithm 2); both are kept, so a run reports either. A rule that has fired keeps its
detection: later iterates change nothing. The rules score the raw output x, as the paper's; the
output's moving average (``--ema``) is a separate estimate.

A fourth rule, ``find_best``, is the deep decoder's selection without ground truth (Heckel, Hand,
ICLR 2019; include/fit.py:84-86, 130-136): it never fires; it keeps the net after the last step
whose training loss fell below the best so far divided by 1.005 (``LowestLoss``).
Every update is tensor arithmetic on the device (``torch.where`` instead of branches): the loop
reads ``fired`` only at logged rows, so a run stops at the first logged row after the rule fires.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from utils import sv
from utils.observers import Observer
from utils.seeding import derive_seed, seed_of
from utils.state import per_run_module


class StoppingRule(Observer):
    """The running minimum of a score and the patience rule, for K runs. ``light``: cheap enough
    to watch every ``--stop_observe`` run (the rule of ``--stop`` always watches); ``of``: the
    rule for the settings of a run (``engine.config.RunConfig``'s fields)."""

    light: ClassVar[bool] = True

    unset = ("score", "best")  # NaN and +inf until the first score

    def __init__(self, patience: int, shape: Sequence[int], dtype: torch.dtype) -> None:
        super().__init__()
        runs = shape[0]
        self.patience = patience
        self.register_buffer("score", torch.full((runs,), float("nan"), dtype=torch.float64))
        self.register_buffer("best", torch.full((runs,), float("inf"), dtype=torch.float64))
        self.register_buffer("best_iteration", torch.full((runs,), -1, dtype=torch.long))
        self.register_buffer("best_x", torch.zeros(tuple(shape), dtype=dtype))
        self.register_buffer("wait", torch.zeros(runs, dtype=torch.long))
        self.register_buffer("fired", torch.zeros(runs, dtype=torch.bool))
        self.register_buffer("fired_at", torch.full((runs,), -1, dtype=torch.long))

    def consider(self, iteration: int, score: Tensor, x: Tensor) -> None:
        """One patience step with the score of iterate ``x`` (runs that fired are frozen)."""
        active = ~self.fired
        better = active & (score < self.best)
        self.score = score
        self.best = torch.where(better, score, self.best)
        self.best_iteration = torch.where(better, iteration, self.best_iteration)
        self.best_x = torch.where(better.view(-1, *[1] * (x.dim() - 1)), x, self.best_x)
        self.wait = torch.where(better, 0, self.wait + active.long())
        newly = active & (self.wait >= self.patience)
        self.fired = self.fired | newly
        self.fired_at = torch.where(newly, iteration, self.fired_at)

    def columns(self) -> dict[str, Tensor]:
        return {self.name: self.score, f"{self.name}_detected": self.best_iteration}

    def outcome(self, run: int) -> dict:
        """Run ``run``'s detection (a host sync: call it after the loop): the iteration, when
        the rule fired, the detected image and ``others``, other images of the detection by
        name."""
        fired_at = int(self.fired_at[run])
        return {
            "detected_iteration": int(self.best_iteration[run]),
            "fired_at": None if fired_at < 0 else fired_at,
            "image": self.best_x[run].cpu().numpy(),
            "others": {},
        }

    @classmethod
    def of(cls, settings: Any, shape: Sequence[int], dtype: torch.dtype, seeds: Sequence[int]
           ) -> StoppingRule:  # fmt: skip
        raise NotImplementedError


class WindowedVariance(StoppingRule):
    """ES-WMV. A ring buffer of the last W outputs and their running sums in float64 (which
    hold sums of float32 values exactly), so a step costs O(C·H·W), not O(W·C·H·W)."""

    name = "wmv"

    def __init__(self, window: int, patience: int, shape: Sequence[int],
                 dtype: torch.dtype = torch.float32) -> None:  # fmt: skip
        super().__init__(patience, shape, dtype)
        self.window = window
        runs, *image = shape
        self.register_buffer("ring", torch.zeros((runs, window, *image), dtype=dtype))
        self.register_buffer("sum", torch.zeros(tuple(shape), dtype=torch.float64))
        self.register_buffer("sum_sq", torch.zeros(tuple(shape), dtype=torch.float64))

    def update(self, iteration: int, x: Tensor, loss: Tensor | None = None) -> None:
        slot = iteration % self.window
        if iteration >= self.window:  # x_{t−W} leaves the window
            old = self.ring[:, slot].double()
            self.sum.sub_(old)
            self.sum_sq.sub_(old.square())
        self.ring[:, slot] = x
        new = x.double()
        self.sum.add_(new)
        self.sum_sq.add_(new.square())
        if iteration >= self.window - 1:
            mean = self.sum / self.window
            variance = (self.sum_sq / self.window - mean.square()).flatten(1).mean(1)
            self.consider(iteration, variance, x)

    @classmethod
    def of(cls, settings, shape, dtype, seeds) -> WindowedVariance:  # noqa: ANN001
        return cls(settings.stop_window, settings.stop_patience, shape, dtype)


EMV_IMAGES = ("average", "raw")


class ExponentialVariance(StoppingRule):
    """ES-EMV: an exponential moving average and variance of the outputs, O(C·H·W) a step and three
    images of memory (EMA, the detected image and the other one at the detection). ``image``: which
    of them is the detected image, the other is reported beside it (``outcome``'s ``others``)."""

    name = "emv"

    def __init__(self, decay: float, burn_in: int, patience: int, shape: Sequence[int],
                 dtype: torch.dtype = torch.float32, image: str = "average") -> None:  # fmt: skip
        super().__init__(patience, shape, dtype)
        if image not in EMV_IMAGES:
            raise ValueError(f"image must be one of {EMV_IMAGES}, got {image!r}")
        self.decay, self.burn_in, self.image = decay, burn_in, image
        self.register_buffer("average", torch.zeros(tuple(shape), dtype=dtype))
        self.register_buffer("variance", torch.zeros(shape[0], dtype=torch.float64))
        self.register_buffer("best_other", torch.zeros(tuple(shape), dtype=dtype))

    def update(self, iteration: int, x: Tensor, loss: Tensor | None = None) -> None:
        if iteration == 0:
            self.average.copy_(x)
            self.variance.zero_()
            return
        a = self.decay
        delta = x - self.average
        self.average.add_(delta, alpha=a)
        squared = delta.double().square().flatten(1).sum(1)
        self.variance = (1 - a) * (self.variance + a * squared)
        if iteration > self.burn_in:
            chosen, other = (self.average, x) if self.image == "average" else (x, self.average)
            better = ~self.fired & (self.variance < self.best)
            self.best_other = torch.where(better.view(-1, *[1] * (x.dim() - 1)), other,
                                          self.best_other)  # fmt: skip
            self.consider(iteration, self.variance, chosen)

    def outcome(self, run: int) -> dict:
        other = "raw" if self.image == "average" else "average"
        return super().outcome(run) | {"others": {other: self.best_other[run].cpu().numpy()}}

    @classmethod
    def of(cls, settings, shape, dtype, seeds) -> ExponentialVariance:  # noqa: ANN001
        return cls(settings.stop_decay, settings.stop_window, settings.stop_patience, shape, dtype,
                   settings.stop_emv_image)  # fmt: skip


class SelfValidation(StoppingRule):
    """SV-ES (Li, Zhuang, Liang, Peng, Wang, Sun, "Self-Validation: Early Stopping for
    Single-Instance Deep Generative Priors", BMVC 2021, arXiv 2110.12271; code
    sun-umn/Self-Validation at 1a2a7b8, DIP+AE/*/w256_P500). An autoencoder (``utils.sv``)
    learns the recent outputs; early iterates are smooth and easy to reconstruct, late ones carry
    the noise the fit is learning, and its error on an iterate it has not yet seen traces a
    valley whose bottom aligns with the PSNR peak. Every ``every``-th iteration (``--sv_every``;
    the public code: every one) from the first full window of the last W outputs x_i, each
    clipped to [0, 1] and resized to the AE's S x S:

    1. score the newest x_t with the AE in eval mode (BatchNorm's running statistics), trained
       up to the previous check: e_t = ‖x_t − AE(x_t)‖ (the plain Frobenius norm, util.get_L2),
       and take the patience step (``consider``);
    2. train the AE for one pass over the window, newest included: shuffled batches of 32, mean
       squared error, a fresh Adam (lr 1e-3) at each check, the weights carried over.

    The AE starts from PyTorch's default initialisation, drawn from the run's "sv" stream, and
    the shuffles from that stream and the iteration (so a resumed or batched run draws the
    same). The patience P counts iterations (``ceil(P / every)`` checks; the public code checks
    every iteration, 500 checks). The detected image is the scored iterate x_{t*}, as for
    ES-WMV/EMV (the public code saves the eval-mode output after step t*:
    docs/FIDELITY.md). The AE keeps training after the rule fires (skipping it would need a
    host sync; the detection is frozen either way).

    Cost per check and run: about (3 · W + 1) forward passes of the AE on an S x S image, S ≈
    √(HW) up to 512 (its work grows like S²), so K runs cost K times one run: the K autoencoders
    are stored as one grouped net (``utils.sv.AutoEncoder(groups=K)``: the runs along dimension 0
    of every tensor, so the state stacks, checkpoints and resumes as the other rules'), but
    computed in a loop over the runs (``functional_call`` on each run's slice), which was faster
    than the grouped convolutions on the CPU (3.4 s against 5.0 s per check and run, 64 x 64) and
    costs nothing on a GPU, where one run's batch of 32 images of 512² fills the device. Memory:
    the window, K · W · C · S² values (805 MB per run at 3 x 512², W = 256), and the
    activations of one batch.
    """

    name = "sv"
    light = False

    def __init__(self, window: int, patience: int, shape: Sequence[int],
                 dtype: torch.dtype = torch.float32, seeds: Sequence[int] = (0,),
                 every: int = 1) -> None:  # fmt: skip
        runs, channels, h, w = shape
        if len(seeds) != runs:
            raise ValueError(f"{runs} runs need {runs} seeds, got {len(seeds)}")
        super().__init__(math.ceil(patience / every), shape, dtype)
        self.window, self.every = window, every
        self.size = sv.side(h, w)
        self.streams = [derive_seed(seed, "sv") for seed in seeds]
        build = lambda groups: sv.AutoEncoder(channels, self.size, groups)  # noqa: E731
        self.net = per_run_module(build, seeds, "sv").to(dtype)
        with torch.random.fork_rng(devices=[]):  # its own tensors are never used: no draws
            self.single = [sv.AutoEncoder(channels, self.size)]  # one run's computation
        self.register_buffer("ring", torch.zeros((runs, window, channels, self.size, self.size),
                                                 dtype=dtype))  # fmt: skip

    @classmethod
    def of(cls, settings, shape, dtype, seeds) -> SelfValidation:  # noqa: ANN001
        return cls(settings.sv_window, settings.sv_patience, shape, dtype, seeds,
                   settings.sv_every)  # fmt: skip

    def update(self, iteration: int, x: Tensor, loss: Tensor | None = None) -> None:
        image = x.clamp(0, 1)
        if image.shape[-2:] != (self.size, self.size):
            shrink = min(image.shape[-2:]) > self.size
            image = F.interpolate(image, size=(self.size, self.size), mode="bilinear",
                                  align_corners=False, antialias=shrink)  # fmt: skip
        self.ring[:, iteration % self.window] = image
        first = self.window - 1
        if iteration < first or (iteration - first) % self.every:
            return
        self.consider(iteration, self.errors(image), x)
        self.train_window(iteration)

    def autoencode(self, run: int, images: Tensor) -> Tensor:
        """Run ``run``'s AE on (N, C, S, S): the single net with that run's slice of every
        tensor (views: BatchNorm's running statistics are updated in place, in the batch)."""

        def part(t: Tensor) -> Tensor:  # a step counter counts run 0's steps only, as alone
            return t.chunk(self.runs)[run] if t.dim() else t if run == 0 else t.clone()

        tensors = {name: part(t) for name, t in [*self.net.named_parameters(),
                                                   *self.net.named_buffers()]}  # fmt: skip
        return functional_call(self.single[0], tensors, (images,))

    @property
    def runs(self) -> int:
        return self.ring.shape[0]

    def errors(self, newest: Tensor) -> Tensor:
        """‖x − AE(x)‖ of each run's newest output, the AE in eval mode."""
        self.single[0].eval()
        with torch.no_grad():
            errors = [torch.linalg.vector_norm(x - self.autoencode(k, x[None])[0])
                      for k, x in enumerate(newest)]  # fmt: skip
        return torch.stack(errors).double()

    def train_window(self, iteration: int) -> None:
        """One shuffled pass over each run's window (its own order), batches of ``SV_BATCH``,
        each run's mean squared error; one Adam over the K nets' tensors equals K Adams."""
        device = self.ring.device
        orders = torch.stack([torch.randperm(self.window, device=device, generator=generator)
                              for generator in self.shuffles(iteration, device)])  # fmt: skip
        optimizer = torch.optim.Adam(self.net.parameters(), lr=sv.LR)
        self.single[0].train()
        with torch.enable_grad():
            for start in range(0, self.window, sv.BATCH):
                optimizer.zero_grad(set_to_none=True)
                for k in range(self.runs):
                    images = self.ring[k, orders[k, start : start + sv.BATCH]]
                    F.mse_loss(self.autoencode(k, images), images).backward()
                optimizer.step()

    def shuffles(self, iteration: int, device: torch.device) -> list[torch.Generator]:
        """Each run's generator of the check at ``iteration``: from its "sv" stream and the
        iteration (no state to save)."""
        return [torch.Generator(device).manual_seed(
                    seed_of(np.random.SeedSequence((stream, iteration))))
                for stream in self.streams]  # fmt: skip


FIND_BEST_FACTOR = 1.005  # the deep decoder's: a new best net when loss < best / 1.005
FIND_BEST_START = 1e6  # its initial best_mse


class LowestLoss(StoppingRule):
    """The deep decoder's ``find_best`` (include/fit.py:84-86, 130-136): after step j, whose
    training loss L_j is that of the forward pass before it, if best > 1.005·L_j then best = L_j
    and the net after step j becomes the best net (best starts at 10⁶, so step 0 qualifies). The
    reported image is the best net's output: the forward pass of iteration j + 1 (made by the net
    after step j; the public code's ``best_net(z)`` has no input perturbation, the decoder's
    default has none either), or, after the last step, one more forward pass without η that the
    loop makes (``pending``, ``finish``). It uses no ground truth and never fires: a run goes to
    its last iteration; ``detected_iteration`` is j + 1, the steps the kept net has taken."""

    name = "find_best"

    def __init__(self, shape: Sequence[int], dtype: torch.dtype = torch.float32,
                 factor: float = FIND_BEST_FACTOR) -> None:  # fmt: skip
        super().__init__(1, shape, dtype)
        self.factor = factor
        self.best.fill_(FIND_BEST_START)
        self.register_buffer("waiting", torch.zeros(shape[0], dtype=torch.bool))

    @classmethod
    def of(cls, settings, shape, dtype, seeds) -> LowestLoss:  # noqa: ANN001
        return cls(shape, dtype)

    def update(self, iteration: int, x: Tensor, loss: Tensor | None = None) -> None:
        if loss is None:
            raise ValueError("find_best needs the training loss of every iteration")
        self.finish(iteration, x)
        loss = loss.double()
        better = self.best > self.factor * loss
        self.score = loss
        self.best = torch.where(better, loss, self.best)
        self.waiting = better

    def pending(self) -> Tensor:
        return self.waiting

    def finish(self, iteration: int, x: Tensor) -> None:
        """x is the image of the net after ``iteration`` steps: kept where a step waits for it."""
        take = self.waiting
        self.best_x = torch.where(take.view(-1, *[1] * (x.dim() - 1)), x, self.best_x)
        self.best_iteration = torch.where(take, iteration, self.best_iteration)
        self.waiting = torch.zeros_like(self.waiting)


# ``--stop`` offers these names; ``--stop_observe`` watches the light ones and --stop's.
RULES: dict[str, type[StoppingRule]] = {
    rule.name: rule for rule in (WindowedVariance, ExponentialVariance, LowestLoss, SelfValidation)
}


def stopping_rules(names: Sequence[str], settings: Any, shape: Sequence[int],
                   dtype: torch.dtype, seeds: Sequence[int]) -> list[StoppingRule]:  # fmt: skip
    """The rules named (keys of ``RULES``) for K = len(seeds) runs of images of ``shape`` =
    (K, C, H, W), with the settings of a run (``RunConfig``: stop_window, sv_window, ...)."""
    return [RULES[name].of(settings, shape, dtype, seeds) for name in names]
