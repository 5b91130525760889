"""The settings of a run in one form: RunConfig, its command line, its defaults and its checks;
and the run folder that stores them."""

import json

import pytest

from engine.config import RunConfig, owners, parse, to_argv
from models import PRIORS
from tasks import TASKS
from utils import InputError
from utils.rundir import FILES, RunDir

PUBLIC_FLAGS = {"ckpt": "test", "gpu": None, "image": None, "nlevel": 0.5, "alg": "sgd",
                "lr": 1.0, "lr_c": 500.0, "num_iter": 150_000, "width": 128}  # fmt: skip


# Every field set to a value other than its default (the command line must carry each one back).
OTHER_VALUES = dict(
    image="F16", noise="mixture", nlevel=0.125, mixture_sigma=0.1, observed=None, clean=None,
    crop=96, pad=True, seed=3, task="inpaint", keep=0.25, pixel_mask="m.png", factor=2,
    downsampler="lanczos2", kernel="k.png", kernel_size=9, no_nonlocal=True, oversampling=3.0,
    object_phase=0.5, outliers=0.01, method="dip",
    prior="lip", width=7, mask="m.pt", loss="l1", ssim_padding="valid", tv=1e-3, alg="adam",
    lr=1 / 3, lr_c=0.1, lr_c_scaling="sqrt", num_iter=77, loss_switch=5,
    lr_kernel=2e-4, lr_milestones="3,4", lr_gamma=0.25, reg_noise_std=0.0, stop="wmv",
    stop_window=9, stop_patience=8, stop_decay=0.3, stop_emv_image="raw", sv_window=7,
    sv_patience=11, sv_every=3, stop_observe=True,
    ema=0.95, ckpt="x y", out_dir="o", data_dir="d", gpu="cpu", fast=True, low_memory=True,
    deterministic=True, show_every=3, save_every=6, resume=True, overwrite=False, reuse=False,
    quiet=True, variant="zhuang", kernel_fraction=0.3, x_window="kernel", l1l2=2e-4,
    alg_c="adam",
)  # fmt: skip


def test_a_config_goes_through_its_command_line_unchanged() -> None:
    """``to_argv`` and ``parse`` are inverses: every field, with a value other than its default
    (floats that print long included), comes back equal."""
    cfg = RunConfig(**OTHER_VALUES)
    assert set(OTHER_VALUES) == set(RunConfig.__dataclass_fields__)  # the list above is complete
    assert all(getattr(cfg, k) != getattr(RunConfig(), k) for k in OTHER_VALUES
               if k not in ("observed", "clean", "overwrite", "reuse"))  # fmt: skip
    assert parse(to_argv(cfg)) == cfg
    assert to_argv(RunConfig()) == [] and parse([]) == RunConfig()


def test_the_public_defaults_hold() -> None:
    cfg = parse([]).resolved()
    assert {k: getattr(cfg, k) for k in PUBLIC_FLAGS} == PUBLIC_FLAGS
    assert cfg.loss == "l2" and cfg.method == "dop" and cfg.reg_noise_std == 1 / 30
    assert parse(["--l1"]).loss == "l1" == parse(["--loss", "l1"]).loss  # one setting


def test_the_prior_fills_what_the_command_line_leaves_open() -> None:
    skip = PRIORS["skip"].defaults
    assert parse([]).resolved() == parse(
        ["--alg", skip["alg"], "--lr", str(skip["lr"]), "--reg_noise_std", str(1 / 30),
         "--nlevel", "0.5"]
    ).resolved()  # fmt: skip
    explicit = parse(["--alg", "adam", "--lr", "0.01"]).resolved()
    assert (explicit.alg, explicit.lr) == ("adam", 0.01)
    assert parse(["--observed", "x.png"]).resolved().nlevel is None  # no synthetic noise


def test_defining_settings_leave_out_where_and_how_long() -> None:
    defining = RunConfig().defining()
    for how in ("ckpt", "gpu", "out_dir", "data_dir", "num_iter", "save_every", "fast", "quiet"):
        assert how not in defining
    assert {"image", "nlevel", "seed", "method", "lr_c", "width", "show_every"} <= set(defining)
    assert "lr_c" not in RunConfig(method="dip").defining()  # plays no part without g, h


def test_a_task_or_prior_setting_elsewhere_is_refused_by_its_owner() -> None:
    """Settings only a task or a prior reads (``own_settings``) are refused with the others,
    naming who owns them; the owners come from the registries."""
    owned = {name for part in (*TASKS.values(), *PRIORS.values()) for name in part.own_settings}
    assert {"keep", "pixel_mask", "factor", "kernel", "kernel_size", "mask"} <= owned
    with pytest.raises(InputError, match="--keep goes with --task inpaint"):
        parse(["--keep", "0.3"]).check()
    with pytest.raises(InputError, match="--kernel goes with --task deblur or blind-deblur"):
        parse(["--kernel", "k.png", "--task", "sr"]).check()
    assert owners("mask") == "--prior lip"


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
