"""What a prior is to the loop: a generator of K image estimates x = f(θ; z + η).

A prior is an ``nn.Module`` that defines

* ``input``: the input z (a buffer, or a parameter when it is trained), shape (K, ...), one per run;
* ``forward(eta)``: the K image estimates (K, C, H, W) from z + η, where η has z's shape and is
  drawn afresh by the loop at every iteration with std ``reg_noise_std`` (None when that is 0);
* ``trainable()``: the tensors gradient descent moves; the optimizer holds these and nothing else
  (by default every parameter that requires a gradient);
* ``defaults``: the settings of its reference code (optimizer, learning rate, input
  perturbation, width, loss, TV weight), used where the command line does not set them, and
  ``dop_defaults``, those that replace them under DOP: DOP's implicit bias is that of plain
  gradient descent with the discrepant steps lr and lr_c = α·lr (You et al., 2020); with Adam,
  whose steps do not scale with the gradient, lr_c is no longer a ratio of steps and g, h grow
  everywhere at once, so a prior whose reference optimizer is Adam names there the plain
  gradient descent it runs under DOP (``engine.config.RunConfig.resolved`` applies them);
* ``own_settings``: the ``RunConfig`` fields only this prior reads (refused with other priors),
  and ``check(cfg)``, its one-line refusals of bad settings;
* its constructor ``(image_shape, *, width, seeds, pad)``: K runs, each drawn from the streams of
  its own seed (``utils.seeding``), with every per-run tensor carrying the runs along dimension 0,
  so that K single-run states stack into the batch's state (``utils.state``);
* ``options(cfg)``: any further constructor arguments it takes from the settings;
* ``multiple`` and ``smallest_side``: the image sides it accepts (the command line crops to a
  multiple of ``multiple`` unless ``--pad``);
* for ``--low_memory``, a prior with deep activations has modules with a ``checkpointed``
  attribute that their forward consults (recompute the activations in the backward instead of
  keeping them, with ``torch.utils.checkpoint``; the result must be the same);
  ``checkpoint_activations`` sets it on all of them, and ``checkpointing`` is True. A prior
  without such modules keeps every activation (it has few);
* ``memory_scale``: its activation memory per canvas pixel relative to the skip net's at the
  same width, for the estimate before a run (``utils.memory``; measured, docs/RESULTS.md);
* ``indexed_elements``: per run, the elements of its largest tensor that a CUDA kernel indexes
  with 32-bit integers (reflection padding; channels-last bilinear upsampling), for the limit on
  a GPU (``utils.memory.within_index_limit``).

A new prior is a new file in models/ with such a class and an entry in ``models.PRIORS``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from utils.seeding import derive_seed
from utils.state import per_run_module


class Prior(nn.Module):
    defaults: ClassVar[dict[str, object]] = {"alg": "adam", "lr": 0.01, "reg_noise_std": 0.0}
    dop_defaults: ClassVar[dict[str, object]] = {}
    own_settings: ClassVar[tuple[str, ...]] = ()
    multiple: ClassVar[int] = 1
    checkpointing: ClassVar[bool] = False
    memory_scale: ClassVar[float] = 1.0
    input: Tensor

    @property
    def runs(self) -> int:
        return self.input.shape[0]

    def forward(self, eta: Tensor | None) -> Tensor:
        raise NotImplementedError

    def checkpoint_activations(self, on: bool) -> None:
        """Recompute the activations of every module that can (``checkpointed``) in the backward
        instead of keeping them from the forward (--low_memory), or keep them again."""
        for module in self.modules():
            if hasattr(module, "checkpointed"):
                module.checkpointed = on

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def count_trained(self) -> int:
        """Entries gradient descent moves, per run (reported with every run)."""
        return sum(p.numel() for p in self.trainable()) // self.runs

    @classmethod
    def check(cls, cfg: Any) -> None:
        """Refuse this prior's bad settings in one line (``utils.InputError``)."""

    @classmethod
    def options(cls, cfg: Any) -> dict[str, Any]:
        """Constructor arguments this prior takes from the run's settings (a RunConfig), beyond
        (image_shape, width, seeds, pad): e.g. the lottery prior's ticket from ``--mask``."""
        return {}

    @classmethod
    def smallest_side(cls, pad: bool) -> int:
        """The smallest image side this prior can produce (after the crop, or with --pad)."""
        return 1

    @classmethod
    def indexed_elements(cls, width: int, canvas: Sequence[int], options: dict[str, Any]
                         ) -> int:  # fmt: skip
        """Per run, the elements of the largest tensor the prior hands a CUDA kernel with 32-bit
        index math, on a canvas of sides ``canvas`` with constructor ``options``; K batched runs
        put K times as many in one tensor, which must stay below ``utils.memory.INDEX_LIMIT``.
        0: no such kernel."""
        return 0


def per_run_net(build: Callable[[int], nn.Module], seeds: Sequence[int]) -> nn.Module:
    """One net for K = len(seeds) runs: ``utils.state.per_run_module`` from each run's "weights"
    stream (run k's weights are those ``build(1)`` draws from seeds[k]'s stream, stacked into
    ``build(K)`` along dimension 0)."""
    return per_run_module(build, seeds, "weights")


def per_run_input(seeds: Sequence[int], shape: Sequence[int], draw=torch.rand, later: int = 0
                  ) -> Tensor:  # fmt: skip
    """z for K runs, (K, *shape): run k's drawn by ``draw`` (torch.rand: uniform [0, 1);
    torch.randn: standard normal) from the "input" stream of seeds[k]; ``later``: the draw after
    that many others from the same stream (a new z for the same run, as the lottery prior's
    search draws one every round)."""
    streams = [torch.Generator().manual_seed(derive_seed(seed, "input")) for seed in seeds]
    for stream in streams:
        for _ in range(later):
            draw(1, *shape, generator=stream)
    return torch.cat([draw(1, *shape, generator=stream) for stream in streams])
