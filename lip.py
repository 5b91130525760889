"""The lottery image prior (Wu, Chen, Jiang, Wang, TMLR 2023): sparse subnetworks of the DIP skip
net found by iterative magnitude pruning (IMP), and their evaluation.

    python lip.py --image F16 --crop 64 --width 16 --rounds 5 --num_iter 1000 --gpu cpu --ckpt F16
    python lip.py --image F16,Peppers ...          # one net fitted to both images: one mask
    python lip.py --imp_target clean ...           # the paper's code: fits the clean image (oracle)
    python lip.py evaluate --masks checkpoints/lip/F16 --rounds 5 --images F16,Peppers \\
        --crop 64 --width 16 --num_iter 1000 --noise gaussian --nlevel 0.1 --gpu cpu

IMP: train the net (``--prior lip`` with the current mask) for --num_iter iterations on the
target, prune 20% of the surviving convolution weights globally by magnitude (biases and
BatchNorm are not pruned), rewind the survivors to their initial values (or, --rewind_iter r, to
their values at iteration r of the first round), repeat --rounds times: sparsity 1 − 0.8^k after
round k. Round k's mask is OUT_DIR/CKPT_mask_k.pt (k = 0: the dense net), beside it
CKPT_random_k.pt, a random mask with the same number of pruned weights in every layer over the
same starting weights (the baseline), and CKPT_imp.json, each round's outcome. The target is the
noisy observation by default (no ground truth); ``--imp_target clean`` uses the clean image, as
the paper's code does, and is labelled oracle wherever it is recorded. Every other flag is
denoising.py's (the method defaults to dip; the optimizer to the paper's Adam 0.01).

``evaluate`` trains every mask of an IMP run (and its random twins) with denoising.py
``--prior lip --mask`` on each image and writes the PSNR-against-sparsity table and figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

import denoising
from models.lip import (
    LipPrior,
    Ticket,
    dense_ticket,
    load_ticket,
    prune_count,
    prune_global,
    random_like,
    save_ticket,
)
from models.skip import SkipPrior
from recovery import build_model, fit_batch
from utils import InputError
from utils.config import RunConfig, parser
from utils.io import atomic_write, save_csv, save_json
from utils.seeding import derive_seed

ROOT = Path(__file__).resolve().parent
TARGETS = ("noisy", "clean")


def find_parser() -> argparse.ArgumentParser:
    p = parser(__doc__)
    group = p.add_argument_group("iterative magnitude pruning")
    group.add_argument("--rounds", type=int, default=5, help="pruning rounds (default: 5)")
    group.add_argument(
        "--imp_target", choices=TARGETS, default="noisy",
        help="what the net fits while masks are found: the noisy observation (default, no ground "
        "truth) or the clean image (the paper's code: uses ground truth, an oracle)",
    )  # fmt: skip
    group.add_argument(
        "--rewind_iter", type=int, default=0,
        help="rewind the survivors to their weights at this iteration of round 1 (default 0: "
        "their initial values); one image only",
    )  # fmt: skip
    return p


def parse_find(argv: list[str] | None) -> tuple[RunConfig, list[str], dict]:
    """The run settings (method dip unless given), the images, and the IMP settings."""
    args = vars(find_parser().parse_args(argv))
    imp = {key: args.pop(key) for key in ("rounds", "imp_target", "rewind_iter")}
    if args.pop("prior", "skip") != "skip" or args.pop("mask", None) is not None:
        raise InputError("lip.py prunes the skip net: no --prior or --mask")
    images = (args.pop("image", None) or "").split(",")
    cfg = RunConfig(**({"method": "dip"} | args | {"image": images[0] or None}))
    cfg.check()
    cfg = cfg.with_defaults(LipPrior)  # the paper's optimizer, the noise's level
    bad = [(imp["rounds"] < 1, "--rounds must be at least 1"),
           (imp["rewind_iter"] < 0 or imp["rewind_iter"] >= cfg.num_iter,
            "--rewind_iter must be in [0, --num_iter)"),
           (imp["rewind_iter"] > 0 and len(images) > 1,
            "--rewind_iter needs one image (the shared net of several has no per-run state)"),
           (cfg.observed is not None and imp["imp_target"] == "clean" and cfg.clean is None,
            "--imp_target clean needs a clean image (--clean)")]  # fmt: skip
    for failed, message in bad:
        if failed:
            raise InputError(message)
    return cfg, [name for name in images if name] or [cfg.image], imp


def mask_path(out_dir: Path | str, ckpt: str, kind: str, round_: int) -> Path:
    """OUT_DIR/CKPT_mask_k.pt for the IMP masks, CKPT_random_k.pt for their random twins."""
    return Path(out_dir) / f"{ckpt}_{kind}_{round_}.pt"


def load_targets(cfg: RunConfig, images: list[str], target: str):
    """(targets, clean or None, data identities) for the images, stacked (K, C, H, W)."""
    datas = [denoising.load_data(dataclasses.replace(cfg, image=name)) for name in images]
    if len({d.y.shape for d in datas}) > 1:
        raise InputError("images fitted at once must have one size: give --crop")
    stack = lambda arrays: torch.from_numpy(np.stack(arrays))  # noqa: E731
    clean = stack([d.clean for d in datas]) if all(d.clean is not None for d in datas) else None
    y = clean if target == "clean" else stack([d.y for d in datas])
    return y, clean, [d.identity for d in datas]


def find_masks(cfg: RunConfig, images: list[str], imp: dict, device: torch.device,
               progress: bool = False) -> list[dict]:  # fmt: skip
    """Iterative magnitude pruning; writes every round's mask and random twin. Returns the rounds'
    outcomes (as CKPT_imp.json holds them)."""
    y, clean, identities = load_targets(cfg, images, imp["imp_target"])
    y, clean = y.to(device), None if clean is None else clean.to(device)
    train = dataclasses.replace(cfg, prior="lip")
    seeds, shared = [cfg.seed] * len(images), len(images) > 1
    init = SkipPrior(y.shape[1:], width=cfg.width, seeds=[cfg.seed]).net
    provenance = {
        "images": identities, "target": imp["imp_target"],
        "uses_ground_truth": imp["imp_target"] == "clean", "rounds": imp["rounds"],
        "seed": cfg.seed, "width": cfg.width, "num_iter": cfg.num_iter,
        "rewind_iter": imp["rewind_iter"], "method": cfg.method, "loss": cfg.loss,
        "noise": cfg.noise, "nlevel": train.nlevel, "crop": cfg.crop, "alg": train.alg,
        "lr": train.lr, "reg_noise_std": train.reg_noise_std,
        "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip
    ticket = dense_ticket(init, {"provenance": provenance})
    save_ticket(mask_path(cfg.out_dir, cfg.ckpt, "mask", 0), ticket)
    total = sum(m.numel() for m in ticket.mask.values())
    outcomes = []
    for k in range(1, imp["rounds"] + 1):
        start = time.perf_counter()
        model = build_model(train, y.shape[1:], seeds, ticket=ticket, shared=shared).to(device)
        states = None
        if k == 1 and imp["rewind_iter"]:
            state, rewind = train_to_rewind(model, y, train, seeds, clean, imp, progress)
            ticket, states = Ticket(ticket.mask, rewind, ticket.meta), [state]
        [result, *_] = fit_batch(model, y, train, seeds=seeds, clean=clean, states=states,
                                 progress=progress)  # fmt: skip
        remaining = sum(int(m.sum()) for m in ticket.mask.values())
        mask = prune_global(model.prior.net, prune_count(total, remaining, k))
        ticket = Ticket(mask, ticket.rewind, {"kind": "lip", "round": k,
                                              "provenance": provenance})  # fmt: skip
        save_ticket(mask_path(cfg.out_dir, cfg.ckpt, "mask", k), ticket)
        twin = random_like(ticket, derive_seed(cfg.seed, "weights") + k)
        save_ticket(mask_path(cfg.out_dir, cfg.ckpt, "random", k), twin)
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


def train_to_rewind(model, y, cfg, seeds, clean, imp, progress) -> tuple[dict, dict]:
    """Round 1 up to --rewind_iter through the loop's own checkpoint: (the resumable state there,
    the net's weights there as a single SkipNet state, the rewind point)."""
    states: list = []
    fit_batch(model, y, dataclasses.replace(cfg, num_iter=imp["rewind_iter"]), seeds=seeds,
              clean=clean, checkpoint=states.append, progress=progress)  # fmt: skip
    state, prefix = states[-1][0], "prior.net."
    rewind = {key[len(prefix) :].replace("weight_orig", "weight"): value.clone()
              for key, value in state["model"].items()
              if key.startswith(prefix) and not key.endswith("_mask")}  # fmt: skip
    return state, rewind


EVAL_FIELDS = ["mask_from", "kind", "round", "sparsity", "image", "psnr", "ssim",
               "oracle_best_psnr", "oracle_best_iteration", "imp_target", "ckpt"]  # fmt: skip


def eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lip.py evaluate",
        description="Train IMP masks, their random twins and the dense net with denoising.py "
        "--prior lip on each image; write the PSNR-against-sparsity table and figure. Other "
        "flags go to denoising.py (--crop --width --num_iter --noise --nlevel --gpu ...).",
    )  # fmt: skip
    p.add_argument("--masks", required=True,
                   help="IMP runs (OUT_DIR/CKPT of lip.py), comma-separated")  # fmt: skip
    p.add_argument("--rounds", type=int, required=True, help="evaluate masks 0..R")
    p.add_argument("--images", required=True, help="images to denoise, comma-separated")
    p.add_argument("--runs", default="checkpoints/lip_eval", help="folder of the runs")
    p.add_argument("--csv", default=str(ROOT / "docs" / "lip_quick.csv"))
    p.add_argument("--figure", default=str(ROOT / "figs" / "lip_quick.png"))
    p.add_argument("--batch", type=int, default=4, help="runs of one mask in one loop")
    return p


def evaluate(argv: list[str]) -> int:
    """Every (mask, image) run, reusing finished ones; then the table and the figure."""
    args, rest = eval_parser().parse_known_args(argv)
    images, runs = args.images.split(","), Path(args.runs)
    jobs = []  # (row, argv)
    for n, prefix in enumerate(args.masks.split(",")):
        kinds = [("mask", 0)] if n == 0 else []  # the dense net (the same for every prefix)
        kinds += [(kind, k) for k in range(1, args.rounds + 1) for kind in ("mask", "random")]
        for kind, k in kinds:
            path = mask_path(Path(prefix).parent, Path(prefix).name, kind, k)
            ticket = load_ticket(path)
            label = "dense" if k == 0 else "lip" if kind == "mask" else "random"
            for image in images:
                ckpt = f"{Path(prefix).name}_{label}{k}_{image}"
                row = {"mask_from": Path(prefix).name, "kind": label, "round": k,
                       "sparsity": ticket.sparsity(), "image": image, "ckpt": ckpt,
                       "imp_target": ticket.meta["provenance"]["target"]}  # fmt: skip
                argv_run = [*rest, "--image", image, "--prior", "lip", "--mask", str(path),
                            "--ckpt", ckpt, "--out_dir", str(runs), "--quiet"]  # fmt: skip
                jobs.append((row, argv_run))
    todo = [a for row, a in jobs if denoising.RunDir(runs, row["ckpt"]).config() is None]
    codes = denoising.run_batch([[*a, "--overwrite"] for a in todo], args.batch)
    if any(codes):
        raise InputError(f"{sum(map(bool, codes))} evaluation runs failed")
    rows = [row | report_of(runs, row["ckpt"]) for row, _ in jobs]
    Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
    save_csv(Path(args.csv), EVAL_FIELDS, ([row[f] for f in EVAL_FIELDS] for row in rows))
    plot_sparsity(rows, Path(args.figure))
    print("\n".join(markdown_table(rows)))
    print(f"table {args.csv}, figure {args.figure}")
    return 0


def report_of(runs: Path, ckpt: str) -> dict:
    report = denoising.RunDir(runs, ckpt).config()["report"]
    return {"psnr": report.get("final_psnr"), "ssim": report.get("final_ssim"),
            "oracle_best_psnr": report.get("oracle_best_psnr_vs_clean"),
            "oracle_best_iteration": report.get("oracle_best_iteration")}  # fmt: skip


def markdown_table(rows: list[dict]) -> list[str]:
    """One row per (image, round): the last-iterate PSNR (oracle peak in brackets) of the dense
    net and of every mask source's LIP and random masks."""
    columns = list(dict.fromkeys((r["mask_from"], r["kind"]) for r in rows if r["round"]))
    header = ["image", "round", "sparsity", "dense",
              *(f"{kind} ({src})" for src, kind in columns)]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    cell = lambda r: "–" if r is None else f"{r['psnr']:.2f} ({r['oracle_best_psnr']:.2f})"  # noqa: E731
    for image in dict.fromkeys(r["image"] for r in rows):
        dense = next(r for r in rows if r["image"] == image and r["kind"] == "dense")
        for k in sorted({r["round"] for r in rows if r["round"]}):
            found = {(r["mask_from"], r["kind"]): r for r in rows
                     if r["image"] == image and r["round"] == k}  # fmt: skip
            sparsity = next(iter(found.values()))["sparsity"]
            cells = [image, str(k), f"{100 * sparsity:.1f}%", cell(dense),
                     *(cell(found.get(c)) for c in columns)]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot_sparsity(rows: list[dict], path: Path) -> None:
    """Last-iterate PSNR against sparsity, one panel per image: LIP solid, random dashed, the
    dense net as a horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = list(dict.fromkeys(r["image"] for r in rows))
    fig, axes = plt.subplots(1, len(images), figsize=(4.5 * len(images), 3.6), squeeze=False)
    for ax, image in zip(axes[0], images, strict=True):
        mine = [r for r in rows if r["image"] == image]
        for src, kind in dict.fromkeys((r["mask_from"], r["kind"]) for r in mine if r["round"]):
            line = sorted((r["sparsity"], r["psnr"]) for r in mine
                          if (r["mask_from"], r["kind"]) == (src, kind))  # fmt: skip
            ax.plot([100 * s for s, _ in line], [p for _, p in line],
                    "-o" if kind == "lip" else "--x", label=f"{kind} mask from {src}")  # fmt: skip
        dense = next(r["psnr"] for r in mine if r["kind"] == "dense")
        ax.axhline(dense, color="k", lw=0.8, label="dense")
        ax.set(title=image, xlabel="sparsity (% of conv weights pruned)", ylabel="PSNR (dB)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["evaluate"]:
            return evaluate(argv[1:])
        cfg, images, imp = parse_find(argv)
        device, name = denoising.pick_device(cfg.gpu)
        print(f"device: {name}", flush=True)
        out = Path(cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        existing = sorted(out.glob(f"{cfg.ckpt}_mask_*.pt"))
        if existing and not cfg.overwrite:
            raise InputError(f"{existing[0]} exists: pass --overwrite or choose another --ckpt")
        outcomes = find_masks(cfg, images, imp, device, progress=not cfg.quiet)
        save_json(out / f"{cfg.ckpt}_imp.json",
                  {"settings": dataclasses.asdict(cfg), "imp": imp, "device": name,
                   "rounds": outcomes})  # fmt: skip
        print(f"masks in {out}/{cfg.ckpt}_mask_*.pt (random twins: {cfg.ckpt}_random_*.pt)")
        return 0
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
