"""The settings of a run in one form: RunConfig, its command line, its defaults and its checks;
and the run folder that stores them."""

import dataclasses
import json

import pytest

from models import PRIORS
from utils import InputError
from utils.config import RunConfig, parse, parser
from utils.rundir import FILES, RunDir

PUBLIC_FLAGS = {"ckpt": "test", "gpu": None, "image": None, "nlevel": 0.5, "alg": "sgd",
                "lr": 1.0, "lr_c": 500.0, "num_iter": 150_000, "width": 128}  # fmt: skip


def test_every_setting_is_one_flag_and_the_public_defaults_hold() -> None:
    help_text = parser("").format_help()
    for f in dataclasses.fields(RunConfig):
        assert f"--{f.name} " in help_text or f"--{f.name}\n" in help_text, f.name
    cfg = parse([]).with_defaults()
    assert {k: getattr(cfg, k) for k in PUBLIC_FLAGS} == PUBLIC_FLAGS
    assert cfg.loss == "l2" and cfg.method == "dop" and cfg.reg_noise_std == 1 / 30
    assert parse(["--l1"]).loss == "l1" == parse(["--loss", "l1"]).loss  # one setting


def test_the_prior_fills_what_the_command_line_leaves_open() -> None:
    skip = PRIORS["skip"].defaults
    assert parse([]).with_defaults() == parse(
        ["--alg", skip["alg"], "--lr", str(skip["lr"]), "--reg_noise_std", str(1 / 30),
         "--nlevel", "0.5"]
    ).with_defaults()  # fmt: skip
    explicit = parse(["--alg", "adam", "--lr", "0.01"]).with_defaults()
    assert (explicit.alg, explicit.lr) == ("adam", 0.01)
    assert parse(["--observed", "x.png"]).with_defaults().nlevel is None  # no synthetic noise


def test_defining_settings_leave_out_where_and_how_long() -> None:
    defining = RunConfig().defining()
    for how in ("ckpt", "gpu", "out_dir", "data_dir", "num_iter", "save_every", "fast", "quiet"):
        assert how not in defining
    assert {"image", "nlevel", "seed", "method", "lr_c", "width", "show_every"} <= set(defining)
    assert "lr_c" not in RunConfig(method="dip").defining()  # plays no part without g, h


@pytest.mark.parametrize(
    "argv,flag",
    [(["--nlevel", "2"], "--nlevel"), (["--observed", "a.png", "--image", "F16"], "--observed"),
     (["--clean", "a.png"], "--clean"), (["--ckpt", "../x"], "--ckpt"),
     (["--save_every", "7", "--show_every", "5"], "--save_every"),
     (["--reg_noise_std", "-1"], "--reg_noise_std")],
)  # fmt: skip
def test_bad_settings_name_their_flag(argv: list[str], flag: str) -> None:
    with pytest.raises(InputError, match=flag):
        parse(argv).check()


def test_run_folder_refuses_files_of_an_earlier_format(tmp_path) -> None:
    rundir = RunDir(tmp_path, "old")
    rundir.path("config").write_text(json.dumps({"status": "finished"}))
    with pytest.raises(InputError, match="earlier version"):
        rundir.config()
    assert rundir.existing() == [rundir.path("config")]
    assert len({rundir.path(name) for name in FILES}) == len(FILES)  # one file per name
