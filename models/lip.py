"""The lottery image prior: a sparse subnetwork of the DIP skip net (Wu, Chen, Jiang, Wang,
"Chasing Better Deep Image Priors between Over- and Under-parameterization", TMLR 2023).

A *ticket* is a mask over the skip net's convolution weights and the weights it starts from (the
net's initialisation, or its weights at an early iteration: "rewinding"). Iterative magnitude
pruning (lip.py) finds it: train, prune 20% of the surviving convolution weights globally by
magnitude (biases and BatchNorm are never pruned), rewind the survivors, repeat. As in the
public code (Chasing-Better-DIPs, DIP_LTH/pruning_utils.py:91-95) the two convolutions that read
z (``INPUT_CONVS``: the outermost scale's skip 1×1 and stride-2 3×3) are never pruned: they are
ranked with the others, 20% of the whole pool of unmasked weights is chosen, and their share of
it is left dense (``prune_global``'s ``dense``), so the masked layers lose about 20% each round
and the net's sparsity stays a little below 1 − 0.8^k (at width 128 they hold 1.67% of the
weights: 95.7% instead of 97.2% after 16 rounds). ``prune_count``: this code's earlier rule,
every convolution pruned to exactly 1 − 0.8^k (``lip.py --prune_input_convs``). A ticket file
(``save_ticket``) holds::

    {"format", "kind": "lip" | "random" | "dense", "mask": {name: bool tensor},
     "rewind": the single net's state_dict to start from, "sparsity", "layer_sparsity",
     "round", "provenance": {images, target, rounds, seed, ...}}

with ``name`` a convolution weight of ``SkipNet`` (``body.skip.0.weight``, ..., ``head.0.weight``).

``LipPrior`` trains a ticket. How the mask is held: with ``torch.nn.utils.prune.custom_from_mask``
every convolution's ``weight`` becomes ``weight_orig * weight_mask``, recomputed before each
forward; ``weight_mask`` is a buffer and ``weight_orig`` the trained parameter. Both carry the
runs along dimension 0 like every other tensor of the grouped K-run net, so checkpoints, batching
(``utils.state.stack_states``) and resume need nothing new: a checkpoint holds ``weight_orig``
and ``weight_mask``. The masked entries of ``weight_orig`` are set to zero when the ticket is
applied; their gradient is the product's gradient times the mask, exactly zero, so neither SGD
(no weight decay) nor Adam (zero moments give a zero step) ever moves them: pruned weights are
exactly zero in the net, in ``weight_orig`` and in every checkpoint. Hand-written masking in
forward would compute the same; the pruning utilities keep the mask where torch puts it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from models.prior import per_run_input
from models.skip import INPUT_DEPTH, INPUT_SCALE, SCALES, SkipNet, SkipPrior
from utils import InputError
from utils.images import centre_crop
from utils.io import save_torch
from utils.seeding import derive_seed
from utils.state import stack_states

FORMAT = 1  # of ticket files
PRUNE_FRACTION = 0.2  # of the surviving weights, per round (the paper's)
# The convolutions that read z (public names '1.0.1.1' and '1.1.1.1'), never pruned there.
INPUT_CONVS = ("body.skip.0.weight", "body.deeper.0.weight")


@dataclass
class Ticket:
    """A mask over the skip net's convolution weights and the state its survivors start from."""

    mask: dict[str, Tensor]  # convolution weight name -> bool tensor (True: kept)
    rewind: dict[str, Tensor]  # a single SkipNet's state_dict
    meta: dict[str, Any] = field(default_factory=dict)  # kind, round, provenance
    path: str = "(in memory)"

    def sparsity(self) -> float:
        """The fraction of the convolution weights that are pruned."""
        total = sum(m.numel() for m in self.mask.values())
        return 1.0 - sum(int(m.sum()) for m in self.mask.values()) / total

    def net_sizes(self) -> tuple[int, int]:
        """(image channels, width) of the skip net the ticket is over: the shape C x width x 1 x
        1 of its output convolution."""
        channels, width = self.mask["head.0.weight"].shape[:2]
        return channels, width

    def layer_sparsity(self) -> dict[str, float]:
        return {name: 1.0 - m.float().mean().item() for name, m in self.mask.items()}


def convolutions(net: nn.Module) -> dict[str, nn.Conv2d]:
    """The prunable layers of a net: its convolutions, by the name of their weight."""
    return {f"{name}.weight": m for name, m in net.named_modules() if isinstance(m, nn.Conv2d)}


def dense_ticket(net: SkipNet, meta: dict | None = None) -> Ticket:
    """Round 0: every weight kept, starting from ``net``'s current weights."""
    mask = {name: torch.ones_like(conv.weight, dtype=torch.bool)
            for name, conv in convolutions(net).items()}  # fmt: skip
    rewind = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return Ticket(mask, rewind, {"kind": "dense", "round": 0} | (meta or {}))


def save_ticket(path: Path, ticket: Ticket) -> None:
    record = {"format": FORMAT, "mask": ticket.mask, "rewind": ticket.rewind,
              "sparsity": ticket.sparsity(), "layer_sparsity": ticket.layer_sparsity(),
              **ticket.meta}  # fmt: skip
    save_torch(path, record)


def load_ticket(path: str | Path) -> Ticket:
    """A ticket file written by ``save_ticket`` (InputError when it is not one)."""
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (missing, corrupt or foreign)
        raise InputError(f"--mask: cannot read {path} ({type(err).__name__})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise InputError(f"--mask: {path} is not a mask file of lip.py (format {FORMAT})")
    meta = {k: v for k, v in record.items()
            if k not in ("format", "mask", "rewind", "sparsity", "layer_sparsity")}  # fmt: skip
    return Ticket(record["mask"], record["rewind"], meta, str(path))


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_fits(ticket: Ticket, sizes: dict[str, int]) -> None:
    """InputError (one line) unless the ticket's mask and rewind state are those of a SkipNet of
    ``sizes`` (width, channels, scales, skip channels)."""
    with torch.device("meta"):
        net = SkipNet(**sizes)
    wanted = {name: tuple(conv.weight.shape) for name, conv in convolutions(net).items()}
    given = {name: tuple(m.shape) for name, m in ticket.mask.items()}
    states = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    rewind = {k: tuple(v.shape) for k, v in ticket.rewind.items()}
    net_desc = (f"the skip net of width {sizes['width']} with {sizes['out_channels']} channels "
                f"and {sizes['scales']} scales")  # fmt: skip
    for theirs, ours, what in ((given, wanted, "mask"), (rewind, states, "weights")):
        for name in sorted(set(theirs) | set(ours)):
            if theirs.get(name) != ours.get(name):
                raise InputError(
                    f"--mask {ticket.path} does not fit {net_desc}: its {what} has {name} of "
                    f"shape {theirs.get(name)}, the net {ours.get(name)} (use the --width and "
                    "image channels it was found with)"
                )
    if any(m.dtype != torch.bool for m in ticket.mask.values()):
        raise InputError(f"--mask {ticket.path}: masks must be boolean tensors")


def apply_mask(net: nn.Module, mask: dict[str, Tensor]) -> None:
    """Reparametrise every convolution of ``net`` as weight_orig * weight_mask
    (``prune.custom_from_mask``) and zero the masked entries of weight_orig."""
    for name, conv in convolutions(net).items():
        kept = mask[name].to(conv.weight.device)
        prune.custom_from_mask(conv, "weight", kept)
        with torch.no_grad():
            conv.weight_orig.mul_(kept)


def prune_global(net: nn.Module, amount: int | float, dense: Sequence[str] = ()
                 ) -> dict[str, Tensor]:  # fmt: skip
    """Prune more convolution weights of a masked net (``apply_mask``): the smallest surviving
    ones by magnitude over all layers at once (``prune.global_unstructured`` with L1, scored by
    the current weights weight_orig * weight_mask), ``amount`` of them (an int: that many; a
    float: that fraction of the unmasked ones, rounded as torch rounds it). The layers named in
    ``dense`` are ranked too, but keep every weight (the public code's ``prune_model_custom``
    does not apply their mask). Returns the new mask."""
    convs = convolutions(net)
    scores = {(conv, "weight"): (conv.weight_orig * conv.weight_mask).detach()
              for conv in convs.values()}  # fmt: skip
    prune.global_unstructured(list(scores), pruning_method=prune.L1Unstructured,
                              importance_scores=scores, amount=amount)  # fmt: skip
    return {name: torch.ones_like(conv.weight_mask, dtype=torch.bool, device="cpu")
            if name in dense else conv.weight_mask.detach().bool().cpu().clone()
            for name, conv in convs.items()}  # fmt: skip


def prune_count(total: int, remaining: int, round_: int) -> int:
    """Weights to prune in round k so that round(0.8^k · total) survive: the sparsity after k
    rounds is 1 − 0.8^k to within half a weight (no drift from rounding each round)."""
    return remaining - round((1 - PRUNE_FRACTION) ** round_ * total)


def random_like(ticket: Ticket, seed: int) -> Ticket:
    """A random mask with the ticket's number of pruned weights in every layer
    (``prune.RandomUnstructured`` per layer, seeded), over the same rewind weights."""
    mask = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, kept in ticket.mask.items():
            pruned = int((~kept).sum())
            ones = torch.ones(kept.shape)
            mask[name] = prune.RandomUnstructured(amount=pruned).compute_mask(ones, ones).bool()
    meta = ticket.meta | {"kind": "random", "random_seed": seed}
    return Ticket(mask, ticket.rewind, meta)


class LipPrior(SkipPrior):
    """The DIP skip net restricted to a ticket: x = f(θ ⊙ m; z + η), θ starting from the ticket's
    rewind weights (the same for every run), z from each run's seed (``derive_seed(seed,
    "input")``), as SkipPrior (``input_draw``: the later draw of that stream, a new z per IMP
    round). The LIP paper's optimiser: Adam, lr 0.01, perturbation 1/30, 3000 iterations.

    ``shared``: one net for all K "runs" (the K images fitted at once when a mask is found on
    several images; BatchNorm then takes the statistics of the whole batch). Only for finding
    masks: its weights are not per run, so its state does not split into runs for checkpoints.
    """

    defaults = {"method": "dip", "alg": "adam", "lr": 0.01, "reg_noise_std": 1.0 / 30.0,
                "num_iter": 3000}  # fmt: skip
    dop_defaults = {"alg": "sgd", "lr": 1.0}  # the skip net's under DOP
    own_settings = ("mask",)

    def __init__(
        self,
        image_shape: Sequence[int],
        *,
        width: int = 128,
        seeds: Sequence[int] = (0,),
        pad: bool = False,
        scales: int = SCALES,
        skip: int = 4,
        ticket: Ticket | None = None,
        shared: bool = False,
        input_draw: int = 0,
    ) -> None:
        if ticket is None:
            raise InputError("--prior lip needs --mask PATH (a mask file written by lip.py)")
        nets = seeds[:1] if shared else seeds
        super().__init__(image_shape, width=width, seeds=nets, pad=pad, scales=scales, skip=skip)
        sizes = dict(in_channels=INPUT_DEPTH, out_channels=image_shape[0], width=width,
                     scales=scales, skip=skip)  # fmt: skip
        check_fits(ticket, sizes)
        self.shared = shared
        self.net.load_state_dict(stack_states([ticket.rewind] * len(nets)))
        apply_mask(self.net, stack_states([ticket.mask] * len(nets)))
        if shared:  # K inputs drawn one after another from the first seed's input stream
            generator = torch.Generator().manual_seed(derive_seed(seeds[0], "input"))
            for _ in range(input_draw):
                torch.rand(len(seeds), *self.input.shape[1:], generator=generator)
            self.input = torch.rand(len(seeds), *self.input.shape[1:], generator=generator)
            self.input *= INPUT_SCALE
        elif input_draw:
            self.input = per_run_input(seeds, self.input.shape[1:], later=input_draw) * INPUT_SCALE

    def forward(self, eta: Tensor | None) -> Tensor:
        if not self.shared:
            return super().forward(eta)
        z = self.input if eta is None else self.input + eta
        return centre_crop(self.net(z), *self.image_size)

    def count_trained(self) -> int:
        """Trained entries per run: the surviving convolution weights and every other tensor."""
        pruned = sum(int((c.weight_mask == 0).sum()) for c in convolutions(self.net).values())
        return super().count_trained() - pruned // self.runs

    @classmethod
    def check(cls, cfg: Any) -> None:
        if cfg.mask is None:
            raise InputError("--prior lip needs --mask PATH (a mask file written by lip.py)")

    @classmethod
    def options(cls, cfg: Any) -> dict[str, Any]:
        return {} if cfg.mask is None else {"ticket": load_ticket(cfg.mask)}


def trained_count(ticket: Ticket) -> int:
    """``LipPrior.count_trained`` of a run of ``ticket`` on the net it was found on (its width and
    channel count, read from the output convolution): the surviving convolution weights plus
    every bias and BatchNorm parameter. It depends on neither the image's size nor the run."""
    channels, width = ticket.net_sizes()
    side = 2**SCALES  # the smallest image the 5-scale net takes
    return LipPrior((channels, side, side), width=width, ticket=ticket).count_trained()
