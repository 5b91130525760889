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

The loop advances K independent runs at once (``fit_batch``; ``fit`` is K = 1): the K nets are one
grouped net, z, η, g, h and y carry the runs along dimension 0, and the objective is the sum of
the K runs' losses, so each run's parameters get exactly the gradient of its own loss. How fast
the loop runs (``Speed``: channels-last, bf16 autocast of the net, foreach/fused optimizers,
torch.compile) is separate from what it computes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
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
# Per-run losses: the mean over each run's C·H·W entries, one value per run (dimension 0).
LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "l2": lambda prediction, y: (prediction - y).square().mean(dim=(1, 2, 3)),
    "l1": lambda prediction, y: (prediction - y).abs().mean(dim=(1, 2, 3)),
}

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
    32); its output is centre-cropped back, so the loss sees exactly the image's pixels. A net with
    K groups makes a model of K runs: z is (K, 32, H, W), g and h are (K, C, H, W).
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
        k = net.groups
        self.net = net
        self.image_shape = image_shape
        z = torch.rand(k, INPUT_DEPTH, *net_size, generator=generator) * INPUT_SCALE
        self.register_buffer("z", z)
        self.top, self.left = (net_size[0] - h) // 2, (net_size[1] - w) // 2
        if sparse:
            self.g = nn.Parameter(torch.randn(k, c, h, w, generator=generator) * SPARSE_INIT_STD)
            self.h = nn.Parameter(torch.randn(k, c, h, w, generator=generator) * SPARSE_INIT_STD)
        else:
            self.g = self.h = None

    @property
    def sparse(self) -> bool:
        return self.g is not None

    @property
    def runs(self) -> int:
        return self.z.shape[0]

    def forward(self, eta: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (x, prediction of y): the image estimates and, for DOP, x + g⊙g − h⊙h."""
        _, h, w = self.image_shape
        # The K runs' inputs side by side as the channels of one image for the grouped net.
        out = self.net((self.z + eta).reshape(1, -1, *self.z.shape[-2:]))
        x = out.reshape(self.runs, -1, *out.shape[-2:])
        x = x[..., self.top : self.top + h, self.left : self.left + w]
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


def stack_states(states: Sequence[Any]) -> Any:
    """The state of a K-run batch from the states (model or optimizer ``state_dict``) of K single
    runs: every tensor with a dimension is concatenated along dimension 0, where the grouped net,
    z, g, h and the optimizer's per-entry state keep their runs; anything else (counters,
    hyper-parameters) is taken from the first run."""
    first = states[0]
    if isinstance(first, Tensor):
        return torch.cat(list(states)) if first.dim() else first
    if isinstance(first, dict):
        return {key: stack_states([s[key] for s in states]) for key in first}
    if isinstance(first, list | tuple):
        return type(first)(stack_states(items) for items in zip(*states, strict=True))
    return first


def unstack_state(state: Any, runs: int) -> list[Any]:
    """The inverse of ``stack_states``: the K single-run states of a batch's state (copies, so
    that saving one run's state does not write the storage of the whole batch)."""
    if runs == 1:
        return [state]
    if isinstance(state, Tensor):
        if not state.dim():
            return [state.clone() for _ in range(runs)]
        return [part.clone() for part in state.chunk(runs)]
    if isinstance(state, dict):
        parts = {key: unstack_state(value, runs) for key, value in state.items()}
        return [{key: parts[key][k] for key in state} for k in range(runs)]
    if isinstance(state, list | tuple):
        parts = [unstack_state(item, runs) for item in state]
        return [type(state)(p[k] for p in parts) for k in range(runs)]
    return [state] * runs


def is_finite(state: Any) -> bool:
    """Whether every floating-point tensor in a (nested) state is free of NaN and infinity."""
    if isinstance(state, Tensor):
        return not state.is_floating_point() or bool(torch.isfinite(state).all())
    if isinstance(state, dict):
        return all(is_finite(value) for value in state.values())
    if isinstance(state, list | tuple):
        return all(is_finite(item) for item in state)
    return True


def stack_models(models: Sequence[DeepPrior]) -> DeepPrior:
    """One model that runs the given single-run models side by side, each from its own state.

    They must agree in image shape, canvas, net size and method (only their images, noise and
    seeds differ). The batch is on the device of the first model.
    """
    first = models[0]
    if any(m.runs != 1 for m in models):
        raise ValueError("stack_models takes single-run models")
    net = SkipNet(**first.net.sizes, groups=len(models))
    canvas = tuple(first.z.shape[-2:])
    batch = DeepPrior(net, first.image_shape, canvas, first.sparse, torch.Generator())
    try:
        batch.load_state_dict(stack_states([m.state_dict() for m in models]))
    except (RuntimeError, KeyError) as err:
        raise ValueError(
            f"runs of different shapes or methods cannot share a batch: {err}"
        ) from None
    return batch.to(first.z.device)


@dataclass(frozen=True)
class Speed:
    """How the loop runs; none of it changes the algorithm. The default is the public code's
    recipe: fp32, eager, contiguous tensors, torch's default optimizer kernels."""

    channels_last: bool = False  # NHWC activations for the net (tensor cores want them)
    bf16: bool = False  # autocast the net's forward (and so its backward) to bfloat16
    compile: bool = False  # torch.compile the model's forward (and, through it, the backward)
    foreach: bool | None = None  # one multi-tensor kernel per optimizer step (None: torch's pick)
    fused: bool | None = None  # one fused kernel per optimizer step

    @classmethod
    def fast(cls, device: torch.device | str) -> Speed:
        """What ``--fast`` turns on for a device: the options measured to pay there (see
        docs/RESULTS.md, "Speed"). g, h, the loss, the metrics and the optimizer stay fp32."""
        if torch.device(device).type == "cuda":
            return cls(channels_last=True, bf16=True, compile=True, fused=True)
        return cls(bf16=cpu_has_bf16(), foreach=True)


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions natively here (AVX512-BF16 or AMX)."""
    return bool(
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


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
    speed: Speed = Speed()


@dataclass
class FitResult:
    history: list[tuple[int, float, float]]  # (iteration, loss, PSNR of x against `clean`)
    image: np.ndarray | None  # the last logged (finite) x, (C, H, W); None if there was none
    sparse: np.ndarray | None  # g⊙g − h⊙h at that point (DOP only)
    iterations: int  # iterations completed, counting resumed ones
    seconds: float = 0.0  # wall time of this call's loop
    steps: int = 0  # iterations run by this call
    diverged_at: int | None = None  # first logged iteration whose loss or output was not finite
    log_seconds: list[float] = field(default_factory=list)  # loop time at this call's rows


def optimizer_kernels(speed: Speed) -> dict[str, bool]:
    """The optimizer's kernel choices that ``speed`` makes (none left to torch's default)."""
    chosen = {"foreach": speed.foreach, "fused": speed.fused}
    return {key: value for key, value in chosen.items() if value is not None}


def make_optimizer(model: DeepPrior, cfg: FitConfig) -> torch.optim.Optimizer:
    """Two parameter groups: θ with lr, (g, h) with lr_c. SGD has no momentum, as in the paper."""
    groups = [{"params": list(model.net.parameters()), "lr": cfg.lr}]
    if model.sparse:
        groups.append({"params": [model.g, model.h], "lr": cfg.lr_c})
    kernels = optimizer_kernels(cfg.speed)
    if cfg.alg == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, **kernels)
    if cfg.alg == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, **kernels)
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
    """One run: ``fit_batch`` with K = 1 (y and clean of shape (1, C, H, W)). Raises
    FloatingPointError if the run diverged before logging any finite row."""
    [result] = fit_batch(
        model, y, clean, cfg, seeds=[seed], states=None if state is None else [state],
        checkpoint=None if checkpoint is None else lambda states: checkpoint(states[0]),
        progress=progress,
    )  # fmt: skip
    if result.image is None:
        raise FloatingPointError(
            f"the loss became NaN or infinite by iteration {result.diverged_at}"
        )
    return result


def fit_batch(
    model: DeepPrior,
    y: Tensor,
    clean: Tensor,
    cfg: FitConfig,
    *,
    seeds: Sequence[int],
    states: Sequence[dict] | None = None,
    checkpoint: Callable[[list[dict | None]], None] | None = None,
    progress: bool = True,
) -> list[FitResult]:
    """Run iterations ``state['iteration']`` (or 0) to ``cfg.num_iter`` of gradient descent for
    the K runs of ``model`` (y, clean: (K, C, H, W); one seed, and one state to resume, per run).

    Logs (iteration, loss, PSNR of x) of every run at every multiple of ``show_every`` and at the
    last iteration, where x is the image estimate of that iteration's forward pass (before its
    step), as in the public code; these rows are the loop's only host-device syncs.
    ``checkpoint`` receives the K runs' resumable states (each the state of a single run, None for
    a diverged run) every ``save_every`` iterations and at the end; passing such states back
    continues the runs exactly (same η streams, same optimizer state), batched or one by one. A
    run whose loss or image becomes NaN or infinite stops being logged, with ``diverged_at`` set;
    the loop stops when every run has.
    """
    runs, device = model.runs, y.device
    if y.shape[0] != runs or clean.shape != y.shape or len(seeds) != runs:
        raise ValueError(f"{runs} runs need y, clean of shape ({runs}, C, H, W) and {runs} seeds")
    speed = cfg.speed
    if speed.channels_last:  # the net only: z, η, g, h keep their layout, so η's draws do too
        model.net.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if speed.compile else model
    loss_fn = LOSSES[cfg.loss]
    optimizer = make_optimizer(model, cfg)
    # Each run's η has its own generator on the device, seeded by the run's seed: a run draws
    # the same η batched or alone, and its generator state is all a resumed run needs.
    generators = [torch.Generator(device).manual_seed(seed) for seed in seeds]
    eta = torch.empty_like(model.z)
    start, histories = 0, [[] for _ in range(runs)]
    if states is not None:
        if len({s["iteration"] for s in states}) != 1:
            raise ValueError("runs resumed in one batch must be at the same iteration")
        model.load_state_dict(stack_states([s["model"] for s in states]))
        optimizer_state = stack_states([s["optimizer"] for s in states])
        # This call's kernels, not the checkpoint's: set before loading, because loading decides
        # from them where Adam keeps its step counters (on the device only for fused kernels).
        kernels = {"foreach": None, "fused": None} | optimizer_kernels(speed)
        optimizer_state["param_groups"] = [g | kernels for g in optimizer_state["param_groups"]]
        optimizer.load_state_dict(optimizer_state)
        for generator, s in zip(generators, states, strict=True):
            generator.set_state(s["generator"])
        start = states[0]["iteration"]
        histories = [[tuple(row) for row in s["history"]] for s in states]
    diverged_at: list[int | None] = [None] * runs

    def snapshot(iteration: int) -> list[dict | None]:
        models = unstack_state(model.state_dict(), runs)
        optimizers = unstack_state(optimizer.state_dict(), runs)
        # A run whose state is no longer finite keeps its last good checkpoint: its divergence
        # may not have been logged yet (the state is saved before the iteration's logged row).
        return [
            None
            if diverged_at[k] is not None
            or not is_finite(models[k])
            or not is_finite(optimizers[k])
            else {
                "iteration": iteration,
                "model": models[k],
                "optimizer": optimizers[k],
                "generator": generators[k].get_state(),
                # Rows on the show_every grid only: a final off-grid row is redone if it goes on.
                "history": [row for row in histories[k] if row[0] % cfg.show_every == 0],
            }
            for k in range(runs)
        ]

    model.train()  # BatchNorm uses the statistics of the current image, always
    last_x: list[Tensor | None] = [None] * runs
    last_sparse: list[Tensor | None] = [None] * runs
    log_seconds: list[float] = []
    j = start
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.num_iter, initial=start, disable=not progress, dynamic_ncols=True)
    for j in range(start, cfg.num_iter):
        if checkpoint is not None and j > start and j % cfg.save_every == 0:
            checkpoint(snapshot(j))
        for k, generator in enumerate(generators):
            eta[k].normal_(0.0, cfg.reg_noise_std, generator=generator)
        with torch.autocast(device.type, torch.bfloat16, enabled=speed.bf16):
            x, prediction = forward(eta)
        losses = loss_fn(prediction.float(), y)
        if j % cfg.show_every == 0 or j == cfg.num_iter - 1:
            values = torch.stack([losses.detach().double(), psnr(x, clean, dim=(1, 2, 3))])
            loss_values, psnr_values = values.tolist()
            log_seconds.append(time.perf_counter() - t0)
            sparse = model.sparse_estimate().detach() if model.sparse else None
            for k in range(runs):
                if diverged_at[k] is not None:
                    continue
                if not np.isfinite(loss_values[k]) or np.isnan(psnr_values[k]):
                    diverged_at[k] = j
                    continue
                histories[k].append((j, loss_values[k], psnr_values[k]))
                last_x[k] = x[k].detach().float().clone()
                last_sparse[k] = None if sparse is None else sparse[k].clone()
            if all(d is not None for d in diverged_at):
                break
            bar.set_postfix(loss=f"{np.nanmean(loss_values):.3g}",
                            psnr=f"{np.nanmean(psnr_values):.2f}", refresh=False)  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # run k's parameters get the gradient of run k's loss alone
        optimizer.step()
        bar.update()
    bar.close()
    seconds = time.perf_counter() - t0
    done = j if all(d is not None for d in diverged_at) else cfg.num_iter
    if checkpoint is not None and done == cfg.num_iter:
        checkpoint(snapshot(done))
    results = []
    for k in range(runs):
        results.append(
            FitResult(
                history=histories[k],
                image=None if last_x[k] is None else last_x[k].cpu().numpy(),
                sparse=None if last_sparse[k] is None else last_sparse[k].cpu().numpy(),
                iterations=done if diverged_at[k] is None else diverged_at[k],
                seconds=seconds,
                steps=done - start,
                diverged_at=diverged_at[k],
                log_seconds=log_seconds,
            )
        )
    return results
