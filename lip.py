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
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import denoising
from models.decoder import width_for
from models.lip import (
    LipPrior,
    Ticket,
    dense_ticket,
    load_ticket,
    prune_count,
    prune_global,
    random_like,
    save_ticket,
    trained_count,
)
from models.skip import SkipPrior
from recovery import build_model, fit_batch
from utils import InputError
from utils.config import RunConfig, parse, parser
from utils.io import atomic_write, save_csv, save_json
from utils.rundir import check_same
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


def check_same_search(path: Path, argv: list[str]) -> None:
    """InputError unless the IMP record ``path`` (OUT_DIR/CKPT_imp.json) was made with the
    settings of the lip.py command line ``argv`` (iterations, rounds and target included)."""
    cfg, _, imp = parse_find(argv)
    saved = json.loads(Path(path).read_text())
    advice = "delete the search's files or choose another folder"
    check_same(path, saved["settings"], {"num_iter": cfg.num_iter} | cfg.defining(), advice)
    check_same(path, saved["imp"], imp, advice)


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


EVAL_FIELDS = ["mask_from", "kind", "round", "sparsity", "image", "task", "width",
               "trained_parameters", "psnr", "ssim", "oracle_best_psnr", "oracle_best_iteration",
               "imp_target", "ckpt"]  # fmt: skip


def eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lip.py evaluate",
        description="Train IMP masks, their random twins, the dense net and deep decoders of as "
        "many trained parameters with denoising.py on each image; write the PSNR-against-"
        "sparsity table and figure. Other flags go to denoising.py (--crop --width --num_iter "
        "--noise --nlevel --gpu ...; --task inpaint --keep 0.5 or --task sr --factor 4: the "
        "masks transferred to another task).",
    )  # fmt: skip
    p.add_argument("--masks", required=True,
                   help="IMP runs (OUT_DIR/CKPT of lip.py), comma-separated")  # fmt: skip
    p.add_argument("--rounds", type=int, required=True, help="evaluate masks 0..R")
    p.add_argument("--only_rounds", default=None,
                   help="only these of rounds 1..R (and the dense net), e.g. 3,5")  # fmt: skip
    p.add_argument("--images", required=True, help="images to recover, comma-separated")
    p.add_argument("--runs", default="checkpoints/lip_eval", help="folder of the runs")
    p.add_argument("--csv", default=str(ROOT / "docs" / "lip_quick.csv"))
    p.add_argument("--figure", default=str(ROOT / "figs" / "lip_quick.png"))
    p.add_argument("--batch", type=int, default=4, help="runs of one mask in one loop")
    return p


def chosen_rounds(args: argparse.Namespace) -> list[int]:
    """Rounds 1..--rounds, or those of --only_rounds (InputError unless they are among them)."""
    if args.rounds < 0:
        raise InputError("--rounds must be at least 0")
    every = list(range(1, args.rounds + 1))
    if args.only_rounds is None:
        return every
    try:
        only = [int(k) for k in args.only_rounds.split(",")]
    except ValueError:
        raise InputError("--only_rounds must be integers separated by commas") from None
    if not set(only) <= set(every):
        raise InputError(f"--only_rounds must be among 1..{args.rounds}")
    return sorted(set(only))


def evaluate(argv: list[str]) -> int:
    """Every (net, image) run, reusing finished ones made with the same settings; then the table
    and the figure.

    The nets: the dense net (round 0), every chosen round's IMP mask and random twin of every
    --masks source, and for each round the deep decoder (Heckel, Hand, 2019) whose 6k² + 12k + Ck
    trained parameters are closest to the LIP subnetwork's (its surviving convolution weights,
    biases and BatchNorm: ``trained_count``; the same for every source, which all keep
    round(0.8^k · total) weights); the decoder row of round k has that round's sparsity. The
    decoder runs with its own reference settings (Adam 0.01, no input perturbation) on the same
    observations (same image, task, noise and seed)."""
    args, rest = eval_parser().parse_known_args(argv)
    images, runs, rounds = args.images.split(","), Path(args.runs), chosen_rounds(args)
    task = parse(rest).task  # InputError on a bad flag of denoising.py
    tag = "" if task == "denoise" else f"_{task}"  # a task's runs apart from denoising's
    common = [*rest, "--out_dir", str(runs), "--quiet"]
    jobs = []  # (row, argv)
    lip_of_round = {}
    for n, prefix in enumerate(args.masks.split(",")):
        kinds = [("mask", 0)] if n == 0 else []  # the dense net (the same for every prefix)
        kinds += [(kind, k) for k in rounds for kind in ("mask", "random")]
        for kind, k in kinds:
            path = mask_path(Path(prefix).parent, Path(prefix).name, kind, k)
            ticket = load_ticket(path)
            label = "dense" if k == 0 else "lip" if kind == "mask" else "random"
            if label == "lip":
                lip_of_round.setdefault(k, ticket)
            for image in images:
                ckpt = f"{Path(prefix).name}_{label}{k}_{image}{tag}"
                row = {"mask_from": Path(prefix).name, "kind": label, "round": k,
                       "sparsity": ticket.sparsity(), "image": image, "ckpt": ckpt,
                       "imp_target": ticket.meta["provenance"]["target"]}  # fmt: skip
                jobs.append((row, [*common, "--image", image, "--prior", "lip", "--mask",
                                   str(path), "--ckpt", ckpt]))  # fmt: skip
    jobs += decoder_jobs(lip_of_round, images, common, tag)
    todo = pending(dict((row["ckpt"], argv) for row, argv in jobs), runs)
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


def decoder_jobs(lips: dict[int, Ticket], images: list[str], common: list[str], tag: str
                 ) -> list[tuple[dict, list[str]]]:  # fmt: skip
    """(row, argv) of the deep decoder matched to each round's LIP mask, on every image: the
    width whose parameter count is closest to the LIP net's trained count (runs named by width,
    so rounds matched to one width share them)."""
    jobs = []
    for k, ticket in lips.items():
        width = width_for(trained_count(ticket), ticket.net_sizes()[0])
        for image in images:
            ckpt = f"decoder_w{width}_{image}{tag}"
            row = {"mask_from": "", "kind": "decoder", "round": k, "sparsity": ticket.sparsity(),
                   "image": image, "ckpt": ckpt, "imp_target": ""}  # fmt: skip
            jobs.append((row, [*common, "--image", image, "--prior", "decoder", "--width",
                               str(width), "--ckpt", ckpt]))  # fmt: skip
    return jobs


def pending(argvs: dict[str, list[str]], runs: Path) -> list[list[str]]:
    """The command lines (by run name) whose run has not ended; InputError when a run of that
    name ended with other settings (iterations included)."""
    todo = []
    for ckpt, argv in argvs.items():
        rundir = denoising.RunDir(runs, ckpt)
        if (record := rundir.config()) is None:
            todo.append(argv)
            continue
        cfg = parse(argv).with_defaults()
        check_same(rundir.path("config"), record["settings"],
                   cfg.defining() | {"num_iter": cfg.num_iter},
                   "delete its files or choose another --runs")  # fmt: skip
    return todo


def report_of(runs: Path, ckpt: str) -> dict:
    record = denoising.RunDir(runs, ckpt).config()
    report, settings = record["report"], record["settings"]
    return {"psnr": report.get("final_psnr"), "ssim": report.get("final_ssim"),
            "oracle_best_psnr": report.get("oracle_best_psnr_vs_clean"),
            "oracle_best_iteration": report.get("oracle_best_iteration"),
            "trained_parameters": report.get("trained_parameters"),
            "task": settings["task"], "width": settings["width"]}  # fmt: skip


def markdown_table(rows: list[dict]) -> list[str]:
    """One row per (image, round): the last-iterate PSNR (oracle peak in brackets) of the dense
    net, of every mask source's LIP and random masks, and of the deep decoder of as many trained
    parameters (its width k), with the trained parameters of the LIP net and the decoder."""
    columns = list(dict.fromkeys((r["mask_from"], r["kind"]) for r in rows if r["round"]))
    header = ["image", "round", "sparsity", "trained (LIP / decoder)", "dense",
              *(f"{kind} ({src})" if src else kind for src, kind in columns)]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cell(r: dict | None) -> str:
        if r is None:
            return "–"
        width = f", k = {r['width']}" if r["kind"] == "decoder" else ""
        return f"{r['psnr']:.2f} ({r['oracle_best_psnr']:.2f}){width}"

    for image in dict.fromkeys(r["image"] for r in rows):
        dense = next(r for r in rows if r["image"] == image and r["kind"] == "dense")
        for k in sorted({r["round"] for r in rows if r["round"]}):
            found = {(r["mask_from"], r["kind"]): r for r in rows
                     if r["image"] == image and r["round"] == k}  # fmt: skip
            sparsity = next(iter(found.values()))["sparsity"]
            counts = [next((f"{r['trained_parameters']:,}" for (_, kind), r in found.items()
                            if kind == wanted), "–") for wanted in ("lip", "decoder")]  # fmt: skip
            cells = [image, str(k), f"{100 * sparsity:.1f}%", " / ".join(counts), cell(dense),
                     *(cell(found.get(c)) for c in columns)]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return lines


STYLES = {"lip": "-o", "random": "--x", "decoder": ":s"}


def plot_sparsity(rows: list[dict], path: Path) -> None:
    """Last-iterate PSNR against sparsity, one panel per image: LIP solid, random dashed, the
    deep decoder of as many trained parameters dotted, the dense net as a horizontal line."""
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
            label = f"{kind} mask from {src}" if src else "deep decoder, as many parameters"
            ax.plot([100 * s for s, _ in line], [p for _, p in line], STYLES[kind], label=label)
        dense = next(r["psnr"] for r in mine if r["kind"] == "dense")
        ax.axhline(dense, color="k", lw=0.8, label="dense")
        task = mine[0]["task"]
        title = image if task == "denoise" else f"{image}, {task}"
        ax.set(title=title, xlabel="sparsity (% of conv weights pruned)", ylabel="PSNR (dB)")
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
