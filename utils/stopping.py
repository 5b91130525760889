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

The detected image is x_{t*} at the minimum t* (for WMV the newest iterate of the window, as the
notebook reports and the talk's Algorithm 1 returns: the window ending at t* is the one whose
outputs agree best, and x_{t*} is the only one of its iterates the rule can hold without keeping
W copies). A rule that has fired keeps its detection: later iterates change nothing. The rules
watch the raw output x, as the paper's; the moving average (``--ema``) is a separate estimate.
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
from utils.seeding import derive_seed
from utils.state import per_run_module


class StoppingRule(Observer):
    """The running minimum of a score and the patience rule, for K runs. ``light``: cheap enough
    to watch every ``--stop_observe`` run (the rule of ``--stop`` always watches); ``of``: the
    rule for the settings of a run (``engine.config.RunConfig``'s fields)."""

    light: ClassVar[bool] = True

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
        """Run ``run``'s detection (a host sync: call it after the loop)."""
        fired_at = int(self.fired_at[run])
        return {
            "detected_iteration": int(self.best_iteration[run]),
            "fired_at": None if fired_at < 0 else fired_at,
            "image": self.best_x[run].cpu().numpy(),
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

    def update(self, iteration: int, x: Tensor) -> None:
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


class ExponentialVariance(StoppingRule):
    """ES-EMV: an exponential moving average and variance of the outputs, O(C·H·W) a step and
    one image of memory."""

    name = "emv"

    def __init__(self, decay: float, burn_in: int, patience: int, shape: Sequence[int],
                 dtype: torch.dtype = torch.float32) -> None:  # fmt: skip
        super().__init__(patience, shape, dtype)
        self.decay, self.burn_in = decay, burn_in
        self.register_buffer("average", torch.zeros(tuple(shape), dtype=dtype))
        self.register_buffer("variance", torch.zeros(shape[0], dtype=torch.float64))

    def update(self, iteration: int, x: Tensor) -> None:
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
            self.consider(iteration, self.variance, x)

    @classmethod
    def of(cls, settings, shape, dtype, seeds) -> ExponentialVariance:  # noqa: ANN001
        return cls(settings.stop_decay, settings.stop_window, settings.stop_patience, shape, dtype)


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

    def update(self, iteration: int, x: Tensor) -> None:
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
        seeds = [np.random.SeedSequence((stream, iteration)).generate_state(2, np.uint32)
                 for stream in self.streams]  # fmt: skip
        return [torch.Generator(device).manual_seed((int(a) << 31) | (int(b) >> 1))
                for a, b in seeds]  # fmt: skip


# ``--stop`` offers these names; ``--stop_observe`` watches the light ones and --stop's.
RULES: dict[str, type[StoppingRule]] = {
    rule.name: rule for rule in (WindowedVariance, ExponentialVariance, SelfValidation)
}


def stopping_rules(names: Sequence[str], settings: Any, shape: Sequence[int],
                   dtype: torch.dtype, seeds: Sequence[int]) -> list[StoppingRule]:  # fmt: skip
    """The rules named (keys of ``RULES``) for K = len(seeds) runs of images of ``shape`` =
    (K, C, H, W), with the settings of a run (``RunConfig``: stop_window, sv_window, ...)."""
    return [RULES[name].of(settings, shape, dtype, seeds) for name in names]
