"""Iterative magnitude pruning (IMP) for the lottery image prior (Wu, Chen, Jiang, Wang, TMLR
2023; REFERENCE.md §5): the search that lip.py runs and that a comparison set runs first.

Train the net (the lottery prior over the current mask) for ``num_iter`` iterations on the
target, prune 20% of the surviving convolution weights globally by magnitude (biases and
BatchNorm are not pruned; the two convolutions that read z are ranked but never pruned, as the
public code: ``models.lip.INPUT_CONVS``), rewind the survivors to their initial values (or,
``rewind_iter`` r, to their values at iteration r of the first round), repeat ``rounds`` times,
a new z every round (the public code draws one in its round loop, 3_init_LTH_IMP_Clean_DIP.py:154).
Round k's mask is OUT_DIR/CKPT_mask_k.pt (k = 0: the dense net), beside it CKPT_random_k.pt, a
random mask with the same number of pruned weights in every layer over the same starting weights
(the baseline), and CKPT_imp.json, the search's settings and each round's outcome. The public
code's defaults: 16 rounds on the **clean** image (an oracle: it uses the ground truth, labelled
so wherever it is recorded); ``target="noisy"`` fits the observation instead (no ground truth),
``prune_input_convs`` prunes every convolution to exactly 1 − 0.8^k (``prune_count``), and
``redraw_z=False`` keeps one z for every round: this code's earlier choices.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.config import RunConfig
from engine.data import observe
from engine.device import pick_device
from engine.loop import build_model, fit_batch
from engine.runner import check_paths
from models.lip import (
    INPUT_CONVS,
    PRUNE_FRACTION,
    Ticket,
    dense_ticket,
    prune_count,
    prune_global,
    random_like,
    save_ticket,
)
from models.skip import SkipPrior
from utils import InputError
from utils.io import save_json
from utils.rundir import check_same
from utils.seeding import derive_seed

TARGETS = ("noisy", "clean")


def mask_path(out_dir: Path | str, ckpt: str, kind: str, round_: int) -> Path:
    """OUT_DIR/CKPT_mask_k.pt for the IMP masks, CKPT_random_k.pt for their random twins."""
    return Path(out_dir) / f"{ckpt}_{kind}_{round_}.pt"


@dataclass(frozen=True)
class Search:
    """One IMP search: ``cfg`` the run settings (its image is ignored for ``images``, fitted at
    once when there are several; its name and folder are the search's), ``rounds`` rounds,
    ``target`` clean or noisy, rewinding to iteration ``rewind_iter`` (0: the initialisation),
    the input convolutions pruned or not, z drawn anew every round or not (the defaults: the
    public code's). The net is trained as the lottery prior (its paper's method and optimizer
    where ``cfg`` leaves them unset)."""

    cfg: RunConfig
    images: tuple[str, ...]
    rounds: int = 16
    target: str = "clean"
    rewind_iter: int = 0
    prune_input_convs: bool = False
    redraw_z: bool = True

    def training(self) -> RunConfig:
        return dataclasses.replace(self.cfg, prior="lip", image=self.images[0]).resolved()

    def check(self) -> None:
        """One-line refusals, before anything is written."""
        if self.cfg.prior != "skip" or self.cfg.mask is not None:
            raise InputError("lip.py prunes the skip net: no --prior or --mask")
        dataclasses.replace(self.cfg, image=self.images[0]).check()
        train = self.training()
        bad = [(self.rounds < 1, "--rounds must be at least 1"),
               (self.target not in TARGETS, f"--imp_target must be one of {', '.join(TARGETS)}"),
               (self.rewind_iter < 0 or self.rewind_iter >= train.num_iter,
                "--rewind_iter must be in [0, --num_iter)"),
               (self.rewind_iter > 0 and len(self.images) > 1,
                "--rewind_iter needs one image (the shared net of several has no per-run state)"),
               (self.cfg.observed is not None and self.target == "clean" and self.cfg.clean is None,
                "--imp_target clean needs a clean image (--clean)")]  # fmt: skip
        for failed, message in bad:
            if failed:
                raise InputError(message)

    @property
    def record(self) -> Path:
        return Path(self.cfg.out_dir) / f"{self.cfg.ckpt}_imp.json"

    def same_as_record(self) -> None:
        """InputError unless the search's record (CKPT_imp.json) was made with these settings
        (iterations, rounds and target included)."""
        saved = json.loads(self.record.read_text())
        advice = "delete the search's files or choose another folder"
        train = self.training()
        check_same(self.record, saved["settings"], {"num_iter": train.num_iter} | train.defining(),
                   advice)  # fmt: skip
        check_same(self.record, saved["imp"], self.imp(), advice)

    def imp(self) -> dict:
        return {"rounds": self.rounds, "imp_target": self.target, "rewind_iter": self.rewind_iter,
                "prune_input_convs": self.prune_input_convs, "redraw_z": self.redraw_z}  # fmt: skip

    def __call__(self) -> int:
        """The search, from start to end (a Slurm job's body; it has no checkpoint)."""
        run_search(self)
        return 0


def load_targets(cfg: RunConfig, images: tuple[str, ...], target: str):
    """(targets, clean or None, data identities) for the images, stacked (K, C, H, W)."""
    observations = [observe(dataclasses.replace(cfg, image=name)) for name in images]
    if len({o.y.shape for o in observations}) > 1:
        raise InputError("images fitted at once must have one size: give --crop")
    stack = lambda arrays: torch.from_numpy(np.stack(arrays))  # noqa: E731
    have = all(o.clean is not None for o in observations)
    clean = stack([o.clean for o in observations]) if have else None
    y = clean if target == "clean" else stack([o.y for o in observations])
    return y, clean, [o.identity for o in observations]


def run_search(search: Search, progress: bool = False) -> list[dict]:
    """The search: every round's mask and random twin, then the record. Returns the rounds'
    outcomes (as CKPT_imp.json holds them)."""
    search.check()
    train = search.training()
    device, name = pick_device(train.gpu)
    print(f"device: {name}", flush=True)
    out = Path(train.out_dir)
    check_paths(train.resolved())
    existing = sorted(out.glob(f"{train.ckpt}_mask_*.pt"))
    if existing and not train.overwrite:
        raise InputError(f"{existing[0]} exists: pass --overwrite or choose another --ckpt")
    y, clean, identities = load_targets(train, search.images, search.target)
    out.mkdir(parents=True, exist_ok=True)
    y, clean = y.to(device), None if clean is None else clean.to(device)
    outcomes = prune_rounds(search, train, y, clean, identities, device, progress)
    save_json(search.record, {"settings": dataclasses.asdict(train), "imp": search.imp(),
                              "device": name, "rounds": outcomes})  # fmt: skip
    return outcomes


def prune_rounds(search: Search, train: RunConfig, y, clean, identities, device, progress
                 ) -> list[dict]:  # fmt: skip
    """The rounds of IMP; writes every round's mask and random twin."""
    seeds, shared = [train.seed] * len(search.images), len(search.images) > 1
    init = SkipPrior(y.shape[1:], width=train.width, seeds=[train.seed]).net
    provenance = {
        "images": identities, "target": search.target,
        "uses_ground_truth": search.target == "clean", "rounds": search.rounds,
        "seed": train.seed, "width": train.width, "num_iter": train.num_iter,
        "rewind_iter": search.rewind_iter, "prune_input_convs": search.prune_input_convs,
        "redraw_z": search.redraw_z, "method": train.method, "loss": train.loss,
        "noise": train.noise, "nlevel": train.nlevel, "crop": train.crop, "alg": train.alg,
        "lr": train.lr, "reg_noise_std": train.reg_noise_std,
        "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip
    ticket = dense_ticket(init, {"provenance": provenance})
    save_ticket(mask_path(train.out_dir, train.ckpt, "mask", 0), ticket)
    total = sum(m.numel() for m in ticket.mask.values())
    outcomes = []
    for k in range(1, search.rounds + 1):
        start = time.perf_counter()
        draw = k - 1 if search.redraw_z else 0  # round k's z: the input stream's k-th draw
        model = build_model(train, y.shape[1:], seeds, ticket=ticket, shared=shared,
                            input_draw=draw).to(device)  # fmt: skip
        states = None
        if k == 1 and search.rewind_iter:
            state, rewind = train_to_rewind(model, y, train, seeds, clean, search, progress)
            ticket, states = Ticket(ticket.mask, rewind, ticket.meta), [state]
        [result, *_] = fit_batch(model, y, train, seeds=seeds, clean=clean, states=states,
                                 progress=progress)  # fmt: skip
        remaining = sum(int(m.sum()) for m in ticket.mask.values())
        if search.prune_input_convs:  # every convolution, to exactly round(0.8^k · total)
            mask = prune_global(model.prior.net, prune_count(total, remaining, k))
        else:  # 20% of the unmasked pool; the input convolutions' share left dense
            mask = prune_global(model.prior.net, PRUNE_FRACTION, dense=INPUT_CONVS)
        ticket = Ticket(mask, ticket.rewind, {"kind": "lip", "round": k,
                                              "provenance": provenance})  # fmt: skip
        save_ticket(mask_path(train.out_dir, train.ckpt, "mask", k), ticket)
        twin = random_like(ticket, derive_seed(train.seed, "weights") + k)
        save_ticket(mask_path(train.out_dir, train.ckpt, "random", k), twin)
        last = result.history[-1]
        outcomes.append({
            "round": k, "sparsity": ticket.sparsity(), "trained_sparsity": 1 - remaining / total,
            "final_loss": last["loss"],
            "psnr_vs_clean_of_trained_net": last.get("psnr"),  # of image 1's last iterate
            "seconds": round(time.perf_counter() - start, 2),
        })  # fmt: skip
        print(f"round {k}: trained at sparsity {1 - remaining / total:.4f} (PSNR "
              f"{last.get('psnr', float('nan')):.2f} dB), pruned to {ticket.sparsity():.4f}",
              flush=True)  # fmt: skip
    return outcomes


def train_to_rewind(model, y, cfg, seeds, clean, search, progress) -> tuple[dict, dict]:
    """Round 1 up to ``rewind_iter`` through the loop's own checkpoint: (the resumable state
    there, the net's weights there as a single SkipNet state, the rewind point)."""
    states: list = []
    fit_batch(model, y, dataclasses.replace(cfg, num_iter=search.rewind_iter), seeds=seeds,
              clean=clean, checkpoint=states.append, progress=progress)  # fmt: skip
    state, prefix = states[-1][0], "prior.net."
    rewind = {key[len(prefix) :].replace("weight_orig", "weight"): value.clone()
              for key, value in state["model"].items()
              if key.startswith(prefix) and not key.endswith("_mask")}  # fmt: skip
    return state, rewind
