"""benchmarks/tasks.py: its runs (every row variant on every task, outlier level and image, the
same observation for each variant), and a tiny version run to its table and CSV."""

from csv import DictReader
from pathlib import Path

from benchmarks import tasks
from engine.config import parse
from experiments.sets import VARIANTS, Profile
from tests.conftest import TEST_IMAGE


def test_every_row_variant_runs_on_every_setting(capsys) -> None:
    assert set(tasks.ROWS) <= set(VARIANTS)
    assert tasks.main(["--dry_run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(tasks.TASKS) * len(tasks.OUTLIERS) * len(tasks.ROWS) * 4
    cfgs = [parse(line.split()[2:]) for line in lines]
    for cfg in cfgs:
        cfg.check()
        # the quick profile: the prior's width on the task / 8 (the projector's 128 there)
        assert (cfg.crop, cfg.width, cfg.num_iter) == (64, 16, 3000)
        if cfg.prior == "drp":  # its code's settings per task, from the task's registry
            resolved = cfg.resolved()
            expected = {"inpaint": (0.01, 0.05, None), "sr": (0.75, 0.5, "lanczos2")}
            assert (resolved.tv, resolved.lr, resolved.downsampler) == expected[cfg.task]
        for key, value in VARIANTS[cfg.ckpt.rsplit("_", 1)[1]].items():
            assert str(getattr(cfg, key)) == value  # the row's settings
    dop = [c for c in cfgs if c.method == "dop"]
    assert dop and all((c.lr_c, c.lr_c_scaling) == (1000, "sqrt") for c in dop)


def test_a_tiny_table(tmp_path: Path, monkeypatch, one_thread) -> None:
    """One setting (inpainting with 20% outliers) on one image, width 4, 4 iterations."""
    tiny = Profile("quick", 64, 4 / 128, 4 / 150_000, show_every=2, save_every=4)
    monkeypatch.setitem(tasks.PROFILES, "quick", tiny)
    image, data_dir = TEST_IMAGE
    csv = tmp_path / "tasks.csv"
    argv = ["--images", image, "--data_dir", str(data_dir), "--out_dir", str(tmp_path / "out"),
            "--gpu", "cpu", "--only", f"inpaint_{image}_p20", "--csv", str(csv)]  # fmt: skip
    assert tasks.main(argv) == 0
    with csv.open() as f:
        rows = list(DictReader(f))
    assert [r["variant"] for r in rows] == list(tasks.ROWS)
    assert len({r["observation_psnr"] for r in rows}) == 1  # the same observation for each
    text = tasks.table(tasks.scores(tmp_path / "out", [image]))
    lines = text.splitlines()
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| observation"] + [
        f"| {v}" for v in tasks.ROWS
    ]
    for line in lines[2:]:  # inpainting with outliers only
        assert [c.strip(" |") == "–" for c in line.split(" | ")[1:]] == [True, False, True, True]


def test_bad_input_is_one_line(capsys) -> None:
    assert tasks.main(["--batch", "two"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--batch" in err and "\n" not in err, err
