"""The lottery image prior (Wu, Chen, Jiang, Wang, TMLR 2023): sparse subnetworks of the DIP skip
net found by iterative magnitude pruning (IMP, ``experiments/imp.py``), and their evaluation.

    python lip.py --image F16 --gpu 0 --ckpt F16        # the public code's search (a GPU's job)
    python lip.py --image F16 --crop 64 --width 16 --rounds 5 --num_iter 500 --inits 1 \\
        --imp_target noisy --gpu cpu --ckpt F16     # a small one without ground truth
    python lip.py --image F16,Peppers ...          # one net fitted to both images: one mask
    python lip.py evaluate --masks checkpoints/lip/F16 --rounds 5 --images F16,Peppers \\
        --crop 64 --width 16 --num_iter 500 --noise gaussian --nlevel 0.1 --gpu cpu

The defaults are the public code's (Chasing-Better-DIPs, DIP_LTH/3_init_LTH_IMP_Clean_DIP.py,
pruning_utils.py): 3 initialisations (``--inits``: seeds SEED..SEED+2, searches CKPT_init1..3),
each 16 rounds of 3000 iterations on the **clean** image (an oracle: it uses the ground truth;
``--imp_target noisy`` fits the observation), a new z every round (``--fixed_z``: one), the two
convolutions that read z never pruned (``--prune_input_convs``: pruned too, to exactly 1 − 0.8^k).
Round k's mask is OUT_DIR/CKPT_mask_k.pt (k = 0: the dense net), beside it CKPT_random_k.pt, a
random mask with the same number of pruned weights in every layer (the baseline), and
CKPT_imp.json. Every other flag is denoising.py's (the method defaults to dip; the optimizer to
the paper's Adam 0.01).

``evaluate`` trains every mask of an IMP run (and its random twins) with ``--prior lip --mask``
on each image, for each initialisation, with the 0.99 moving average of the output, and writes
the PSNR-against-sparsity table and figure: the last iterate, and the paper's number, the best
PSNR of the moving average over every iteration (an **oracle**), each the mean over the
initialisations.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from engine import run
from engine.config import RunConfig, parse, parser
from engine.runner import checked, ended
from experiments.imp import TARGETS, Search, mask_path, run_search
from models.decoder import width_for
from models.lip import Ticket, load_ticket, trained_count
from tasks import TASKS
from utils import ArgumentParser, InputError, guarded
from utils.images import check_image_names
from utils.io import atomic_write, check_writable, save_csv
from utils.rundir import RunDir

ROOT = Path(__file__).resolve().parent


INITS = 3  # the public code's initialisations (init_weight_NASDIP1..3)


def find_parser() -> argparse.ArgumentParser:
    p = parser(__doc__)
    group = p.add_argument_group("iterative magnitude pruning")
    group.add_argument("--rounds", type=int, default=16, help="pruning rounds (default: 16)")
    group.add_argument(
        "--imp_target", choices=TARGETS, default="clean",
        help="what the net fits while masks are found: the clean image (default, the paper's "
        "code: uses ground truth, an oracle) or the noisy observation (no ground truth)",
    )  # fmt: skip
    group.add_argument(
        "--rewind_iter", type=int, default=0,
        help="rewind the survivors to their weights at this iteration of round 1 (default 0: "
        "their initial values); one image only",
    )  # fmt: skip
    group.add_argument("--prune_input_convs", action="store_true", default=False,
                       help="prune the two convolutions that read z too (the public code keeps "
                       "them dense), every round to exactly 1 - 0.8^k")  # fmt: skip
    group.add_argument("--fixed_z", action="store_true", default=False,
                       help="one z for all rounds (public: a new z each round)")  # fmt: skip
    group.add_argument("--inits", type=int, default=INITS,
                       help="initialisations, each its own search: seeds SEED..SEED+N-1, named "
                       "CKPT_init1..N (1: one search named CKPT) (default: 3)")  # fmt: skip
    return p


def init_names(name: str, inits: int) -> list[str]:
    """The searches of ``inits`` initialisations named ``name``: NAME_init1..N, or NAME."""
    if inits < 1:
        raise InputError("--inits must be at least 1")
    return [name] if inits == 1 else [f"{name}_init{i}" for i in range(1, inits + 1)]


def parse_searches(argv: list[str] | None) -> list[Search]:
    """The searches of a lip.py command line, one per initialisation (``--image A,B``: several
    images fitted at once)."""
    args = vars(find_parser().parse_args(argv))
    imp = {key: args.pop(key) for key in ("rounds", "imp_target", "rewind_iter",
                                          "prune_input_convs", "fixed_z", "inits")}  # fmt: skip
    images = tuple(name for name in (args.pop("image", None) or "").split(",") if name)
    cfg = RunConfig(**args)
    return [Search(dataclasses.replace(cfg, seed=cfg.seed + i, ckpt=name), images or (cfg.image,),
                   imp["rounds"], imp["imp_target"], imp["rewind_iter"],
                   imp["prune_input_convs"], not imp["fixed_z"])
            for i, name in enumerate(init_names(cfg.ckpt, imp["inits"]))]  # fmt: skip


EVAL_FIELDS = ["mask_from", "init", "seed", "kind", "round", "sparsity", "image", "task",
               "width", "trained_parameters", "psnr", "ssim", "oracle_best_psnr",
               "oracle_best_iteration", "oracle_ema_peak_psnr", "oracle_ema_peak_iteration",
               "imp_target", "ckpt"]  # fmt: skip
EMA = 0.99  # the evaluation's moving average (3_init_Eval_LIP.py:74, exp_weight)


def eval_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
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
    p.add_argument("--inits", type=int, default=INITS,
                   help="the initialisations of every --masks search (lip.py --inits): "
                   "MASKS_init1..N, each evaluated with its own seed (default: 3)")  # fmt: skip
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
    """Every (net, image, initialisation) run, reusing finished ones made with the same
    settings; then the table and the figure.

    The nets: for each initialisation of every --masks source (its searches MASKS_init1..N), the
    dense net (round 0), every chosen round's IMP mask and random twin, and for each round the
    deep decoder (Heckel, Hand, 2019) whose 6k² + 12k + Ck trained parameters are closest to the
    LIP subnetwork's (its surviving convolution weights, biases and BatchNorm: ``trained_count``;
    the decoder row of round k has that round's sparsity). Each initialisation's runs use the
    seed its search used (so its noise and, for a noisy-target search, the observation its masks
    were found on). Every run keeps the 0.99 moving average of its output (``--ema``, unless
    given) and, against the clean image, its best PSNR over every iteration: the paper's number
    (3_init_Eval_LIP.py:185-188, 221-224), an oracle. The decoder runs with its own reference
    settings (Adam 0.01, no input perturbation) on the same observations."""
    args, rest = eval_parser().parse_known_args(argv)
    images, runs, rounds = args.images.split(","), Path(args.runs), chosen_rounds(args)
    check_image_names(images, "--images")
    check_writable(args.csv, "--csv")
    check_writable(args.figure, "--figure")
    if args.batch < 1:
        raise InputError("--batch must be >= 1")
    base = dataclasses.replace(parse(rest), out_dir=str(runs), quiet=True, reuse=True)
    base = dataclasses.replace(base, ema=EMA if base.ema is None else base.ema)
    tag = "" if TASKS[base.task].default else f"_{base.task}"  # other tasks' runs apart
    jobs = []  # (row, config)
    lip_of_round = {}  # (round, seed) -> a LIP ticket of that round and initialisation
    sources = [Path(prefix) for prefix in args.masks.split(",")]
    for n, source in enumerate(sources):
        for init, name in enumerate(init_names(source.name, args.inits), 1):
            kinds = [("mask", 0)] if n == 0 else []  # the dense net (the same for every source)
            kinds += [(kind, k) for k in rounds for kind in ("mask", "random")]
            for kind, k in kinds:
                path = mask_path(source.parent, name, kind, k)
                ticket = load_ticket(path)
                seed = ticket.meta["provenance"]["seed"]
                label = "dense" if k == 0 else "lip" if kind == "mask" else "random"
                if label == "lip":
                    lip_of_round.setdefault((k, seed), ticket)
                for image in images:
                    ckpt = f"{name}_{label}{k}_{image}{tag}"
                    row = {"mask_from": source.name, "init": init, "seed": seed, "kind": label,
                           "round": k, "sparsity": ticket.sparsity(), "image": image,
                           "ckpt": ckpt,
                           "imp_target": ticket.meta["provenance"]["target"]}  # fmt: skip
                    jobs.append((row, dataclasses.replace(base, image=image, prior="lip",
                                                          mask=str(path), ckpt=ckpt,
                                                          seed=seed)))  # fmt: skip
    jobs += decoder_jobs(lip_of_round, images, base, tag)
    for _, cfg in jobs:  # a bad setting, or a run of its name made otherwise: refused first
        checked(cfg)
        ended(cfg)
    outcomes = run([cfg for _, cfg in jobs], max_batch=args.batch)
    if failed := [o.cfg.ckpt for o in outcomes if o.code]:
        raise InputError(f"{len(failed)} evaluation runs failed: {', '.join(failed)}")
    rows = [row | report_of(runs, row["ckpt"]) for row, _ in jobs]
    Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
    save_csv(Path(args.csv), EVAL_FIELDS, ([row[f] for f in EVAL_FIELDS] for row in rows))
    plot_sparsity(rows, Path(args.figure))
    print("\n".join(markdown_table(rows)))
    print(f"table {args.csv}, figure {args.figure}")
    return 0


def decoder_jobs(lips: dict[tuple[int, int], Ticket], images: list[str], base: RunConfig,
                 tag: str) -> list[tuple[dict, RunConfig]]:  # fmt: skip
    """(row, config) of the deep decoder matched to each round's LIP mask, on every image and
    with every initialisation's seed: the width whose parameter count is closest to the LIP
    net's trained count (runs named by width and seed, so rounds matched to one width share
    them). Its last iterate is compared (``--stop none``), as every other net's."""
    jobs = []
    for (k, seed), ticket in lips.items():
        width = width_for(trained_count(ticket), ticket.net_sizes()[0])
        init = sorted({s for _, s in lips}).index(seed) + 1
        for image in images:
            ckpt = f"decoder_w{width}_{image}{tag}" + (f"_s{seed}" if seed else "")
            row = {"mask_from": "", "init": init, "seed": seed, "kind": "decoder", "round": k,
                   "sparsity": ticket.sparsity(), "image": image, "ckpt": ckpt,
                   "imp_target": ""}  # fmt: skip
            jobs.append((row, dataclasses.replace(base, image=image, prior="decoder", seed=seed,
                                                  width=width, ckpt=ckpt,
                                                  stop="none")))  # fmt: skip
    return jobs


def report_of(runs: Path, ckpt: str) -> dict:
    record = RunDir(runs, ckpt).config()
    report, settings = record["report"], record["settings"]
    return {"psnr": report.get("final_psnr"), "ssim": report.get("final_ssim"),
            "oracle_best_psnr": report.get("oracle_best_psnr_vs_clean"),
            "oracle_best_iteration": report.get("oracle_best_iteration"),
            "oracle_ema_peak_psnr": report.get("oracle_every_iteration_best_psnr_ema"),
            "oracle_ema_peak_iteration": report.get("oracle_every_iteration_best_iteration_ema"),
            "trained_parameters": report.get("trained_parameters"),
            "task": settings["task"], "width": settings["width"]}  # fmt: skip


MEANS = ("psnr", "oracle_ema_peak_psnr", "sparsity")


def over_inits(rows: list[dict]) -> list[dict]:
    """The rows averaged over the initialisations: one per (source, kind, round, image), with
    the means of ``MEANS`` and the number of initialisations ``inits``."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["mask_from"], r["kind"], r["round"], r["image"]), []).append(r)
    return [group[0] | {key: float(np.mean([r[key] for r in group])) for key in MEANS}
            | {"inits": len(group)} for group in groups.values()]  # fmt: skip


def markdown_table(rows: list[dict]) -> list[str]:
    """One row per (image, round), each cell the mean over the initialisations of the
    last-iterate PSNR and, in brackets, of the paper's number: the best PSNR of the 0.99 moving
    average over every iteration (an oracle), for the dense net, every mask source's LIP and
    random masks, and the deep decoder of as many trained parameters (its width k); with the
    trained parameters of the LIP net and the decoder."""
    rows = over_inits(rows)
    columns = list(dict.fromkeys((r["mask_from"], r["kind"]) for r in rows if r["round"]))
    header = ["image", "round", "sparsity", "trained (LIP / decoder)", "dense",
              *(f"{kind} ({src})" if src else kind for src, kind in columns)]  # fmt: skip
    inits = sorted({r["inits"] for r in rows})
    lines = [f"Last iterate (EMA-0.99 peak over every iteration, ORACLE), mean over "
             f"{'/'.join(map(str, inits))} initialisation(s):", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]  # fmt: skip

    def cell(r: dict | None) -> str:
        if r is None:
            return "–"
        width = f", k = {r['width']}" if r["kind"] == "decoder" else ""
        return f"{r['psnr']:.2f} ({r['oracle_ema_peak_psnr']:.2f}){width}"

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
    """Last-iterate PSNR (the mean over the initialisations) against sparsity, one panel per
    image: LIP solid, random dashed, the deep decoder of as many trained parameters dotted, the
    dense net as a horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = over_inits(rows)
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
        title = image if TASKS[task].default else f"{image}, {task}"
        ax.set(title=title, xlabel="sparsity (% of conv weights pruned)", ylabel="PSNR (dB)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv

    def body() -> int:
        if argv[:1] == ["evaluate"]:
            return evaluate(argv[1:])
        for search in parse_searches(argv):
            run_search(search, progress=not search.cfg.quiet)
            cfg = search.cfg
            print(f"masks in {cfg.out_dir}/{cfg.ckpt}_mask_*.pt (random twins: "
                  f"{cfg.ckpt}_random_*.pt)")  # fmt: skip
        return 0

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
