"""reproduce.py end to end on a shrunk profile: runs, figures, table, reuse of finished runs."""

import csv
import dataclasses
import shutil
from pathlib import Path

import pytest
from PIL import Image

import reproduce
from engine.config import to_argv
from experiments.driver import Setting
from experiments.driver import reproduce as run_set
from experiments.sets import (
    COMPARE_VARIANTS,
    LIP_MASKS,
    LR_C_SWEEP,
    PROFILES,
    Case,
    Profile,
    Run,
    check_names,
    figure_runs,
)
from models.lip import INPUT_CONVS, file_sha256, load_ticket
from tests.conftest import tiny_profile
from utils import InputError
from utils.rundir import RunDir

# Bundled images (a fresh clone has no paper images): two at 50% (Figure 3) and one at two
# levels (Figure 4): 3 cases x 3 variants = 9 runs.
TINY = Profile("tiny", crop=64, width_scale=1 / 16, iter_scale=300 / 150_000, show_every=50,
               save_every=100, imp_rounds=2, imp_iters=20)  # fmt: skip
CASES = {
    "fig3": (Case("cat", 0.5), Case("coffee", 0.5)),
    "fig4": (Case("cat", 0.3), Case("cat", 0.5)),
}


def on_cpu(profile: Profile, out: Path, data_dir: Path) -> Setting:
    return Setting(profile, out, data_dir, ("cpu",))


def read_rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_figure_sets_are_the_papers() -> None:
    assert {r.image for r in figure_runs(["fig3"])} == {"F16", "Peppers", "Baboon", "kodim03"}
    assert sorted(r.nlevel for r in figure_runs(["fig4"]) if r.variant == "dop") == [
        0.1, 0.3, 0.5, 0.7,
    ]  # fmt: skip
    fig5 = figure_runs(["fig5"])
    assert len(fig5) == 21  # 7 distinct cases (F16 50% is shared) x 3 variants
    assert {r.variant for r in fig5} == {"dop", "dip", "dip-l1"} and {r.seed for r in fig5} == {0}
    widths = sorted((r.variant, r.width) for r in figure_runs(["readme"]))
    assert widths == [("dip-l1", 64), ("dip-l1", 192), ("dop", 192)]
    assert len(figure_runs(["all"])) == 24  # the paper's figures; the lr_c sweep is apart
    sweep = figure_runs(["lrc"])
    assert len(sweep) == (7 + 2) * len(LR_C_SWEEP) and {r.variant for r in sweep} == {"dop"}
    assert {r.lr_c for r in sweep} == set(LR_C_SWEEP) and max(LR_C_SWEEP) == 500
    quick, out = PROFILES["quick"], Path("out")
    l1 = Run("F16", 0.5, "dip-l1").config(quick, out)
    assert (l1.width, l1.crop, l1.method, l1.loss, l1.reuse) == (16, 64, "dip", "l1", True)
    dop = Run("F16", 0.5, "dop").config(quick, out)  # the quick profile's rule: 1000·sqrt(n/n_512)
    assert (dop.lr_c, dop.lr_c_scaling) == (1000, "sqrt") and "--lr_c" not in to_argv(l1)
    swept = Run("F16", 0.5, "dop", lr_c=62.5).config(quick, out)
    assert (swept.lr_c, swept.lr_c_scaling) == (62.5, "none")  # the sweep sets lr_c used as is
    with pytest.raises(InputError):
        check_names(["fig9"])


def test_bad_figure_name_is_one_line_exit_2(capsys) -> None:
    assert reproduce.main(["fig9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1


def test_quick_set_end_to_end_and_rerun_reuses(tmp_path: Path) -> None:
    out, figs, docs = tmp_path / "out", tmp_path / "figs", tmp_path / "docs"
    kw = dict(figs_dir=figs, table_dir=docs, cases=CASES)
    outcome, files = run_set(["all"], on_cpu(TINY, out, tmp_path), batch=8, **kw)
    runs = figure_runs(["all"], CASES)
    assert len(outcome["started"]) == len(runs) and not outcome["failed"]
    for name in ("fig3", "fig4", "fig5", "readme"):
        path = figs / f"{name}_tiny.png"
        assert path in files
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size[0] > 100
    rows = read_rows(docs / "results_tiny.csv")
    assert sorted(r["run"] for r in rows) == sorted(r.ckpt(TINY) for r in runs)
    assert all(r["profile"] == "tiny" for r in rows)
    assert "profile `tiny`" in (docs / "results_table_tiny.md").read_text()
    for row in rows:
        assert 0 < float(row["last_ssim"]) <= 1
        assert float(row["drop_peak_to_last"]) >= 0
    last = {
        (r["image"], r["nlevel"], r["variant"], r["width"]): float(r["last_psnr"]) for r in rows
    }
    for case in CASES["fig3"] + CASES["fig4"]:
        key = (case.image, str(case.nlevel))
        dop, dip = last[(*key, "dop", "8")], last[(*key, "dip", "8")]
        assert dop > dip, f"{case.label}: DOP {dop:.2f} dB <= DIP {dip:.2f} dB"

    # A rerun runs nothing: every run is reused and its history is left as it was.
    histories = {p: p.stat().st_mtime_ns for p in out.glob("*_history.csv")}
    outcome, _ = run_set(["all"], on_cpu(TINY, out, tmp_path), **kw)
    assert len(outcome["reused"]) == len(runs) and not outcome["started"] + outcome["resumed"]
    assert {p: p.stat().st_mtime_ns for p in out.glob("*_history.csv")} == histories


def test_a_run_made_with_other_settings_is_refused(tmp_path: Path, capsys) -> None:
    """A folder that holds a run of the same name made with other settings (here: another lr_c
    rule) is not reused, resumed or overwritten: that run fails with a one-line reason."""
    cases = {"fig3": (Case("cat", 0.5),), "fig4": ()}
    tiny = tiny_profile(40)
    outcome, _ = run_set(["fig3"], on_cpu(tiny, tmp_path / "out", tmp_path), tmp_path, tmp_path,
                         cases=cases)  # fmt: skip
    assert len(outcome["started"]) == 2
    other = tiny_profile(40, lr_c_scaling="sqrt")
    outcome, _ = run_set(["fig3"], on_cpu(other, tmp_path / "out", tmp_path), tmp_path, tmp_path,
                         cases=cases)  # fmt: skip
    assert outcome["failed"] == [Run("cat", 0.5, "dop").ckpt(other)]
    assert outcome["reused"] == [Run("cat", 0.5, "dip-l1").ckpt(other)]  # lr_c plays no part
    assert "lr_c_scaling='none', not 'sqrt'" in capsys.readouterr().err


def test_killed_run_is_resumed_and_longer_run_extends(tmp_path: Path) -> None:
    out = tmp_path / "out"
    kw = dict(figs_dir=tmp_path / "figs", table_dir=tmp_path / "docs")
    cases = {"fig3": (Case("cat", 0.5),), "fig4": ()}
    short = tiny_profile(100, show_every=50, save_every=50)
    outcome, _ = run_set(["fig3"], on_cpu(short, out, tmp_path), cases=cases, **kw)
    assert len(outcome["started"]) == 2
    # Simulate a run killed after its checkpoint: no config.json; then ask for more iterations.
    dop = RunDir(out, Run("cat", 0.5, "dop").ckpt(short))
    dop.path("config").unlink()
    longer = tiny_profile(150, show_every=50, save_every=50)
    outcome, _ = run_set(["fig3"], on_cpu(longer, out, tmp_path), cases=cases, **kw)
    expected = sorted(r.ckpt(longer) for r in figure_runs(["fig3"], cases))
    assert sorted(outcome["resumed"]) == expected
    report = dop.config()["report"]
    assert report["status"] == "finished" and report["iterations_done"] == 150


def test_jobs_run_as_subprocesses(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cases = {"fig3": (Case("cat", 0.5),), "fig4": ()}
    tiny = tiny_profile(60)
    outcome, files = run_set(["fig3"], on_cpu(tiny, out, tmp_path), tmp_path / "figs",
                             tmp_path / "docs", jobs=2, cases=cases)  # fmt: skip
    assert len(outcome["started"]) == 2 and not outcome["failed"]
    for run in figure_runs(["fig3"], cases):
        assert "last iterate PSNR" in RunDir(out, run.ckpt(tiny)).log.read_text()
    assert len(read_rows(tmp_path / "docs" / "results_tiny.csv")) == 2


def test_run_killed_before_its_first_checkpoint_starts_over(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    cases = {"fig3": (Case("cat", 0.5),), "fig4": ()}
    tiny = tiny_profile(40)
    dop = RunDir(out, Run("cat", 0.5, "dop").ckpt(tiny))
    dop.path("noisy").write_bytes(b"left over")  # no state.pt, no config.json
    outcome, _ = run_set(["fig3"], on_cpu(tiny, out, tmp_path), tmp_path / "figs",
                         tmp_path / "docs", cases=cases)  # fmt: skip
    assert len(outcome["started"]) == 2 and not outcome["failed"]
    with Image.open(dop.path("noisy")) as img:
        assert img.format == "PNG"


def test_comparison_table_on_the_same_noise(tmp_path: Path, capsys) -> None:
    """Every variant with both rules watching, and the baselines, on one observation per case;
    the lottery prior's mask found first, without ground truth, on a held-out image."""
    out, docs = tmp_path / "out", tmp_path / "docs"
    cases = {"compare": (Case("cat", 0.5), Case("cat", 0.12, "gaussian"))}
    kw = dict(figs_dir=tmp_path / "figs", table_dir=docs, cases=cases)
    lip_runs = [case.run("lip", observe=True).ckpt(TINY) for case in cases["compare"]]
    with pytest.raises(InputError, match="nothing drawn"):  # nothing runs, not even the search
        run_set(["compare"], on_cpu(TINY, out, tmp_path), collect=True, **kw)
    assert not docs.exists()
    outcome, files = run_set(["compare"], on_cpu(TINY, out, tmp_path), batch=3, **kw)
    variants = len(COMPARE_VARIANTS)  # DOP, DIP, DIP-L1, the decoder (+ DOP), DRP, the lottery
    assert len(outcome["started"]) == 2 * variants and not outcome["failed"]
    mask = LIP_MASKS.mask(TINY, out)
    ticket = load_ticket(mask)
    provenance = ticket.meta["provenance"]
    assert LIP_MASKS.case.image not in {case.image for case in cases["compare"]}
    assert "astronaut" in provenance["images"][0]["image"] and not provenance["uses_ground_truth"]
    assert provenance["rounds"] == TINY.imp_rounds == ticket.meta["round"]
    assert 0 < ticket.sparsity() < 1 - 0.8**TINY.imp_rounds  # the input convolutions dense
    assert all(ticket.mask[name].all() for name in INPUT_CONVS) and provenance["redraw_z"]
    for name in lip_runs:  # every case's lottery run trained that mask
        assert RunDir(out, name).config()["data"]["mask_sha256"] == file_sha256(mask)
    assert LIP_MASKS.describe(TINY) in (docs / "COMPARISON.md").read_text()
    assert docs / "COMPARISON.md" in files
    assert "Profile `tiny`" in (docs / "COMPARISON.md").read_text()
    rows = read_rows(docs / "comparison_tiny.csv")
    assert len(rows) == 2 * (variants + 3)  # 2 cases x (the variants + 3 baselines)
    for noise, baseline in (("salt_pepper", "median 3×3"), ("gaussian", "BM3D (σ given)")):
        runs = [r for r in rows if r["noise"] == noise and r["iterations"]]
        assert len(runs) == variants and len({r["noisy_psnr"] for r in runs}) == 1  # same noise
        for r in runs:  # a rule that never fired says -1 (Adam's DIP may not overfit in 300)
            assert -1 <= int(r["wmv_iteration"]) < 300 and -1 <= int(r["emv_iteration"]) < 300, r
            assert all(float(r[f"oracle_{rule}_gap"] or 0) >= 0 for rule in ("wmv", "emv"))
        [sgd] = [r for r in runs if r["method"] == "DIP (L2)"]  # it fits the noise: both fire
        assert 0 <= int(sgd["wmv_iteration"]) < 300 and 100 < int(sgd["emv_iteration"]) < 300
        [made_for] = [r for r in rows if r["noise"] == noise and r["method"] == baseline]
        assert float(made_for["last_psnr"]) > float(runs[0]["noisy_psnr"]) + 3
    searched = mask.stat().st_mtime_ns
    again, _ = run_set(["compare"], on_cpu(TINY, out, tmp_path), **kw)
    assert len(again["reused"]) == 2 * variants and mask.stat().st_mtime_ns == searched
    moved = shutil.copytree(out, tmp_path / "moved")  # the mask is known by its content
    assert run_set(["compare"], on_cpu(TINY, moved, tmp_path), collect=True, **kw)[0] == {
        "reused": again["reused"], "missing": [], "failed": []}  # fmt: skip
    capsys.readouterr()
    longer = dataclasses.replace(TINY, imp_iters=30)  # a search of that name made otherwise
    again, _ = run_set(["compare"], on_cpu(longer, out, tmp_path), **kw)
    assert (
        again["failed"] == [LIP_MASKS.ckpt(TINY), *lip_runs] and mask.stat().st_mtime_ns == searched
    )
    assert "num_iter=20, not 30" in capsys.readouterr().err
