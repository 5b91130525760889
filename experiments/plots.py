"""Figures and the results table, from saved run outputs only (history, PNGs, config.json).

A figure or a table is drawn from the runs that have ended: with some missing it says which,
and with none it is not drawn at all, so a committed figure is never replaced by an empty one
(``draw``: an InputError when nothing at all could be drawn).

Figures 3/4: one row per case: the noisy input, DIP-L1, DOP and the clean image, with the
last-iterate PSNR under each. Figure 5 and the README curve: PSNR against iteration (DOP solid,
DIP dashed, DIP-L1 dotted). The lr_c sweep: DOP's last-iterate PSNR against lr_c. The table: per
run the last-iterate PSNR and SSIM, the peak PSNR ("oracle": it needs the clean image) and its
iteration, the drop peak -> last, wall time, device. The comparison (docs/COMPARISON.md): per case
every variant's last iterate, the iterate each stopping rule detected, the oracle peak, and the
classical baselines on the same observation.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from engine.config import LR_C_SCALINGS, RunConfig  # noqa: E402
from experiments.sets import (  # noqa: E402
    DEFAULT_CASES,
    FULL_ITERS,
    LIP_MASKS,
    LR_C_SWEEP,
    PAPER_FIGURES,
    PAPER_IMAGES,
    PAPER_VARIANTS,
    PROFILES,
    SWEEP_WIDTHS,
    Case,
    Profile,
    Run,
    check_names,
    compare_runs,
    figure_runs,
    readme_runs,
    sv_runs,
)
from utils import InputError  # noqa: E402
from utils.io import atomic_write, save_csv, save_text  # noqa: E402
from utils.rundir import RunDir  # noqa: E402

TABLES = {"results": PAPER_FIGURES, "lrc": ("lrc",)}  # a table per group of figures
STYLES = {"dop": "-", "dip": "--", "dip-l1": ":"}  # the paper's variants, in the curves
LABELS = {"dop": "DOP", "dip": "DIP (L2)", "dip-l1": "DIP-L1",
          "dip-es": "DIP (L2, Adam: the ES paper's)", "decoder": "deep decoder",
          "decoder-dop": "deep decoder + DOP", "drp": "random projector",
          "lip": "lottery prior (transferred mask)"}  # fmt: skip
BASELINE_LABELS = {"median3": "median 3×3", "median5": "median 5×5", "bm3d": "BM3D"}
RULE_LABELS = {"wmv": "ES-WMV", "emv": "ES-EMV", "sv": "SV-ES"}  # the comparison's rules
# Other detections the comparison shows where its runs have them (no oracle gap of their own).
EXTRA_COLUMNS = {"emv_raw_psnr": "ES-EMV (raw x)", "find_best_psnr": "find_best"}
COMPARE_FIELDS = [
    "image", "noise", "level", "method", "noisy_psnr", "last_psnr", "last_ssim", "wmv_psnr",
    "wmv_iteration", "wmv_fired_at", "emv_psnr", "emv_iteration", "emv_fired_at", "sv_psnr",
    "sv_iteration", "sv_fired_at", "emv_raw_psnr", "find_best_psnr", "find_best_iteration",
    "oracle_peak_psnr", "oracle_wmv_gap", "oracle_emv_gap", "oracle_sv_gap", "iterations",
    "wall_time_s", "device", "date",
]  # fmt: skip
# The comparison tables: the main one (every variant, the light rules) and SV-ES's own set.
COMPARISONS = {"compare": ("comparison", compare_runs),
               "compare-sv": ("comparison_sv", sv_runs)}  # fmt: skip
# The other tasks' tables on the comparison page, after the denoising ones: the markdown that
# benchmarks/blind.py (blind deblurring with noise) and benchmarks/phase.py (phase retrieval)
# write beside their CSVs, TABLE_DIR/STEM_PROFILE.md.
TASK_TABLES = ("blind", "phase")
TABLE_FIELDS = [
    "run", "image", "nlevel", "variant", "width", "num_iter", "lr_c_used", "noisy_psnr",
    "last_psnr", "last_ssim", "oracle_peak_psnr", "oracle_peak_iter", "drop_peak_to_last",
    "wall_time_s", "iterations_per_s", "device", "status",
]  # fmt: skip


def result_row(run: Run, profile: Profile, out_dir: Path) -> dict | None:
    """One table row from the saved outputs of ``run``; None when it has not ended."""
    rundir = RunDir(out_dir, run.ckpt(profile))
    record = rundir.config()
    if record is None:
        return None
    report, history = record["report"], rundir.history()
    peak = int(np.argmax(history["psnr"]))
    lr_c = report["lr_c_used"]
    return {
        "run": rundir.ckpt, "image": run.image, "nlevel": run.nlevel, "variant": run.variant,
        "width": record["settings"]["width"], "num_iter": record["settings"]["num_iter"],
        "lr_c_used": None if lr_c is None else round(lr_c, 4),
        "noisy_psnr": round(report["noisy_psnr"], 2),
        "last_psnr": round(float(history["psnr"][-1]), 2),
        "last_ssim": round(float(history["ssim"][-1]), 4),
        "oracle_peak_psnr": round(float(history["psnr"][peak]), 2),
        "oracle_peak_iter": int(history["iteration"][peak]),
        "drop_peak_to_last": round(float(history["psnr"][peak] - history["psnr"][-1]), 2),
        "wall_time_s": report["wall_time_s"], "iterations_per_s": report["iterations_per_s"],
        "device": report["device"], "status": report["status"],
    }  # fmt: skip


def write_table(rows: list[dict], profile: Profile, csv_path: Path, md_path: Path) -> None:
    """results.csv (every field, a profile column) and a Markdown table of the same rows."""
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    fields = ["profile", *TABLE_FIELDS]
    save_csv(csv_path, fields, ([{"profile": profile.name, **r}[k] for k in fields] for r in rows))
    head = ["run", "variant", "lr_c used", "last PSNR", "last SSIM", "peak PSNR (oracle) @ iter",
            "drop peak→last", "noisy PSNR", "wall time (s)", "device"]  # fmt: skip
    lines = [
        f"# Results, profile `{profile.name}`",
        "",
        f"Profile `{profile.name}`: crop {profile.crop or 'none'}, width × "
        f"{profile.width_scale:g}, iterations × {profile.iter_scale:g}, {lr_c_rule(profile)} "
        "(unless the run sets its own), seed 0. PSNR in dB and SSIM "
        "(Wang et al.'s Gaussian window) of the network output against the clean image. 'Last' "
        "is the last iterate (the result); the peak is an **oracle** (it needs the clean image).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        lr_c = "—" if r["lr_c_used"] is None else f"{r['lr_c_used']:g}"
        lines.append(
            f"| {r['run']} | {LABELS[r['variant']]} | {lr_c} | {r['last_psnr']:.2f} "
            f"| {r['last_ssim']:.4f} "
            f"| {r['oracle_peak_psnr']:.2f} @ {r['oracle_peak_iter']} "
            f"| {r['drop_peak_to_last']:.2f} | {r['noisy_psnr']:.2f} | {r['wall_time_s']:.0f} "
            f"| {r['device']} |"
        )
    save_text(md_path, "\n".join(lines))


def comparison_rows(cases: tuple[Case, ...], profile: Profile, out_dir: Path,
                    figure: str = "compare") -> list[dict]:  # fmt: skip
    """The rows of comparison ``figure`` (``COMPARISONS``): each ended run of a case, then the
    case's baselines (the main comparison's)."""
    rows = []
    for case in cases:
        where = {"image": case.image, "noise": case.noise, "level": case.nlevel}
        for run in COMPARISONS[figure][1]((case,)):
            rundir = RunDir(out_dir, run.ckpt(profile))
            if (record := rundir.config()) is None:
                continue
            r = record["report"]
            rows.append(where | {
                "method": LABELS[run.variant], "noisy_psnr": r["noisy_psnr"],
                "last_psnr": r["final_psnr"], "last_ssim": r["final_ssim"],
                **{f"{rule}_{key}": r.get(f"{rule}_{name}") for rule in RULE_LABELS
                   for key, name in (("psnr", "psnr"), ("iteration", "detected_iteration"),
                                     ("fired_at", "fired_at"))},
                "emv_raw_psnr": r.get("emv_raw_psnr"), "find_best_psnr": r.get("find_best_psnr"),
                "find_best_iteration": r.get("find_best_detected_iteration"),
                **{f"oracle_{rule}_gap": r.get(f"oracle_{rule}_gap") for rule in RULE_LABELS},
                "oracle_peak_psnr": r.get("oracle_peak_psnr"), "iterations": r["iterations_done"],
                "wall_time_s": r["wall_time_s"], "device": r["device"], "date": rundir.date(),
            })  # fmt: skip
        path = case.baselines_path(out_dir)
        if figure == "compare" and path.is_file():
            saved = json.loads(path.read_text())
            sigma = "σ given" if saved["sigma_given"] is not None else "σ estimated"
            for name, b in saved["baselines"].items():
                label = BASELINE_LABELS[name] + (f" ({sigma})" if name == "bm3d" else "")
                scores = {"last_psnr": b["psnr"], "last_ssim": b["ssim"]}
                rows.append(where | scores | {"method": label, "wall_time_s": b["seconds"]})
    return [{field: row.get(field) for field in COMPARE_FIELDS} for row in rows]


def write_comparison(rows: list[dict], profile: Profile, table_dir: Path,
                     figure: str = "compare") -> list[Path]:  # fmt: skip
    """docs/comparison_PROFILE.csv (or comparison_sv_PROFILE.csv for SV-ES's set), then
    docs/COMPARISON.md (``write_comparison_page``)."""
    table_dir.mkdir(parents=True, exist_ok=True)
    csv_path = table_dir / f"{COMPARISONS[figure][0]}_{profile.name}.csv"
    save_csv(csv_path, COMPARE_FIELDS, ([row[k] for k in COMPARE_FIELDS] for row in rows))
    return [csv_path, write_comparison_page(table_dir, profile)]


def write_comparison_page(table_dir: Path, profile: Profile | None = None) -> Path:
    """docs/COMPARISON.md from every profile's tables in ``table_dir``: the denoising comparisons
    (their CSVs), then the other tasks' tables (``TASK_TABLES``: the markdown STEM_PROFILE.md
    each benchmark writes beside its CSV, its headings one level down)."""
    lines = [
        "# Comparison on the same noise",
        "",
        "Generated by `plot.py` from the runs of `python reproduce.py compare` and `python "
        "reproduce.py compare-sv` (see README, 'Early stopping'), and from the tables of "
        "`python -m benchmarks.blind` and `python -m benchmarks.phase` (their sections at the "
        "end; what each measures, and its paper's claim: docs/RESULTS.md). Every method of a "
        "case sees the same noisy observation (seed 0). "
        "PSNR (dB) / SSIM of the recovered image against the clean one. **last**: the last "
        "iterate, the result without a stopping rule. **ES-WMV**, **ES-EMV**, **SV-ES**: the "
        "iterate each rule detected, without ground truth, and (in brackets) the detected "
        "iteration / the iteration at which it fired (a run with `--stop` stops at the first "
        "logged row after it; 'no': it had not fired by the last iteration, where such a run "
        "ends, returning the iterate shown); ES-WMV's and SV-ES's image is the output x there, "
        "ES-EMV's its moving average (the ES-EMV notebook's; **ES-EMV (raw x)**: the output "
        "there, `--stop_emv_image raw`). **find_best**: the deep decoder's rule, also without "
        "ground truth: the net after the last step that lowered the training loss below "
        "best/1.005. The runs go on to the last iteration (`--stop_observe`), so 'iterations' "
        "and 'wall time' are those of the whole run. "
        "**oracle peak**: the best PSNR over the logged rows and the detected iterates; it "
        "uses the clean image, as does the **gap** (oracle peak − detected PSNR). Baselines: "
        "median filters and BM3D (σ given for Gaussian noise, else estimated) on the same "
        "observation. SV-ES (self-validation, Li et al., BMVC 2021) costs a hundred DIP "
        "iterations per check: it watches its own set of runs (`compare-sv`: DIP and DIP-L1 at "
        "Gaussian 0.18 and 50% impulse noise), where the two light rules watch too, so the "
        "three rules are compared on the same trajectories.",
    ]
    known = PROFILES | ({} if profile is None else {profile.name: profile})
    for each in known.values():
        for (stem, _), title in zip(COMPARISONS.values(), ("", " — SV-ES's set"), strict=True):
            path = table_dir / f"{stem}_{each.name}.csv"
            if path.is_file():
                with path.open() as f:
                    lines += comparison_section(each, list(csv.DictReader(f)), title)
    for path in (p for stem in TASK_TABLES for p in sorted(table_dir.glob(f"{stem}_*.md"))):
        title, *rest = path.read_text().splitlines()
        lines += ["", "#" + title, *rest]  # its title one level down
    md_path = table_dir / "COMPARISON.md"
    save_text(md_path, "\n".join(lines))
    return md_path


def runs_summary(rows: list[dict]) -> str:
    """'device (date); ...' of the rows' runs, each pair once."""
    return "; ".join(sorted({f"{r['device']} ({r['date']})" for r in rows if r.get("device")}))


def comparison_section(profile: Profile, rows: list[dict], title: str = "") -> list[str]:
    """One profile's tables: means over the images per noise level, then every case; SV-ES's
    columns where its runs recorded it."""
    number = lambda v, d=2: "—" if v in ("", None) else f"{float(v):.{d}f}"  # noqa: E731
    rules = [rule for rule in RULE_LABELS if any(r.get(f"{rule}_psnr") for r in rows)]
    rules = rules or ["wmv", "emv"]
    images = list(dict.fromkeys(r["image"] for r in rows))
    devices = sorted({r["device"] for r in rows if r.get("device")})
    dates = sorted({r["date"] for r in rows if r.get("date")})
    flag = "" if profile.name == "full" else f" --{profile.name}"
    figure = "compare-sv" if "sv" in rules else "compare"
    if set(images) != set(PAPER_IMAGES):
        flag += f" --images {','.join(images)}"
    sv = (f"; SV-ES with W = 256, P = 500, a check every {profile.sv_every} iteration(s) (its "
          "paper's claim: a gap of typically ≤ 1 dB, at 512 × 512, width 128, a check every "
          "iteration)" if "sv" in rules else "")  # fmt: skip
    labels = [RULE_LABELS[rule] for rule in rules]
    extras = {k: label for k, label in EXTRA_COLUMNS.items() if any(r.get(k) for r in rows)}
    lines = [
        "", f"## Profile `{profile.name}`{title}", "",
        f"`python reproduce.py {figure}{flag}`: crop {profile.crop or 'none'}, width × "
        f"{profile.width_scale:g}, iterations × {profile.iter_scale:g} "
        f"({profile.num_iter(FULL_ITERS)}), {lr_c_rule(profile)}; ES-WMV and ES-EMV with W = "
        f"100, P = 1000, a = 0.1{sv}. Images: {', '.join(images)}. Device of the runs: "
        f"{'; '.join(devices)} (flags that only spread the runs, such as `--jobs`, are not "
        f"recorded). "
        f"Date: {', '.join(dates)}.", "",
        *([f"{LABELS['lip']}: {LIP_MASKS.describe(profile)}.", ""]
          if any(r["method"] == LABELS["lip"] for r in rows) else []),
        "Means over the images:", "",
        "| noise | method | last | " + " | ".join([*labels, *extras.values()]) + " | oracle peak | "
        + " | ".join(f"{rule.upper()} gap (oracle)" for rule in rules) + " |",
        "|" + "---|" * (4 + 2 * len(rules) + len(extras)),
    ]  # fmt: skip
    keys = ["last_psnr", *(f"{rule}_psnr" for rule in rules), *extras, "oracle_peak_psnr",
            *(f"oracle_{rule}_gap" for rule in rules)]  # fmt: skip
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["noise"], r["level"], r["method"]), []).append(r)
    for (noise, level, method), group in groups.items():
        means = [np.mean([float(r[k]) for r in group]) if all(r.get(k) for r in group) else None
                 for k in keys]  # fmt: skip
        lines.append(f"| {noise} {level} | {method} | " + " | ".join(map(number, means)) + " |")
    lines += ["", "Every case:", "",
              "| image | noise | method | last PSNR / SSIM | "
              + " | ".join(f"{label} (iter / fired)" for label in labels)
              + " | oracle peak | iterations | wall time (s) |",
              "|" + "---|" * (7 + len(rules))]  # fmt: skip
    for r in rows:
        found = " | ".join(detection(r, rule, number) for rule in rules)
        lines.append(
            f"| {r['image']} | {r['noise']} {r['level']} | {r['method']} "
            f"| {number(r['last_psnr'])} / {number(r['last_ssim'], 3)} | {found} "
            f"| {number(r.get('oracle_peak_psnr'))} | {r.get('iterations') or '—'} "
            f"| {number(r['wall_time_s'], 1)} |"
        )
    return lines


def detection(row: dict, rule: str, number) -> str:
    """'PSNR (detected iteration / fired at)' of a rule in a comparison row."""
    if not row.get(f"{rule}_psnr"):
        return "—"
    fired = row.get(f"{rule}_fired_at") or "no"
    return f"{number(row[f'{rule}_psnr'])} ({row[f'{rule}_iteration']} / {fired})"


def plot_grid(
    cases: tuple[Case, ...], profile: Profile, out_dir: Path, path: Path, title: str
) -> None:
    """Figure 3/4 style: rows = cases; columns = noisy, DIP-L1, DOP, clean; PSNR under each."""
    fig, axes = plt.subplots(len(cases), 4, figsize=(8, 2.2 * len(cases)), squeeze=False)
    for row, case in zip(axes, cases, strict=True):
        dop = RunDir(out_dir, case.run("dop").ckpt(profile))
        l1 = RunDir(out_dir, case.run("dip-l1").ckpt(profile))
        panels = [(dop, "noisy", "noisy", "noisy_psnr"), (l1, "last", "DIP-L1", "final_psnr"),
                  (dop, "last", "DOP", "final_psnr"), (dop, "clean", "clean", None)]  # fmt: skip
        for ax, (rundir, name, label, key) in zip(row, panels, strict=True):
            ax.set_xticks([])
            ax.set_yticks([])
            if rundir.path(name).is_file():
                image = rundir.image(name)
                ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
            record = rundir.config()
            psnr = (
                "" if key is None else "—" if record is None else f"{record['report'][key]:.2f} dB"
            )
            ax.set_xlabel(f"{label} {psnr}".strip(), fontsize=9)
        row[0].set_ylabel(case.label, fontsize=9)
    fig.suptitle(f"{title} — profile: {profile.name}, {lr_c_rule(profile)} (last iterate)",
                 fontsize=10)  # fmt: skip
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
            rundir = RunDir(out_dir, run.ckpt(profile))
            if rundir.path("history").is_file():
                h = rundir.history()
                ax.plot(h["iteration"], h["psnr"], STYLES[run.variant], label=legend, lw=1.3)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.set_ylabel("PSNR (dB)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"{title} — profile: {profile.name}, {lr_c_rule(profile)}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def lr_c_rule(profile: Profile) -> str:
    return f"DOP's lr_c {profile.lr_c:g}, scaling {profile.lr_c_scaling}"


def save_figure(fig: plt.Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def variant_panels(cases: tuple[Case, ...]) -> list[tuple[str, list[tuple[Run, str]]]]:
    return [(c.label, [(c.run(v), LABELS[v]) for v in PAPER_VARIANTS]) for c in cases]


def plot_sweep(cases: tuple[Case, ...], profile: Profile, out_dir: Path, path: Path) -> None:
    """Last-iterate PSNR of DOP against the lr_c used, per case (left) and, on the first case,
    per width (right); the lr_c that each --lr_c_scaling rule gives from 500 is marked."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    lines = [(left, c.label, [c.run("dop", lr_c=v) for v in LR_C_SWEEP]) for c in cases]
    first = cases[0]
    for width in sorted((128, *SWEEP_WIDTHS)):
        label = f"{first.label}, width {profile.width(width)}"
        lines.append((right, label, [first.run("dop", width, v) for v in LR_C_SWEEP]))
    numel = None
    for ax, label, runs in lines:
        points = [(run.lr_c, RunDir(out_dir, run.ckpt(profile)).config()) for run in runs]
        points = [(v, r["report"]["final_psnr"]) for v, r in points if r is not None]
        if points:
            ax.plot(*zip(*points, strict=True), "o-", label=label, lw=1.2, ms=3)
        record = RunDir(out_dir, runs[0].ckpt(profile)).config()
        numel = numel or (record and math.prod(record["data"]["shape"]))
    for ax in (left, right):
        for rule in LR_C_SCALINGS if numel else ():
            value = RunConfig(lr_c=500.0, lr_c_scaling=rule).lr_c_used(numel)
            ax.axvline(value, color="gray", ls=":", lw=1)
            ax.text(value, 1.0, f" {rule}", transform=ax.get_xaxis_transform(), fontsize=7,
                    va="top", color="gray")  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xlabel("lr_c used (lr = 1)", fontsize=8)
        ax.set_ylabel("last-iterate PSNR (dB)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"DOP: lr_c sweep — profile: {profile.name}, {profile.num_iter(FULL_ITERS)} "
                 "iterations (dotted: the scaling rules applied to 500)", fontsize=10)  # fmt: skip
    fig.tight_layout()
    save_figure(fig, path)


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
    cases = DEFAULT_CASES | (cases or {})
    wanted = check_names(names)
    written = []
    for name in wanted:
        if not ended_runs(name, cases, profile, out_dir):
            continue
        path = figs_dir / f"{name}_{profile.name}.png"
        if name == "fig3":
            plot_grid(cases["fig3"], profile, out_dir, path, "Figure 3: 50% salt-and-pepper")
        elif name == "fig4":
            plot_grid(cases["fig4"], profile, out_dir, path, "Figure 4: F16 at several levels")
        elif name == "fig5":
            panels = variant_panels(cases["fig3"]) + variant_panels(cases["fig4"])
            plot_curves(panels, profile, out_dir, path, "Figure 5: learning curves, same noise")
        elif name == "readme":
            case = cases["fig3"][0]
            runs = [(r, f"{LABELS[r.variant]} width {profile.width(r.width)}")
                    for r in readme_runs(case)]  # fmt: skip
            plot_curves([(case.label, runs)], profile, out_dir, path, "README curve", 1, (6, 4))
        elif name == "lrc":
            plot_sweep(tuple(dict.fromkeys(cases["fig3"] + cases["fig4"])), profile, out_dir, path)
        if name in COMPARISONS:
            rows = comparison_rows(cases[name], profile, out_dir, name)
            written += write_comparison(rows, profile, table_dir, name)
        else:
            written.append(path)
    for table, figures in TABLES.items():  # every run of the group found, whatever was asked
        if set(figures) & set(wanted):
            runs = figure_runs(list(figures), cases)
            rows = [row for run in runs if (row := result_row(run, profile, out_dir)) is not None]
            if not rows:
                continue
            csv_path = table_dir / f"{table}_{profile.name}.csv"
            md_path = table_dir / f"{table}_table_{profile.name}.md"
            write_table(rows, profile, csv_path, md_path)
            written += [csv_path, md_path]
    if not written:
        raise InputError(f"nothing drawn: no run of {', '.join(wanted)} has ended in {out_dir} "
                         f"(profile {profile.name}); run them first (reproduce.py)")  # fmt: skip
    return written


def ended_runs(name: str, cases: dict[str, tuple[Case, ...]], profile: Profile, out_dir: Path
               ) -> list[Run]:  # fmt: skip
    """The runs of figure ``name`` that have ended; says which are missing (all of them: the
    figure is not drawn)."""
    runs = figure_runs([name], cases)
    done = [r for r in runs if RunDir(out_dir, r.ckpt(profile)).config() is not None]
    missing = [r.ckpt(profile) for r in runs if r not in done]
    if missing:
        more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        what = "not drawn" if not done else f"drawn from {len(done)} of {len(runs)} runs"
        print(f"{name}: {what}; not ended in {out_dir}: {', '.join(missing[:4])}{more}",
              flush=True)  # fmt: skip
    return done
