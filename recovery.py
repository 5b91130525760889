"""The optimization loop of DOP, DIP and DIP-L1, written once.

An observation y = x + s (x the clean image, s sparse noise) is fitted by a model of y:

    DOP     y ≈ f(θ; z + η) + g⊙g − h⊙h     (You, Zhu, Qu, Ma, NeurIPS 2020, arXiv 2006.08857)
    DIP     y ≈ f(θ; z + η)                 (Ulyanov, Vedaldi, Lempitsky, CVPR 2018)

f is the skip net, z a fixed input drawn from uniform[0, 0.1), η ~ N(0, σ²) drawn afresh at every
iteration (σ = 1/30), and g, h image-shaped tensors initialised at N(0, 1)·1e-5. The loss is the
mean squared (or, with L1, mean absolute) error over all C·H·W entries. Plain gradient descent takes
a step of lr for θ and lr_c for (g, h); the ratio α = lr_c / lr is the implicit bias that lets
g⊙g − h⊙h absorb the sparse noise while f(θ) fits the image, so DOP needs no early stopping. The
recovered image is f(θ; z + η) alone. A method is a configuration of this one loop: whether g, h
exist (``sparse``) and which loss; everything else is shared.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from models import SkipNet
from utils.metrics import psnr


@dataclass(frozen=True)
class Method:
    """Which parameters the loop trains and which loss it minimises."""

    name: str
    sparse: bool  # model the noise as g⊙g − h⊙h (DOP) or not at all (DIP)
    loss: str  # "l2": mean squared error; "l1": mean absolute error


METHODS = {
    "dop": Method("dop", sparse=True, loss="l2"),
    "dip": Method("dip", sparse=False, loss="l2"),
    "dip-l1": Method("dip-l1", sparse=False, loss="l1"),
}
LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"l2": F.mse_loss, "l1": F.l1_loss}

INPUT_DEPTH = 32  # channels of the fixed input z
INPUT_SCALE = 0.1  # z ~ uniform[0, 0.1)
SPARSE_INIT_STD = 1e-5  # g, h ~ N(0, 1)·1e-5: the small init the implicit bias needs
REFERENCE_NUMEL = 3 * 512 * 512  # image size at which the public lr_c = 500 was tuned


def lr_c_for_size(lr_c: float, numel: int, reference_numel: int = REFERENCE_NUMEL) -> float:
    """The lr for (g, h) that moves them, relative to θ, as ``lr_c`` does at the reference size.

    With the mean over n = C·H·W entries, the gradient of each entry of g, h scales as 1/n while the
    network's (shared by all pixels) does not, so the same lr_c means a larger effective α on a
    smaller image. Scaling lr_c by n / n_ref keeps lr_c·∂L/∂g, for a given residual, unchanged.
    """
    return lr_c * numel / reference_numel


class DeepPrior(nn.Module):
    """f(θ; z + η) cropped to the image, plus g⊙g − h⊙h when ``sparse`` (DOP).

    The net may run on a larger canvas than the image (``net_size``, e.g. padded to a multiple of
    32); its output is centre-cropped back, so the loss sees exactly the image's pixels.
    """

    def __init__(
        self,
        net: nn.Module,
        image_shape: tuple[int, int, int],
        net_size: tuple[int, int],
        sparse: bool,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        c, h, w = image_shape
        self.net = net
        self.image_shape = image_shape
        z = torch.rand(1, INPUT_DEPTH, *net_size, generator=generator) * INPUT_SCALE
        self.register_buffer("z", z)
        self.top, self.left = (net_size[0] - h) // 2, (net_size[1] - w) // 2
        if sparse:
            self.g = nn.Parameter(torch.randn(1, c, h, w, generator=generator) * SPARSE_INIT_STD)
            self.h = nn.Parameter(torch.randn(1, c, h, w, generator=generator) * SPARSE_INIT_STD)
        else:
            self.g = self.h = None

    @property
    def sparse(self) -> bool:
        return self.g is not None

    def forward(self, eta: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (x, prediction of y): the image estimate and, for DOP, x + g⊙g − h⊙h."""
        _, h, w = self.image_shape
        x = self.net(self.z + eta)[..., self.top : self.top + h, self.left : self.left + w]
        return x, (x + self.sparse_estimate() if self.sparse else x)

    def sparse_estimate(self) -> Tensor:
        return self.g * self.g - self.h * self.h


def build_model(
    image_shape: tuple[int, int, int],
    *,
    sparse: bool,
    width: int,
    seed: int,
    net_size: tuple[int, int] | None = None,
    scales: int = 5,
    skip: int = 4,
) -> DeepPrior:
    """The skip net, its input z and (for DOP) g, h, all drawn from ``seed`` on the CPU, so the
    initialisation does not depend on the device."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = SkipNet(INPUT_DEPTH, image_shape[0], width=width, scales=scales, skip=skip)
    generator = torch.Generator().manual_seed(seed)
    return DeepPrior(net, image_shape, net_size or image_shape[1:], sparse, generator)


@dataclass(frozen=True)
class FitConfig:
    loss: str = "l2"
    num_iter: int = 150_000
    lr: float = 1.0  # step for θ
    lr_c: float = 500.0  # step for (g, h); α = lr_c / lr
    alg: str = "sgd"  # "sgd" (plain gradient descent) or "adam"
    reg_noise_std: float = 1.0 / 30.0  # σ of the fresh input perturbation η
    show_every: int = 500  # iterations between logged rows (the only host-device syncs)
    save_every: int = 5000  # iterations between resumable checkpoints


@dataclass
class FitResult:
    history: list[tuple[int, float, float]]  # (iteration, loss, PSNR of x against `clean`)
    image: np.ndarray  # the last logged (finite) x, (C, H, W)
    sparse: np.ndarray | None  # g⊙g − h⊙h at that point (DOP only)
    iterations: int  # iterations completed, counting resumed ones
    seconds: float = 0.0  # wall time of this call's loop
    steps: int = 0  # iterations run by this call
    diverged_at: int | None = None  # first logged iteration whose loss or output was not finite


def make_optimizer(model: DeepPrior, cfg: FitConfig) -> torch.optim.Optimizer:
    """Two parameter groups: θ with lr, (g, h) with lr_c. SGD has no momentum, as in the paper."""
    groups = [{"params": list(model.net.parameters()), "lr": cfg.lr}]
    if model.sparse:
        groups.append({"params": [model.g, model.h], "lr": cfg.lr_c})
    if cfg.alg == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr)
    if cfg.alg == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    raise ValueError(f"unknown optimizer {cfg.alg!r}: use sgd or adam")


def fit(
    model: DeepPrior,
    y: Tensor,
    clean: Tensor,
    cfg: FitConfig,
    *,
    seed: int = 0,
    state: dict | None = None,
    checkpoint: Callable[[dict], None] | None = None,
    progress: bool = True,
) -> FitResult:
    """Run iterations ``state['iteration']`` (or 0) to ``cfg.num_iter`` of gradient descent.

    Logs (iteration, loss, PSNR of x) at every multiple of ``show_every`` and at the last
    iteration, where x is the image estimate of that iteration's forward pass (before its step),
    as in the public code. ``checkpoint`` receives a resumable state every ``save_every``
    iterations and at the end; passing such a state back continues the run exactly (same RNG
    stream, same optimizer state). Stops early, with ``diverged_at`` set, if the loss or the
    image becomes NaN or infinite.
    """
    device = y.device
    loss_fn = LOSSES[cfg.loss]
    optimizer = make_optimizer(model, cfg)
    # η has its own generator on the device: its state is all a resumed run needs to redraw it.
    generator = torch.Generator(device).manual_seed(seed)
    eta = torch.empty_like(model.z)
    start, history = 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        start, history = state["iteration"], [tuple(row) for row in state["history"]]

    def snapshot(iteration: int) -> dict:
        return {
            "iteration": iteration,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            # Only rows on the show_every grid: a final off-grid row is redone if the run goes on.
            "history": [row for row in history if row[0] % cfg.show_every == 0],
        }

    model.train()  # BatchNorm uses the statistics of the current image, always
    last_x = last_sparse = None
    diverged_at = None
    j = start
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.num_iter, initial=start, disable=not progress, dynamic_ncols=True)
    for j in range(start, cfg.num_iter):
        if checkpoint is not None and j > start and j % cfg.save_every == 0:
            checkpoint(snapshot(j))
        x, prediction = model(eta.normal_(0.0, cfg.reg_noise_std, generator=generator))
        loss = loss_fn(prediction, y)
        if j % cfg.show_every == 0 or j == cfg.num_iter - 1:
            loss_value, psnr_value = torch.stack([loss.detach().double(), psnr(x, clean)]).tolist()
            if not np.isfinite(loss_value) or np.isnan(psnr_value):
                diverged_at = j
                break
            history.append((j, loss_value, psnr_value))
            last_x = x.detach().clone()
            last_sparse = model.sparse_estimate().detach().clone() if model.sparse else None
            bar.set_postfix(loss=f"{loss_value:.3g}", psnr=f"{psnr_value:.2f}", refresh=False)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bar.update()
    bar.close()
    seconds = time.perf_counter() - t0
    done = j if diverged_at is not None else cfg.num_iter
    if checkpoint is not None and diverged_at is None:
        checkpoint(snapshot(done))
    if last_x is None:  # diverged before this call logged anything finite
        raise FloatingPointError(f"the loss became NaN or infinite by iteration {j}")
    return FitResult(
        history=history,
        image=last_x[0].cpu().numpy(),
        sparse=None if last_sparse is None else last_sparse[0].cpu().numpy(),
        iterations=done,
        seconds=seconds,
        steps=done - start,
        diverged_at=diverged_at,
    )
