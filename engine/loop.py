"""The optimisation loop of the Deep-Image-Prior family, written once.

The model of an observation y (K runs at once, runs along dimension 0):

    y ≈ A(x) + s,    x = f(θ; z + η),    s = g⊙g − h⊙h (DOP) or s = 0 (DIP)

* the prior f (models/: a generator, its input z, which of its tensors are trained, its input
  perturbation η drawn afresh at every iteration, its default optimizer),
* the forward operator A (tasks/: the task's operator; the identity for denoising),
* the sparse-outlier term s (models/sparse.py; You, Zhu, Qu, Ma, NeurIPS 2020, arXiv 2006.08857),
* the data-fit loss of the residual A(x) + s − y, and an optional TV penalty of x (utils/losses.py),
* observers of every iterate that use no ground truth (utils/observers.py): an output moving
  average, and the early-stopping rules (utils/stopping.py), one of which may end a run;
* metrics against a clean image, computed only when one exists (utils/metrics.py).

Gradient descent takes a step of ``lr`` for the prior's trainable tensors and ``lr_c`` for (g, h):
two optimizer groups, so DOP's discrepant ratio α = lr_c / lr is one setting; (g, h) take plain
gradient descent (``--alg_c sgd``) even where the rest takes Adam (SelfDeblur's deblurring). The
recovered image is x alone. The loop advances K independent runs together: the objective is the sum
of the K losses, so each run's parameters get exactly the gradient of its own loss. How fast it runs
(``Speed``) is separate from what it computes.

Repeatable bit for bit on the CPU: a seed gives one history, a resumed run ends as the
uninterrupted one (and detects the same stopping iteration), and ``--low_memory`` gives the
faithful path's history; K batched runs give K separate runs' histories up to the grouped
convolutions' rounding. On a GPU the backward of the reflection padding and of the bilinear
upsampling (and the SR task's antialiased bicubic) add with atomicAdd in no fixed order, with
or without ``--deterministic`` (``precision``), so none of that holds to the bit: what holds is
the same result up to that rounding, the same PSNR within a tolerance that
``benchmarks.gpu_smoke`` measures (docs/RESULTS.md, "GPU checklist"). A checkpoint resumes on
the device type it was made on (its η stream's generator is that device's).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections import ChainMap
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from engine.config import RunConfig
from models import PRIORS, Prior, SparseTerm
from tasks import TASKS
from tasks.operators import Operator
from utils.losses import objective
from utils.metrics import METRICS, OraclePeak
from utils.observers import MovingAverage, Observer
from utils.seeding import derive_seed
from utils.state import generator_device, is_finite, stack_states, unstack_state
from utils.stopping import RULES, StoppingRule, stopping_rules


class Model(nn.Module):
    """y ≈ A(x) [+ g⊙g − h⊙h] with x from the prior."""

    def __init__(
        self, prior: Prior, operator: Operator | None = None, sparse: SparseTerm | None = None
    ) -> None:
        super().__init__()
        self.prior = prior
        self.operator = operator if operator is not None else Operator()
        self.sparse = sparse

    @property
    def runs(self) -> int:
        return self.prior.runs

    def forward(self, eta: Tensor | None) -> tuple[Tensor, Tensor]:
        """(x, prediction of y) for the K runs; x is the part the operator reports (all of it but
        for a 'valid' blur)."""
        x = self.prior(eta)
        prediction = self.operator(x)
        x = self.operator.crop(x)
        return x, prediction if self.sparse is None else prediction + self.sparse()


def build_model(
    cfg: RunConfig, image_shape: Sequence[int], seeds: Sequence[int],
    operator: Operator | None = None, **prior_options,
) -> Model:  # fmt: skip
    """The model of ``cfg`` (resolved) for K = len(seeds) runs with images x of ``image_shape``
    (C, H, W) and the forward ``operator`` (default: the identity), each run drawn from the
    streams of its own seed, on the CPU (so the draws do not depend on the device). The sparse
    term has the shape of the observation A(x). The prior's constructor gets the options it
    takes from ``cfg`` (``Prior.options``: the lottery prior's ``--mask``), those of the task
    for it (``Task.options``: SelfDeblur's skip net), then ``prior_options``."""
    require_resolved(cfg)
    kind = PRIORS[cfg.prior]
    options = kind.options(cfg) | TASKS[cfg.task].options(cfg, cfg.prior) | prior_options
    prior = kind(image_shape, width=cfg.width, seeds=seeds, pad=cfg.pad, **options)
    operator = operator if operator is not None else Operator()
    observed = operator.output_shape(image_shape)
    sparse = SparseTerm(observed, seeds) if cfg.method == "dop" else None
    return Model(prior, operator, sparse)


def require_resolved(cfg: RunConfig) -> None:
    """The model and the loop take settings resolved once (``RunConfig.resolved``)."""
    if not cfg.is_resolved:
        raise ValueError("the settings must be resolved first: pass cfg.resolved()")


def stopping_observers(cfg: RunConfig, shape: Sequence[int], dtype: torch.dtype,
                       seeds: Sequence[int] | None = None) -> list[Observer]:  # fmt: skip
    """The observers ``cfg`` asks for, for K runs of images of ``shape`` (K, C, H, W) with these
    ``seeds`` (default 0, 1, ...): the output moving average (``--ema``) and the stopping rule
    (``--stop``), with the light rules too when ``--stop_observe`` measures them."""
    seeds = range(shape[0]) if seeds is None else seeds
    observers: list[Observer] = [] if cfg.ema is None else [MovingAverage(cfg.ema, shape, dtype)]
    names = [name for name, rule in RULES.items()
             if name == cfg.stop or (cfg.stop_observe and rule.light)]  # fmt: skip
    return observers + stopping_rules(names, cfg, shape, dtype, seeds)


@dataclass(frozen=True)
class Speed:
    """How the loop runs; none of it changes the algorithm. The default is the public code's
    recipe: fp32 (no TF32 on a GPU), eager, contiguous tensors, torch's default optimizer, and
    cuDNN's heuristic choice of convolution algorithms. (The public code turns cuDNN's autotuner
    on; the faithful path leaves it off: it changes only which kernel runs, so only the rounding,
    but that by timings, from run to run. The fast path turns it on.)"""

    channels_last: bool = False  # NHWC activations for the prior (tensor cores want them)
    bf16: bool = False  # autocast the forward (and so the backward) to bfloat16
    compile: bool = False  # torch.compile the model's forward (and, through it, the backward)
    foreach: bool | None = None  # one multi-tensor kernel per optimizer step (None: torch's pick)
    fused: bool | None = None  # one fused kernel per optimizer step
    tf32: bool = False  # let cuDNN and cuBLAS use TF32 for fp32 convolutions and matmuls
    checkpoint: bool = False  # recompute the prior's activations in the backward (--low_memory)
    benchmark: bool = False  # cuDNN's autotuner: time the convolution algorithms, keep the best
    deterministic: bool = False  # torch's deterministic algorithms (--deterministic)

    @classmethod
    def of(cls, fast: bool, device: torch.device | str, low_memory: bool = False, *,
           deterministic: bool = False, capability: tuple[int, int] | None = None
           ) -> Speed:  # fmt: skip
        """What ``--fast`` turns on for a device (docs/RESULTS.md, "Speed"); off: faithful.
        g, h, the loss, the metrics and the optimizer stay fp32 either way. ``--low_memory``
        adds activation checkpointing (without torch.compile, which is not measured with it).

        On a GPU by its compute ``capability`` (default: the device's): bf16 autocast, with the
        channels-last layout tensor cores want, and TF32 from 8.0 (Ampere; older GPUs have
        neither bf16 tensor cores nor TF32, and emulate bf16 slowly); torch.compile from 7.0
        (its Triton kernels' minimum). ``deterministic`` (--deterministic) leaves out cuDNN's
        autotuner and torch.compile (its generated kernels are not covered)."""
        base = cls(checkpoint=low_memory, deterministic=deterministic)
        if not fast:
            return base
        if torch.device(device).type == "cuda":
            capability = capability or torch.cuda.get_device_capability(device)
            ampere = tuple(capability) >= (8, 0)
            compiles = tuple(capability) >= (7, 0) and not low_memory and not deterministic
            return dataclasses.replace(base, channels_last=ampere, bf16=ampere, compile=compiles,
                                       fused=True, tf32=ampere,
                                       benchmark=not deterministic)  # fmt: skip
        return dataclasses.replace(base, bf16=cpu_has_bf16(), foreach=True)

    def optimizer_kernels(self) -> dict[str, bool]:
        chosen = {"foreach": self.foreach, "fused": self.fused}
        return {key: value for key, value in chosen.items() if value is not None}


def cpu_has_bf16() -> bool:
    """Whether the CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX), from /proc/cpuinfo
    (Linux); elsewhere bf16 is left off."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


CUBLAS_WORKSPACE = ":4096:8"  # what cuBLAS needs to be deterministic (CUDA >= 10.2)


@contextlib.contextmanager
def precision(speed: Speed) -> Iterator[None]:
    """The loop's numerics, restored afterwards: TF32 on or off (PyTorch lets cuDNN use TF32
    for fp32 convolutions by default; the faithful path turns it off), cuDNN's autotuner
    (``speed.benchmark``), and with ``speed.deterministic`` torch's deterministic algorithms.

    Deterministic (docs/RESULTS.md, "GPU checklist"): cuDNN picks deterministic convolution
    algorithms, cuBLAS gets a fixed workspace (CUBLAS_WORKSPACE_CONFIG, read when cuBLAS first
    runs in the process, so set here, before the loop's first step, unless already set), and
    every op torch has a deterministic version of uses it. Torch has none for the backward of
    CUDA's reflection padding (``reflection_pad2d_backward_cuda``), bilinear upsampling
    (``upsample_bilinear2d_backward_out_cuda``) and antialiased bicubic downsampling: those
    still add with atomicAdd in no fixed order, so torch is asked to warn there
    (``warn_only``) rather than raise, and a GPU run of the skip net is still not bit-for-bit
    repeatable; what holds there is the same result up to that rounding (the same PSNR within
    a tolerance). Torch then also fills every uninitialised tensor it allocates, which costs
    time. On the CPU every kernel the loop uses is deterministic anyway."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark, cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())  # fmt: skip
    cudnn.allow_tf32 = matmul.allow_tf32 = speed.tf32
    cudnn.benchmark = speed.benchmark
    if speed.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark, cudnn.deterministic = saved[:4]
        torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])


def steps(model: Model, cfg: RunConfig) -> dict[str, float]:
    """The step of each optimizer group: the prior's tensors ``lr``; g, h (DOP) ``lr_c`` after
    its scaling to the observation's entries per run; the operator's (blind deblurring's kernel
    generator) ``lr_kernel``. The one place lr_c is computed (the report reads it here too)."""
    out = {"prior": cfg.lr}
    if model.sparse is not None:
        out["sparse"] = cfg.lr_c_used(model.sparse.g[0].numel())
    if hasattr(model.operator, "trainable"):
        out["operator"] = cfg.lr_kernel
    return out


OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}


def make_optimizer(model: Model, cfg: RunConfig, speed: Speed = Speed()
                   ) -> torch.optim.Optimizer | Optimizers:  # fmt: skip
    """One group per entry of ``steps``, each with its ``base_lr`` for ``--lr_milestones``; the
    groups take ``--alg``, but g, h take ``--alg_c``. SGD has no momentum, as in the paper.

    DOP's implicit bias towards a sparse g⊙g − h⊙h is that of gradient descent from a small
    initialisation with the step lr_c (You et al., 2020); Adam's steps do not scale with the
    gradient, so under Adam every entry of g, h grows at once. Where the prior and the kernel
    generator take Adam (SelfDeblur's deblurring) and g, h plain gradient descent, the groups are
    split between two optimizers (``Optimizers``); lr_c is then the step of g, h alone, no
    longer a ratio to lr."""
    params = {"prior": model.prior.trainable(),
              "sparse": list(model.sparse.parameters()) if model.sparse is not None else [],
              "operator": getattr(model.operator, "trainable", list)()}  # fmt: skip
    lrs = steps(model, cfg)
    algs = {name: cfg.alg_c if name == "sparse" else cfg.alg for name in lrs}
    parts, where = [], {}  # the optimizers; each group's (optimizer, index in it)
    for alg in dict.fromkeys(algs.values()):
        names = [name for name in lrs if algs[name] == alg]
        groups = [{"params": params[name], "lr": lrs[name], "base_lr": lrs[name]}
                  for name in names]  # fmt: skip
        where |= {name: (len(parts), j) for j, name in enumerate(names)}
        parts.append(OPTIMIZERS[alg](groups, lr=cfg.lr, **speed.optimizer_kernels()))
    return parts[0] if len(parts) == 1 else Optimizers(parts, [where[name] for name in lrs])


class Optimizers:
    """Several torch optimizers stepped as one, for groups that take different algorithms: what
    the loop uses of an optimizer (``param_groups`` in the groups' order, ``state``, ``zero_grad``,
    ``step``, ``state_dict`` and ``load_state_dict``, whose state is {"optimizers": [...]})."""

    def __init__(self, parts: list[torch.optim.Optimizer], order: list[tuple[int, int]]) -> None:
        self.parts, self.order = parts, order

    @property
    def param_groups(self) -> list[dict]:
        return [self.parts[i].param_groups[j] for i, j in self.order]

    @property
    def state(self) -> ChainMap:
        return ChainMap(*(part.state for part in self.parts))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for part in self.parts:
            part.step()

    def state_dict(self) -> dict:
        return {"optimizers": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state: dict) -> None:
        for part, saved in zip(self.parts, state["optimizers"], strict=True):
            part.load_state_dict(saved)


@dataclass
class FitResult:
    history: list[dict[str, float]]  # logged rows: iteration, loss, observers', metrics'
    image: np.ndarray | None  # the last logged (finite) x, (C, H, W); None if there was none
    sparse: np.ndarray | None  # g⊙g − h⊙h at that point (DOP only)
    iterations: int  # iterations completed, counting resumed ones
    seconds: float = 0.0  # wall time of this call's loop
    steps: int = 0  # iterations run by this call
    diverged_at: int | None = None  # first logged iteration whose loss was not finite
    stopped_at: int | None = None  # the logged row at which the stopping rule was seen fired
    estimates: dict[str, np.ndarray] = field(default_factory=dict)  # observers' at that row
    detections: dict[str, dict] = field(default_factory=dict)  # each rule's StoppingRule.outcome
    peaks: dict[str, float | int] = field(default_factory=dict)  # OraclePeak's (with a clean image)
    log_seconds: list[float] = field(default_factory=list)  # loop time at this call's rows


@dataclass
class Loop:
    """Everything the loop holds for a batch of K runs."""

    model: Model
    optimizer: torch.optim.Optimizer | Optimizers
    observers: nn.ModuleList
    oracle: OraclePeak | None  # every iteration's best PSNR (with a clean image): an oracle
    stop: StoppingRule | None  # the rule that ends runs (None: no rule, or --stop_observe)
    cfg: RunConfig
    speed: Speed
    y: Tensor
    clean: Tensor | None
    generators: list[torch.Generator]  # each run's η stream, on the device
    eta: Tensor | None  # η of the current iteration (None: no perturbation)
    histories: list[list[dict[str, float]]]
    diverged_at: list[int | None]
    stopped_at: list[int | None]
    # each run's (x, s, observers' estimates) at its last finite row
    last: list[tuple[Tensor, Tensor | None, dict[str, Tensor]] | None]
    log_seconds: list[float] = field(default_factory=list)
    start: int = 0

    def live(self) -> list[int]:
        """The runs still logged: neither diverged nor stopped."""
        ended = zip(self.diverged_at, self.stopped_at, strict=True)
        return [k for k, (diverged, stopped) in enumerate(ended) if diverged is stopped is None]


def fit(model: Model, y: Tensor, cfg: RunConfig, *, seed: int = 0, state: dict | None = None,
        checkpoint: Callable[[dict], None] | None = None, **options) -> FitResult:  # fmt: skip
    """One run: ``fit_batch`` with K = 1. Raises FloatingPointError if it diverged before
    logging a finite row."""
    [result] = fit_batch(
        model, y, cfg, seeds=[seed], states=None if state is None else [state],
        checkpoint=None if checkpoint is None else lambda states: checkpoint(states[0]), **options,
    )  # fmt: skip
    if result.image is None:
        raise FloatingPointError(
            f"the loss became NaN or infinite by iteration {result.diverged_at}"
        )
    return result


def fit_batch(
    model: Model,
    y: Tensor,
    cfg: RunConfig,
    *,
    seeds: Sequence[int],
    clean: Tensor | None = None,
    observers: Sequence[Observer] = (),
    states: Sequence[dict] | None = None,
    checkpoint: Callable[[list[dict | None]], None] | None = None,
    progress: bool = True,
    speed: Speed | None = None,
) -> list[FitResult]:
    """Iterations ``states[k]['iteration']`` (or 0) to ``cfg.num_iter`` of gradient descent for the
    K runs of ``model`` (y, clean: (K, C, H, W); one seed, and one state to resume, per run).

    ``cfg`` must be resolved (``RunConfig.resolved``). The observers are those ``cfg`` asks for
    (``--ema``, ``--stop``: ``stopping_observers``), then ``observers``, any others.

    Logs every run's loss, observers' columns and (with ``clean``) metrics at every multiple of
    ``show_every`` and at the last iteration, for x of that iteration's forward pass (before its
    step), as the public code does; these rows are the loop's only host-device syncs. With
    ``clean``, the best PSNR of x and of every observer's estimate over every iteration is kept
    on the device too (``OraclePeak``: an oracle). The observers see each iteration's x and
    losses; one that waits for the image of the net after the last step (find_best) gets it from
    one more forward pass without η after the loop.
    ``checkpoint`` receives the K runs' states (each a single run's, in host memory; None for a
    run whose last checkpoint must be kept) every ``save_every`` iterations and at the end;
    passing them back continues the runs, batched or one by one, on the same device type: on
    the CPU exactly (bit for bit), on a GPU up to the rounding of its nondeterministic backward
    kernels (``precision``). A run whose loss becomes NaN or infinite
    stops being logged (``diverged_at``); so does a run whose stopping rule (``cfg.stop``) is seen
    fired at a logged row (``stopped_at``: that row is its last, and its
    state after that iteration's step its last checkpoint). The loop ends when every run has.
    """
    loop = start_loop(model, y, cfg, seeds, clean, observers, states, speed)
    forward = torch.compile(model) if loop.speed.compile else model
    model.train()  # BatchNorm uses the statistics of the current image, always
    bar = tqdm(total=cfg.num_iter, initial=loop.start, disable=not progress, dynamic_ncols=True)
    t0, done = time.perf_counter(), cfg.num_iter
    with precision(loop.speed):
        for j in range(loop.start, cfg.num_iter):
            due = j % cfg.save_every == 0 or j - 1 in loop.stopped_at  # a run stopped at j − 1
            if checkpoint is not None and j > loop.start and due:
                checkpoint(snapshot(loop, j))
            if cfg.lr_milestones:
                set_learning_rates(loop.optimizer, cfg, j)
            x, losses = evaluate(loop, forward, j)
            for observer in loop.observers:
                observer.update(j, x, losses.detach())
            track_peaks(loop, j, x)
            if j % cfg.show_every == 0 or j == cfg.num_iter - 1:
                log_row(loop, j, x, losses, time.perf_counter() - t0, bar)
                if all(d is not None for d in loop.diverged_at):
                    done = j
                    break
            loop.optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()  # run k's parameters get the gradient of run k's loss alone
            loop.optimizer.step()
            bar.update()
            if not loop.live():  # every run stopped (or diverged) at this row
                done = j + 1
                break
        if checkpoint is not None:  # before the pending images: a longer run takes them from
            checkpoint(snapshot(loop, done))  # its next iteration, as one run uninterrupted
        finish_pending(loop, forward, done)
    bar.close()
    return results(loop, done, time.perf_counter() - t0)


def track_peaks(loop: Loop, j: int, x: Tensor) -> None:
    """Every iteration's PSNR of x and of the observers' estimates into ``loop.oracle``."""
    if loop.oracle is None:
        return
    images = {"": x} | {f"_{o.name}": e for o in loop.observers if (e := o.estimate()) is not None}
    align = loop.model.operator.align  # (phase retrieval's ambiguities; else the identity)
    loop.oracle.update(j, {name: align(e, loop.clean) for name, e in images.items()}, loop.clean)


def finish_pending(loop: Loop, forward: Callable, steps: int) -> None:
    """The image of the net after the last of ``steps`` steps, for the observers that wait for
    it (``Observer.pending``): one forward pass without η (after the loop, one host sync)."""
    waiting = [o for o in loop.observers if (p := o.pending()) is not None and bool(p.any())]
    if not waiting:
        return
    with torch.no_grad(), torch.autocast(loop.y.device.type, torch.bfloat16,
                                         enabled=loop.speed.bf16):  # fmt: skip
        x, _ = forward(None)
    for observer in waiting:
        observer.finish(steps, x.to(loop.y.dtype))


def start_loop(
    model: Model,
    y: Tensor,
    cfg: RunConfig,
    seeds: Sequence[int],
    clean: Tensor | None,
    observers: Sequence[Observer],
    states: Sequence[dict] | None,
    speed: Speed | None,
) -> Loop:
    """The loop's state for a new batch, or for one resumed from ``states``."""
    runs, device = model.runs, y.device
    if y.shape[0] != runs or len(seeds) != runs or (clean is not None and clean.shape[0] != runs):
        raise ValueError(f"{runs} runs need y (and clean) with {runs} rows and {runs} seeds")
    require_resolved(cfg)
    # The observers watch the reported x (crop(x)), of the shape of the clean image, not y's.
    reported = model.operator.crop_shape(model.operator.input_shape(y.shape[1:]))
    observers = [*stopping_observers(cfg, (runs, *reported), y.dtype, seeds), *observers]
    speed = speed or Speed.of(cfg.fast, device, cfg.low_memory, deterministic=cfg.deterministic)
    estimates = [f"_{o.name}" for o in observers if o.estimate() is not None]
    oracle = None if clean is None else OraclePeak(["", *estimates], runs).to(device)
    if speed.channels_last:  # the prior's activations; η is drawn in the standard layout
        model.prior.to(memory_format=torch.channels_last)
    model.prior.checkpoint_activations(speed.checkpoint)
    std = cfg.reg_noise_std
    stop = None if cfg.stop_observe else next(
        (o for o in observers if isinstance(o, StoppingRule) and o.name == cfg.stop), None
    )  # fmt: skip
    loop = Loop(
        model=model, optimizer=make_optimizer(model, cfg, speed),
        observers=nn.ModuleList(observers).to(device), oracle=oracle, stop=stop, cfg=cfg,
        speed=speed, y=y,
        clean=clean,
        generators=[torch.Generator(device).manual_seed(derive_seed(s, "eta")) for s in seeds],
        eta=torch.empty(model.prior.input.shape, device=device, dtype=model.prior.input.dtype)
        if std > 0 else None,
        histories=[[] for _ in range(runs)], diverged_at=[None] * runs,
        stopped_at=[None] * runs, last=[None] * runs,
    )  # fmt: skip
    if states is not None:
        restore(loop, states)
    return loop


def restore(loop: Loop, states: Sequence[dict]) -> None:
    """Load K single-run states into the batch (same iteration for all), their η streams drawn
    on this device type (``utils.state.generator_device``)."""
    if len({s["iteration"] for s in states}) != 1:
        raise ValueError("runs resumed in one batch must be at the same iteration")
    here = loop.generators[0].device.type
    for drawn in {generator_device(s) for s in states} - {here}:
        raise ValueError(f"a checkpoint whose η was drawn on {drawn} cannot go on on {here}: "
                         "a generator's state restores only on its own device type")  # fmt: skip
    loop.model.load_state_dict(stack_states([s["model"] for s in states]))
    loop.observers.load_state_dict(stack_states([s["observers"] for s in states]))
    if loop.oracle is not None and all("oracle" in s for s in states):  # (not in older states)
        loop.oracle.load_state_dict(stack_states([s["oracle"] for s in states]))
    optimizer_state = stack_states([s["optimizer"] for s in states])
    # This call's kernels, not the checkpoint's: set before loading, because loading decides
    # from them where Adam keeps its step counters (on the device only for fused kernels).
    kernels = {"foreach": None, "fused": None} | loop.speed.optimizer_kernels()
    for part in optimizer_state.get("optimizers", [optimizer_state]):
        part["param_groups"] = [g | kernels for g in part["param_groups"]]
    loop.optimizer.load_state_dict(optimizer_state)
    lay_out_like_parameters(loop.optimizer)
    for generator, state in zip(loop.generators, states, strict=True):
        generator.set_state(state["generator"])
    loop.histories = [[dict(row) for row in s["history"]] for s in states]
    loop.start = states[0]["iteration"]


def lay_out_like_parameters(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor (Adam's moments) its parameter's memory layout:
    loading keeps the checkpoint's strides, so a run saved without --fast and resumed with it
    would pair channels-last weights with contiguous moments, which fused Adam refuses
    ("must have same dtype, device, and layout") and the other kernels run slower."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if (isinstance(value, Tensor) and value.shape == param.shape
                        and value.stride() != param.stride()):  # fmt: skip
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def set_learning_rates(optimizer: torch.optim.Optimizer, cfg: RunConfig, j: int) -> None:
    """Step decay (``torch.optim.lr_scheduler.MultiStepLR`` in closed form, as SelfDeblur
    steps it): every group's lr at iteration j is base_lr · γ^(milestones ≤ j). Stateless, so a
    resumed run continues the schedule exactly."""
    factor = cfg.lr_gamma ** sum(m <= j for m in cfg.milestones())
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


def evaluate(loop: Loop, forward: Callable, j: int = 0) -> tuple[Tensor, Tensor]:
    """One forward pass at iteration j: the K image estimates x (detached, in y's dtype) and
    the K losses."""
    if loop.eta is not None:
        for k, generator in enumerate(loop.generators):
            loop.eta[k].normal_(0.0, loop.cfg.reg_noise_std, generator=generator)
    with torch.autocast(loop.y.device.type, torch.bfloat16, enabled=loop.speed.bf16):
        x, prediction = forward(loop.eta)
    x = x.to(loop.y.dtype)  # the loss, the metrics and the observers are fp32 under bf16
    cfg = loop.cfg
    losses = objective(prediction.to(loop.y.dtype), loop.y, x, j, loss=cfg.loss, tv=cfg.tv,
                       loss_switch=cfg.loss_switch, ssim_padding=cfg.ssim_padding,
                       l1l2=cfg.l1l2)  # fmt: skip
    return x.detach(), losses


def log_row(loop: Loop, j: int, x: Tensor, losses: Tensor, seconds: float, bar: tqdm) -> None:
    """Append row j to every live run's history, with one host sync for the whole row; a run
    whose loss is not finite (or a metric NaN) is marked diverged instead, and a run whose
    stopping rule has fired is marked stopped after this row. Observers' columns may be NaN
    (no value yet)."""
    columns = {"loss": losses.detach()}
    for observer in loop.observers:
        columns |= observer.columns()
    observed = set(columns) - {"loss"}
    estimates = {o.name: e for o in loop.observers if (e := o.estimate()) is not None}
    if loop.clean is not None:  # each image aligned first (phase retrieval's ambiguities)
        images = {"": x} | {f"_{name}": e for name, e in estimates.items()}
        for suffix, image in images.items():
            image = loop.model.operator.align(image, loop.clean)
            columns |= {name + suffix: f(image, loop.clean) for name, f in METRICS.items()}
    fired = [] if loop.stop is None else [loop.stop.fired]
    values = torch.stack([v.double() for v in [*columns.values(), *fired]]).tolist()
    fired = values.pop() if fired else [False] * len(loop.histories)
    loop.log_seconds.append(seconds)
    sparse = None if loop.model.sparse is None else loop.model.sparse().detach()
    for k, history in enumerate(loop.histories):
        if loop.diverged_at[k] is not None or loop.stopped_at[k] is not None:
            continue
        row = {"iteration": j} | {name: v[k] for name, v in zip(columns, values, strict=True)}
        checked = [v for name, v in row.items() if name not in observed]
        if not math.isfinite(row["loss"]) or any(math.isnan(v) for v in checked):
            loop.diverged_at[k] = j
            continue
        history.append(row)
        loop.last[k] = (x[k].clone(), None if sparse is None else sparse[k].clone(),
                        {name: e[k].clone() for name, e in estimates.items()})  # fmt: skip
        if fired[k]:
            loop.stopped_at[k] = j
    live = loop.live()
    if live:  # the bar shows the mean over the live runs
        shown = {
            name: np.mean([v[k] for k in live]) for name, v in zip(columns, values, strict=True)
        }
        bar.set_postfix({name: f"{v:.4g}" for name, v in shown.items()}, refresh=False)


def snapshot(loop: Loop, iteration: int) -> list[dict | None]:
    """Each run's resumable state. None keeps a run's last checkpoint: for a run that diverged
    or is no longer finite (its divergence may not be logged yet), and for a run that stopped
    before the step that leads to ``iteration``."""
    runs = loop.model.runs
    models = unstack_state(loop.model.state_dict(), runs)
    optimizers = unstack_state(loop.optimizer.state_dict(), runs)
    observers = unstack_state(loop.observers.state_dict(), runs)
    unset = {f"{i}.{name}" for i, o in enumerate(loop.observers) for name in o.unset}
    oracle = None if loop.oracle is None else unstack_state(loop.oracle.state_dict(), runs)
    states: list[dict | None] = []
    for k in range(runs):
        stopped = loop.stopped_at[k]
        watched = {key: value for key, value in observers[k].items() if key not in unset}
        if (
            loop.diverged_at[k] is not None
            or (stopped is not None and stopped + 1 != iteration)
            or not is_finite([models[k], optimizers[k], watched])
        ):
            states.append(None)
            continue
        states.append({
            "iteration": iteration, "stopped_at": stopped, "model": models[k],
            "optimizer": optimizers[k], "observers": observers[k],
            "generator": loop.generators[k].get_state(),
            "eta_device": loop.generators[k].device.type,
            **({} if oracle is None else {"oracle": oracle[k]}),
            # Rows on the show_every grid only: a final off-grid row is redone if it goes on.
            "history": [r for r in loop.histories[k] if r["iteration"] % loop.cfg.show_every == 0],
        })  # fmt: skip
    return states


def results(loop: Loop, done: int, seconds: float) -> list[FitResult]:
    """Each run's result; its images aligned to its clean image, when there is one, as the
    metrics see them (``Operator.align``: the identity but for phase retrieval)."""
    out = []
    rules = [o for o in loop.observers if isinstance(o, StoppingRule)]
    for k, history in enumerate(loop.histories):
        x, s, estimates = loop.last[k] or (None, None, {})
        x = None if x is None else aligned(loop, k, x)
        estimates = {name: aligned(loop, k, e) for name, e in estimates.items()}
        detections = {rule.name: rule.outcome(k) for rule in rules}
        for found in detections.values():
            found["image"] = aligned_array(loop, k, found["image"])
            found["others"] = {n: aligned_array(loop, k, a) for n, a in found["others"].items()}
        diverged, stopped = loop.diverged_at[k], loop.stopped_at[k]
        ended = diverged if diverged is not None else None if stopped is None else stopped + 1
        out.append(FitResult(
            history=history, image=None if x is None else x.cpu().numpy(),
            sparse=None if s is None else s.cpu().numpy(),
            iterations=done if ended is None else ended, seconds=seconds,
            steps=done - loop.start, diverged_at=diverged, stopped_at=stopped,
            estimates={name: e.cpu().numpy() for name, e in estimates.items()},
            detections=detections,
            peaks={} if loop.oracle is None or stopped is not None else loop.oracle.outcome(k),
            log_seconds=loop.log_seconds,
        ))  # fmt: skip
    return out


def aligned(loop: Loop, k: int, image: Tensor) -> Tensor:
    """Run k's image (C, H, W) aligned to its clean image (as is without one)."""
    if loop.clean is None:
        return image
    return loop.model.operator.align(image[None], loop.clean[k : k + 1])[0]


def aligned_array(loop: Loop, k: int, image: np.ndarray) -> np.ndarray:
    """``aligned`` for an image in host memory (a rule's detection)."""
    return aligned(loop, k, torch.from_numpy(image).to(loop.y.device)).cpu().numpy()
