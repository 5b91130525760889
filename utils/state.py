"""Nested states (``state_dict``s of models, optimizers and observers) of K runs at once.

Every per-run tensor of a batch carries its runs along dimension 0: the grouped net's
parameters, the inputs z, g and h, the optimizer's per-entry state, the observers' buffers.
Stacking K single-run states concatenates those tensors; unstacking splits them. Tensors without
a dimension (step counters) and non-tensors (hyper-parameters) are shared, taken from the first
run. The walk over the nesting is optree's (torch's own pytree module is private).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import optree
import torch
from torch import Tensor, nn

from utils.seeding import derive_seed


def stack_states(states: Sequence[Any]) -> Any:
    """The state of a K-run batch from the K states of single runs (same structure)."""

    def stack(first: Any, *rest: Any) -> Any:
        if isinstance(first, Tensor) and first.dim():
            return torch.cat([first, *rest])
        return first

    return optree.tree_map(stack, *states)


def unstack_state(state: Any, runs: int) -> list[Any]:
    """The K single-run states of a batch's state, as copies in host memory, each tensor in the
    layout of its source (saving one run's state must not write the storage of the whole batch;
    a checkpoint of a GPU's runs takes no device memory, so it cannot run out of it)."""

    def part(k: int):
        def take(leaf: Any) -> Any:
            if not isinstance(leaf, Tensor):
                return leaf
            return (leaf.chunk(runs)[k] if leaf.dim() else leaf).to("cpu", copy=True)

        return take

    return [optree.tree_map(part(k), state) for k in range(runs)]


def generator_device(state: dict) -> str:
    """The device type ("cpu", "cuda") whose generator drew a checkpoint's input perturbation η:
    recorded as ``eta_device``, or (checkpoints before it was recorded) told by the size of the
    generator's state, 5056 bytes for the CPU's Mersenne twister and 16 for CUDA's Philox (seed
    and offset). A state restores only into a generator of its own device type."""
    if "eta_device" in state:
        return state["eta_device"]
    cpu_size = torch.Generator().get_state().numel()
    return "cpu" if state["generator"].numel() == cpu_size else "cuda"


def is_finite(state: Any) -> bool:
    """Whether every floating-point tensor in a nested state is free of NaN and infinity."""
    return all(
        bool(torch.isfinite(leaf).all())
        for leaf in optree.tree_leaves(state)
        if isinstance(leaf, Tensor) and leaf.is_floating_point()
    )


def per_run_module(build: Callable[[int], nn.Module], seeds: Sequence[int], stream: str
                   ) -> nn.Module:  # fmt: skip
    """One module for K = len(seeds) runs. ``build(groups)`` makes a module of ``groups``
    independent groups; run k's tensors are those ``build(1)`` draws from the ``stream`` of
    seeds[k] (``utils.seeding``; the global random stream is left as it was), stacked into
    ``build(K)`` along dimension 0."""
    modules = []
    for seed in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, stream))
            modules.append(build(1))
    if len(modules) == 1:
        return modules[0]
    with torch.random.fork_rng(devices=[]):
        module = build(len(modules))
    module.load_state_dict(stack_states([m.state_dict() for m in modules]))
    return module
