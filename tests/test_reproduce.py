"""reproduce.py end to end on a shrunk profile: runs, figures, table, reuse of finished runs."""

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

import reproduce
from experiments import PROFILES, Case, Profile, Run, check_names, figure_runs

# Two images at 50% (Figure 3) and F16 at two levels (Figure 4): 3 cases x 3 methods = 9 runs.
TINY = Profile("tiny", crop=64, width_scale=1 / 16, iter_scale=300 / 150_000, show_every=50,
               save_every=100)  # fmt: skip
CASES = {
    "fig3": (Case("F16", 0.5), Case("Peppers", 0.5)),
    "fig4": (Case("F16", 0.3), Case("F16", 0.5)),
}


def read_rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_figure_sets_are_the_papers() -> None:
    assert {r.image for r in figure_runs(["fig3"])} == {"F16", "Peppers", "Baboon", "kodim03"}
    assert sorted(r.nlevel for r in figure_runs(["fig4"]) if r.method == "dop") == [
        0.1, 0.3, 0.5, 0.7,
    ]  # fmt: skip
    fig5 = figure_runs(["fig5"])
    assert len(fig5) == 21  # 7 distinct cases (F16 50% is shared) x 3 methods
    assert {r.method for r in fig5} == {"dop", "dip", "dip-l1"} and {r.seed for r in fig5} == {0}
    widths = sorted((r.method, r.width) for r in figure_runs(["readme"]))
    assert widths == [("dip-l1", 64), ("dip-l1", 192), ("dop", 192)]
    assert len(figure_runs(["all"])) == 24
    quick = PROFILES["quick"]
    args = Run("F16", 0.5, "dop").args(quick)
    assert args[args.index("--width") + 1] == "16" and args[args.index("--crop") + 1] == "64"
    with pytest.raises(KeyError):
        check_names(["fig9"])


def test_bad_figure_name_is_one_line_exit_2(capsys) -> None:
    assert reproduce.main(["fig9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1


def test_quick_set_end_to_end_and_rerun_reuses(tmp_path: Path, data_dir: Path) -> None:
    out, figs, docs = tmp_path / "out", tmp_path / "figs", tmp_path / "docs"
    kw = dict(figs_dir=figs, table_dir=docs, device="cpu", cases=CASES)
    outcome, files = reproduce.reproduce(["all"], TINY, out, data_dir, **kw)
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
    last = {(r["image"], r["nlevel"], r["method"], r["width"]): float(r["last_psnr"]) for r in rows}
    for case in CASES["fig3"] + CASES["fig4"]:
        key = (case.image, str(case.nlevel))
        dop, dip = last[(*key, "dop", "8")], last[(*key, "dip", "8")]
        assert dop > dip, f"{case.label}: DOP {dop:.2f} dB <= DIP {dip:.2f} dB"

    # A rerun runs nothing: every run is reused and its history is left as it was.
    histories = {p: p.stat().st_mtime_ns for p in out.glob("*_history.csv")}
    outcome, _ = reproduce.reproduce(["all"], TINY, out, data_dir, **kw)
    assert len(outcome["reused"]) == len(runs) and not outcome["started"] + outcome["resumed"]
    assert {p: p.stat().st_mtime_ns for p in out.glob("*_history.csv")} == histories


def test_killed_run_is_resumed_and_longer_run_extends(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "out"
    kw = dict(figs_dir=tmp_path / "figs", table_dir=tmp_path / "docs", device="cpu")
    cases = {"fig3": (Case("F16", 0.5),), "fig4": ()}
    short = Profile("tiny", 64, 1 / 32, 100 / 150_000, show_every=50, save_every=50)
    outcome, _ = reproduce.reproduce(["fig3"], short, out, data_dir, cases=cases, **kw)
    assert len(outcome["started"]) == 2
    # Simulate a run killed after its checkpoint: no config.json; then ask for more iterations.
    dop = Run("F16", 0.5, "dop").ckpt(short)
    (out / f"{dop}_config.json").unlink()
    longer = Profile("tiny", 64, 1 / 32, 150 / 150_000, show_every=50, save_every=50)
    outcome, _ = reproduce.reproduce(["fig3"], longer, out, data_dir, cases=cases, **kw)
    expected = sorted(r.ckpt(longer) for r in figure_runs(["fig3"], cases))
    assert sorted(outcome["resumed"]) == expected
    config = json.loads((out / f"{dop}_config.json").read_text())
    assert config["status"] == "finished" and config["iterations_done"] == 150


def test_jobs_run_as_subprocesses(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "out"
    cases = {"fig3": (Case("F16", 0.5),), "fig4": ()}
    tiny = Profile("tiny", 64, 1 / 32, 60 / 150_000, show_every=20, save_every=20)
    outcome, files = reproduce.reproduce(
        ["fig3"], tiny, out, data_dir, tmp_path / "figs", tmp_path / "docs", "cpu", jobs=2,
        cases=cases,
    )  # fmt: skip
    assert len(outcome["started"]) == 2 and not outcome["failed"]
    for run in figure_runs(["fig3"], cases):
        assert "last iterate PSNR" in (out / f"{run.ckpt(tiny)}.log").read_text()
    assert len(read_rows(tmp_path / "docs" / "results_tiny.csv")) == 2


def test_run_killed_before_its_first_checkpoint_starts_over(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    cases = {"fig3": (Case("F16", 0.5),), "fig4": ()}
    tiny = Profile("tiny", 64, 1 / 32, 40 / 150_000, show_every=20, save_every=20)
    dop = Run("F16", 0.5, "dop").ckpt(tiny)
    (out / f"{dop}_noisy.png").write_bytes(b"left over")  # no state.pt, no config.json
    outcome, _ = reproduce.reproduce(
        ["fig3"], tiny, out, data_dir, tmp_path / "figs", tmp_path / "docs", "cpu", cases=cases
    )
    assert len(outcome["started"]) == 2 and not outcome["failed"]
    with Image.open(out / f"{dop}_noisy.png") as img:
        assert img.format == "PNG"
