"""The command line as a user may type it, drawn at random (hypothesis): flags from RunConfig's
fields and the registries (tasks, priors, methods, losses, noise types, stopping rules), sizes and
levels inside and outside their ranges, on bundled images cropped to 8-80 pixels, 2-3
iterations. Every command either ends with its outputs or is refused in one line (exit 2) having
written nothing; never a traceback. And ``to_argv`` is the inverse of ``parse`` on any config.

CI runs a fixed, small set of examples (the "ci" profile, tests/conftest.py); ``--runslow`` or
HYPOTHESIS_PROFILE=slow draws many more."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

import denoising
from engine.config import LR_C_SCALINGS, METHODS, RunConfig, parse, to_argv
from models import PRIORS
from tasks import TASKS
from utils.images import BUNDLED_IMAGES
from utils.losses import LOSS_NAMES
from utils.noise import NOISES
from utils.rundir import RunDir
from utils.stopping import RULES


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    """Input files a user may give: kernels (good, colour, all zeros, large), pixel masks, observed
    images of several sizes, a file that is no image, a path that does not exist."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)

    def png(name: str, pixels: np.ndarray) -> str:
        Image.fromarray(pixels.astype(np.uint8)).save(root / name)
        return str(root / name)

    made = {"missing": str(root / "missing.png"), "data": str(root / "data")}
    (root / "data").mkdir()  # --data_dir: empty (no default image: --image or --observed)
    for side in (1, 3, 9, 21, 41):
        kernel = np.zeros((side, side))
        kernel[side // 2, :] = 255
        made[f"kernel{side}"] = png(f"kernel{side}.png", kernel)
    made["kernel_rgb"] = png("kernel_rgb.png", np.full((5, 5, 3), 200))
    made["kernel_zero"] = png("kernel_zero.png", np.zeros((5, 5)))
    for side in (16, 48, 64, 80):
        made[f"mask{side}"] = png(f"mask{side}.png", (rng.random((side, side)) < 0.5) * 255)
        made[f"observed{side}"] = png(f"observed{side}.png", rng.integers(0, 256, (side, side, 3)))
        made[f"gray{side}"] = png(f"gray{side}.png", rng.integers(0, 256, (side, side)))
    (root / "garbage.png").write_bytes(b"GIF89a this is no image")
    made["garbage"] = str(root / "garbage.png")
    made["garbage/sub"] = str(root / "garbage.png" / "sub")
    return Files(made)


class Files(dict):
    """Input files by name (shown by their names only in a failing example's report)."""

    def __repr__(self) -> str:
        return f"<{len(self)} input files in {Path(self['data']).parent}>"


FILES = ("missing", "garbage", "kernel1", "kernel3", "kernel9", "kernel21", "kernel41",
         "kernel_rgb", "kernel_zero", "mask16", "mask48", "mask64", "mask80", "observed16",
         "observed48", "observed64", "observed80", "gray16", "gray48", "gray64",
         "gray80")  # fmt: skip
NAN, INF = float("nan"), float("inf")
NEGATIVE = [-1.0, -1e-5, -INF, NAN]  # out of every range below
FRACTION = [1e-3, 0.1, 0.5, 0.9, 1.0]
LEVELS = {"salt_pepper": FRACTION, "mixture": FRACTION, "shot": [1.0, 12.0, 200.0]}
# Each flag: values in its range, and values outside it (or names that do not exist).
VALUES: dict[str, tuple[list, list]] = {
    "nlevel": ([0.0, 0.01, 0.1, 0.5], [*NEGATIVE, 1.5]),  # (levels of the noise type: LEVELS)
    "mixture_sigma": ([0.0, 0.05, 0.3], NEGATIVE),
    "crop": ([8, 11, 16, 33, 48, 64, 64, 65, 72, 80], [-3, 0, 5, 100000]),
    "seed": ([0, 1, 7], [-1]),
    "method": (list(METHODS), ["dip-l1", "DOP"]),
    "width": ([1, 2, 4, 6], [0, -2]),
    "loss": (list(LOSS_NAMES), ["l3"]),
    "tv": ([0.0, 0.1], NEGATIVE),
    "alg": (["sgd", "adam"], ["lbfgs"]),
    "lr": ([1e-3, 0.01, 1.0, 50.0], [*NEGATIVE, 0.0, INF]),
    "lr_c": ([1.0, 500.0, 1e9], [*NEGATIVE, 0.0]),
    "lr_c_scaling": (list(LR_C_SCALINGS), ["n2"]),
    "num_iter": ([2, 3], [0, -1]),
    "loss_switch": ([0, 1, 2], [-1]),
    "lr_milestones": (["1", "1,2", "2,1", " 1 "], ["0", "x", "1;2", "-1"]),
    "lr_gamma": ([0.1, 0.5, 1.0], [*NEGATIVE, 0.0, 1.5]),
    "reg_noise_std": ([0.0, 1 / 30, 1.0], NEGATIVE),
    "stop": (["none", *RULES], ["es"]),
    "stop_window": ([1, 2, 3], [0, -1]),
    "stop_patience": ([1, 2], [0]),
    "stop_decay": ([0.1, 0.9], [*NEGATIVE, 0.0, 1.0]),
    "ema": ([0.0, 0.5, 0.99], [*NEGATIVE, 1.0]),
    "show_every": ([1, 2], [0, -1]),
    "save_every": ([1, 2], [0, 3]),  # (in-range: times --show_every)
    "image": (
        [*BUNDLED_IMAGES, "observed64", "gray80"],
        ["nope", "missing", "garbage", "observed16"],
    ),
    "observed": (
        ["observed48", "observed64", "observed80", "gray48", "gray80"],
        ["missing", "garbage", "observed16", "kernel9"],
    ),
    "clean": (["observed48", "observed64", "gray48", "gray64"], ["missing", "camera"]),
    # a task's or a prior's own (given with it, or, as a bad value, with another)
    "keep": (FRACTION, [*NEGATIVE, 0.0, 1.5]),
    "pixel_mask": (["mask48", "mask64", "mask80"], ["mask16", "missing", "garbage"]),
    "factor": ([1, 2, 4], [0, -1, 3]),  # (2 and 4 divide every crop of 64 and more)
    "kernel": (
        ["kernel1", "kernel3", "kernel9", "kernel21"],
        ["kernel41", "kernel_rgb", "kernel_zero", "garbage", "missing"],
    ),
    "kernel_size": ([1, 3, 9, 15], [0, -1, 60, 1000]),
    "lr_kernel": ([1e-4, 0.01], [*NEGATIVE, 0.0]),
    "mask": ([], ["missing", "garbage", "kernel3"]),  # no mask of lip.py: --prior lip refused
    # where and how (the test's own values, --ckpt run --out_dir OUT --gpu cpu, but these)
    "ckpt": ([], ["", ".hidden", "a/b", "x" * 300]),
    "out_dir": ([], ["garbage", "garbage/sub"]),  # a file, or a folder below a file
    "gpu": ([], ["7", "cuda", "-1"]),
}
# The task, the prior and the noise type: always chosen (a task's own settings and an
# observation's follow), now and then one that does not exist (or the lottery prior, which no
# mask of lip.py is given to here).
CHOSEN = {"task": (list(TASKS), ["tasks"]), "prior": (["skip", "decoder", "drp"], ["lip", "unet"]),
          "noise": (list(NOISES), ["poisson"])}  # fmt: skip
ALWAYS = ("crop", "width", "num_iter", "show_every")  # tiny runs: small images, nets and iterations
OWNED = ("keep", "pixel_mask", "factor", "kernel", "kernel_size", "lr_kernel", "mask")


@st.composite
def command_lines(draw: st.DrawFn, files: dict[str, str]) -> list[str]:
    """A denoising.py command line (without --out_dir, --data_dir, --gpu, --quiet, --ckpt): a
    task, a prior, an image or an observation, any other flag given or not, with values in their
    ranges but for at most two flags (``wild``), whose values are outside them."""
    wild = draw(st.lists(st.sampled_from([*VALUES, *CHOSEN]), max_size=2, unique=True))
    chosen = {name: draw(st.sampled_from(bad if name in wild else good))
              for name, (good, bad) in CHOSEN.items()}  # fmt: skip
    task, prior, noise = chosen["task"], chosen["prior"], chosen["noise"]
    pad = draw(st.booleans())  # any crop, or one the prior's multiple leaves large enough
    source = draw(st.sampled_from(("image", "image", "observed")))
    flags = {"task": task, "prior": prior} | ({"noise": noise} if draw(st.booleans()) else {})
    mine = {*TASKS.get(task, TASKS["denoise"]).own_settings,
            *PRIORS.get(prior, PRIORS["skip"]).own_settings}  # fmt: skip
    for name, (good, bad) in VALUES.items():
        if name == "nlevel" and source == "observed":
            continue
        if name in ("image", "observed", "clean") and name != source and (
                name != "clean" or source != "observed"):  # fmt: skip
            continue
        if name == "nlevel":
            good = [0.0, *LEVELS.get(noise, good[1:])]
        elif name == "crop":
            good = [c for c in good if pad or c >= 64]
        if name in wild:
            flags[name] = draw(st.sampled_from(bad))
        elif name == "save_every":  # a multiple of --show_every
            flags[name] = flags["show_every"] * draw(st.sampled_from(good))
        elif good and (name in mine or name in (*ALWAYS, source) or (
                name not in OWNED and draw(st.integers(0, 2)) == 0)):  # fmt: skip
            flags[name] = draw(st.sampled_from(good))
    if "kernel" in mine and "kernel" not in flags:
        flags["kernel"] = "kernel3"
    flags["pad"] = pad
    flags["stop_observe"] = draw(st.booleans()) and (flags.get("stop") in RULES) != (
        "stop_observe" in wild)  # fmt: skip
    flags["l1"] = "loss" not in flags and draw(st.integers(0, 4)) == 0
    flags[draw(st.sampled_from(("fast", "low_memory", "resume", "overwrite", "reuse")))] = (
        draw(st.integers(0, 2)) == 0)  # fmt: skip
    argv = [f"--{name}={files.get(value, value)}" for name, value in flags.items()
            if isinstance(value, str)]  # fmt: skip
    argv += [f"--{name}={value}" for name, value in flags.items()
             if not isinstance(value, (str, bool))]  # fmt: skip
    return argv + [f"--{name}" for name, value in flags.items() if value is True]


def run_command(argv: list[str]) -> tuple[int, str]:
    """denoising.main in this process, its stderr captured (warnings included)."""
    err = io.StringIO()
    with (contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()),
          warnings.catch_warnings()):  # fmt: skip
        warnings.simplefilter("default")
        code = denoising.main(argv)
    return code, err.getvalue()


# A second command on the folder of a run that ended: the same, or continued, reused, replaced,
# or continued with other settings (refused: the run's files stay as they are).
AGAIN = ([], ["--resume"], ["--reuse"], ["--overwrite"], ["--resume", "--num_iter=5"],
         ["--resume", "--seed=9"], ["--reuse", "--seed=9"],
         ["--overwrite", "--crop=80"])  # fmt: skip


@settings(
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ]
)  # one_thread: for all
@given(data=st.data())
def test_any_command_line_ends_with_its_outputs_or_is_refused_in_one_line(
    files: dict[str, str], data: st.DataObject, one_thread
) -> None:
    """Any command line, then now and then a second one on the run it made."""
    argv = data.draw(command_lines(files), label="argv")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        base = ["--out_dir", str(out), "--data_dir", files["data"], "--gpu", "cpu", "--quiet",
                "--ckpt", "run"]  # fmt: skip
        code = ended_or_refused([*base, *argv], out, {})
        if code == 2 or not data.draw(st.booleans(), label="again"):
            return
        again = data.draw(st.sampled_from(AGAIN), label="second command's extra flags")
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        ended_or_refused([*base, *argv, *again], out, before)


def ended_or_refused(argv: list[str], out: Path, before: dict[str, bytes]) -> int:
    """Run ``argv``: refused in one line, leaving the folder as it was (``before``: its files),
    or ended with its outputs (exit 0, or 1: diverged). Its exit code."""
    code, err = run_command(argv)
    event(f"{'again: ' if before else ''}exit {code}" + (f": {err[7:60]}" if code == 2 else ""))
    now = {p.name: p.read_bytes() for p in out.iterdir()} if out.is_dir() else {}
    if code == 2:
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert now == before, sorted(set(now) ^ set(before))
        return code
    assert code in (0, 1), (code, err)  # 1: diverged, its outputs written as for 0
    assert "Traceback" not in err, err
    run = RunDir(out, "run")
    report = run.config()["report"]
    assert (report["status"] == "diverged") == (code == 1), report
    assert run.path("last").is_file() and run.path("history").is_file()
    assert not [name for name in now if name.endswith((".tmp", ".lock"))], sorted(now)
    return code


def field_values(f: dataclasses.Field) -> st.SearchStrategy:
    """Any value of a RunConfig field of its type (and None where None is its default)."""
    meta = f.metadata
    kind = meta["type"] or type(f.default)
    if meta["choices"]:
        values = st.sampled_from(meta["choices"])
    elif kind is bool:
        values = st.booleans()
    elif kind is int:
        values = st.integers()
    elif kind is float:
        values = st.floats(allow_nan=False)
    else:
        values = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"))
    return st.none() | values if f.default is None else values


@given(st.fixed_dictionaries({f.name: field_values(f) for f in dataclasses.fields(RunConfig)}))
def test_to_argv_is_the_inverse_of_parse(fields: dict) -> None:
    cfg = RunConfig(**fields)
    assert parse(to_argv(cfg)) == cfg
