"""Figures and the results table, from saved run outputs only (history, PNGs, config.json).

    python plot.py --out_dir checkpoints/quick --profile quick      # redraw without running

Figures 3/4: one row per case: the noisy input, DIP-L1, DOP and the clean image, with the
last-iterate PSNR under each. Figure 5 and the README curve: PSNR against iteration (DOP solid,
DIP dashed, DIP-L1 dotted). The table: per run the last-iterate PSNR and SSIM, the peak PSNR
("oracle": it needs the clean image) and its iteration, the drop peak -> last, wall time, device.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from skimage.metrics import structural_similarity  # noqa: E402

from experiments import (  # noqa: E402
    DEFAULT_CASES,
    PROFILES,
    README_RUNS,
    Case,
    Profile,
    Run,
    check_names,
    figure_runs,
)
from utils.io import atomic_write, save_csv  # noqa: E402

STYLES = {"dop": "-", "dip": "--", "dip-l1": ":"}
LABELS = {"dop": "DOP", "dip": "DIP (L2)", "dip-l1": "DIP-L1"}
TABLE_FIELDS = [
    "run", "image", "nlevel", "method", "width", "num_iter", "noisy_psnr", "last_psnr",
    "last_ssim", "oracle_peak_psnr", "oracle_peak_iter", "drop_peak_to_last", "wall_time_s",
    "iterations_per_s", "device", "status",
]  # fmt: skip


def read_png(path: Path) -> np.ndarray:
    """An 8-bit PNG as float (H, W[, 3]) in [0, 1]."""
    with Image.open(path) as img:
        return np.asarray(img, dtype=np.float64) / 255.0


def read_history(path: Path) -> np.ndarray:
    """CKPT_history.csv as an array of rows (iteration, loss, psnr)."""
    with path.open() as f:
        rows = [
            [float(r["iteration"]), float(r["loss"]), float(r["psnr"])] for r in csv.DictReader(f)
        ]
    return np.array(rows).reshape(-1, 3)


def read_config(out_dir: Path, ckpt: str) -> dict | None:
    """The run's config.json, or None when the run has not written one (not finished)."""
    path = out_dir / f"{ckpt}_config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def ssim(last: np.ndarray, clean: np.ndarray) -> float:
    channel_axis = -1 if last.ndim == 3 else None
    return float(structural_similarity(last, clean, data_range=1.0, channel_axis=channel_axis))


def result_row(run: Run, profile: Profile, out_dir: Path) -> dict | None:
    """One table row from the saved outputs of ``run``; None when they are missing."""
    ckpt = run.ckpt(profile)
    config = read_config(out_dir, ckpt)
    if config is None:
        return None
    history = read_history(out_dir / f"{ckpt}_history.csv")
    peak = int(np.argmax(history[:, 2]))
    last = read_png(out_dir / f"{ckpt}_last.png")
    clean = read_png(out_dir / f"{ckpt}_clean.png")
    return {
        "run": ckpt, "image": run.image, "nlevel": run.nlevel, "method": run.method,
        "width": config["width"], "num_iter": config["num_iter"],
        "noisy_psnr": round(config["noisy_psnr"], 2),
        "last_psnr": round(float(history[-1, 2]), 2),
        "last_ssim": round(ssim(last, clean), 4),
        "oracle_peak_psnr": round(float(history[peak, 2]), 2),
        "oracle_peak_iter": int(history[peak, 0]),
        "drop_peak_to_last": round(float(history[peak, 2] - history[-1, 2]), 2),
        "wall_time_s": config["wall_time_s"], "iterations_per_s": config["iterations_per_s"],
        "device": config["device"], "status": config["status"],
    }  # fmt: skip


def write_table(rows: list[dict], profile: Profile, csv_path: Path, md_path: Path) -> None:
    """results.csv (every field, a profile column) and a Markdown table of the same rows."""
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    fields = ["profile", *TABLE_FIELDS]
    save_csv(csv_path, fields, ([{"profile": profile.name, **r}[k] for k in fields] for r in rows))
    head = ["run", "method", "last PSNR", "last SSIM", "peak PSNR (oracle) @ iter",
            "drop peak→last", "noisy PSNR", "wall time (s)", "device"]  # fmt: skip
    lines = [
        f"# Results, profile `{profile.name}`",
        "",
        f"Profile `{profile.name}`: crop {profile.crop or 'none'}, width × "
        f"{profile.width_scale:g}, iterations × {profile.iter_scale:g}, seed 0. "
        "PSNR in dB of the network output against the clean image; SSIM from the saved "
        "8-bit PNGs. 'Last' is the last iterate (the "
        "result); the peak is an **oracle** (it needs the clean image).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {LABELS[r['method']]} | {r['last_psnr']:.2f} | {r['last_ssim']:.4f} "
            f"| {r['oracle_peak_psnr']:.2f} @ {r['oracle_peak_iter']} "
            f"| {r['drop_peak_to_last']:.2f} | {r['noisy_psnr']:.2f} | {r['wall_time_s']:.0f} "
            f"| {r['device']} |"
        )
    atomic_write(md_path, lambda f: f.write(("\n".join(lines) + "\n").encode()))


def plot_grid(
    cases: tuple[Case, ...], profile: Profile, out_dir: Path, path: Path, title: str
) -> None:
    """Figure 3/4 style: rows = cases; columns = noisy, DIP-L1, DOP, clean; PSNR under each."""
    fig, axes = plt.subplots(len(cases), 4, figsize=(8, 2.2 * len(cases)), squeeze=False)
    for row, case in zip(axes, cases, strict=True):
        dop, l1 = case.run("dop").ckpt(profile), case.run("dip-l1").ckpt(profile)
        panels = [
            (f"{dop}_noisy.png", "noisy", read_config(out_dir, dop), "noisy_psnr"),
            (f"{l1}_last.png", "DIP-L1", read_config(out_dir, l1), "final_psnr"),
            (f"{dop}_last.png", "DOP", read_config(out_dir, dop), "final_psnr"),
            (f"{dop}_clean.png", "clean", None, None),
        ]
        for ax, (name, label, config, key) in zip(row, panels, strict=True):
            ax.set_xticks([])
            ax.set_yticks([])
            if (out_dir / name).is_file():
                image = read_png(out_dir / name)
                ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
            psnr = f"{config[key]:.2f} dB" if config is not None else ("" if key is None else "—")
            ax.set_xlabel(f"{label} {psnr}".strip(), fontsize=9)
        row[0].set_ylabel(case.label, fontsize=9)
    fig.suptitle(f"{title} — profile: {profile.name} (last iterate)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def plot_curves(
    panels: list[tuple[str, list[tuple[Run, str]]]],
    profile: Profile,
    out_dir: Path,
    path: Path,
    title: str,
    ncols: int = 4,
    panel: tuple[float, float] = (3.5, 2.8),
) -> None:
    """PSNR against iteration, one panel per (label, [(run, legend label)])."""
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(panel[0] * ncols, panel[1] * nrows), squeeze=False
    )
    for ax, (label, runs) in zip(axes.flat, panels, strict=False):
        for run, legend in runs:
            history_path = out_dir / f"{run.ckpt(profile)}_history.csv"
            if history_path.is_file():
                h = read_history(history_path)
                ax.plot(h[:, 0], h[:, 2], STYLES[run.method], label=legend, lw=1.3)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.set_ylabel("PSNR (dB)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"{title} — profile: {profile.name}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig: plt.Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def method_panels(cases: tuple[Case, ...]) -> list[tuple[str, list[tuple[Run, str]]]]:
    return [(c.label, [(c.run(m), LABELS[m]) for m in ("dop", "dip", "dip-l1")]) for c in cases]


def draw(
    names: list[str],
    profile: Profile,
    out_dir: Path,
    figs_dir: Path,
    table_dir: Path,
    cases: dict[str, tuple[Case, ...]] | None = None,
) -> list[Path]:
    """Draw the named figures and write the table of their runs; returns the files written.

    ``cases`` overrides the cases of fig3/fig4/fig5 (tests shrink them).
    """
    cases = cases or DEFAULT_CASES
    wanted = check_names(names)
    written = []
    for name in wanted:
        path = figs_dir / f"{name}_{profile.name}.png"
        if name == "fig3":
            plot_grid(cases["fig3"], profile, out_dir, path, "Figure 3: 50% salt-and-pepper")
        elif name == "fig4":
            plot_grid(cases["fig4"], profile, out_dir, path, "Figure 4: F16 at several levels")
        elif name == "fig5":
            panels = method_panels(cases["fig3"]) + method_panels(cases["fig4"])
            plot_curves(panels, profile, out_dir, path, "Figure 5: learning curves, same noise")
        elif name == "readme":
            runs = [(r, f"{LABELS[r.method]} width {profile.width(r.width)}") for r in README_RUNS]
            plot_curves([("F16, 50%", runs)], profile, out_dir, path, "README curve", 1, (6, 4))
        written.append(path)
    runs = figure_runs(wanted, cases)
    rows = [row for run in runs if (row := result_row(run, profile, out_dir)) is not None]
    csv_path = table_dir / f"results_{profile.name}.csv"
    md_path = table_dir / f"results_table_{profile.name}.md"
    write_table(rows, profile, csv_path, md_path)
    return [*written, csv_path, md_path]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("figures", nargs="+", help="fig3, fig4, fig5, readme or all")
    p.add_argument("--profile", default="full", help="full or quick (default: full)")
    p.add_argument("--out_dir", type=Path, default=None, help="run outputs (checkpoints/PROFILE)")
    p.add_argument("--figs_dir", type=Path, default=Path("figs"))
    p.add_argument("--table_dir", type=Path, default=Path("docs"))
    args = p.parse_args(argv)
    if args.profile not in PROFILES:
        print(f"error: unknown profile {args.profile!r}; choose from full, quick", file=sys.stderr)
        return 2
    try:
        check_names(args.figures)
    except KeyError as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 2
    profile = PROFILES[args.profile]
    out_dir = args.out_dir or Path("checkpoints") / profile.name
    for path in draw(args.figures, profile, out_dir, args.figs_dir, args.table_dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
