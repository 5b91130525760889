"""Every path of the engine once, through the runner, with a table: the first thing to run when a
GPU is lent (docs/RESULTS.md, "GPU checklist").

    python -m benchmarks.gpu_smoke                      # GPU 0: 256x256 crops, 100 iterations
    python -m benchmarks.gpu_smoke --gpu cpu --tiny     # the same checks at 64x64, width 4 (a test)

Each check is one or more runs of ``engine.run`` (what denoising.py runs) on scikit-image's
astronaut with salt-and-pepper noise: the faithful path (twice: does a GPU repeat itself?),
``--deterministic`` (twice), ``--fast``, ``--low_memory``, both, four runs batched with
``--fast``, resuming across optimizer kernels (SGD and Adam, without and with ``--fast``, both
ways: default, fused and channels-last), the output average and both stopping rules, each prior
and each task; on a GPU also a resume on the CPU (refused: its η stream was drawn on the GPU)
and a 4064x4064 ``--low_memory`` run (refused before it starts: past CUDA's 32-bit index
limit). One row per check:

    check            status  it/s  seconds  peak GB  note

``status`` is ok, or FAILED with the exit codes (its runs' output, captured, is in
OUT_DIR/CHECK.log; ``--verbose`` shows it); ``it/s`` is the first run's loop rate (compilation
and cuDNN's autotuning included: a smoke test, not a benchmark); ``peak GB`` is CUDA's maximum
allocated during the check (on the CPU the process's resident peak so far); the note compares
histories where that is the point: ``ΔPSNR`` is the largest difference of PSNR (vs the clean
image: **oracle**) between two runs at any logged row, ``same`` when the histories are equal to
the last bit. Exit code 0 when every check is ok, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import resource
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine import RunConfig, run
from engine.device import pick_device
from engine.runner import Outcome
from models import SkipNet
from models.lip import Ticket, dense_ticket, save_ticket
from utils import ArgumentParser, InputError, guarded
from utils.io import check_writable


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", default=None, help="cpu or a GPU index (default: GPU 0 if any)")
    p.add_argument("--tiny", action="store_true", help="64x64, width 4, 6 iterations")
    p.add_argument("--size", type=int, default=256, help="crop side (default 256)")
    p.add_argument("--iters", type=int, default=100, help="iterations per run (default 100)")
    p.add_argument("--only", nargs="+", default=None, help="run only the checks named")
    p.add_argument("--out_dir", type=Path, default=None, help="keep the runs here (default: a "
                   "temporary folder, removed)")  # fmt: skip
    p.add_argument("--verbose", action="store_true", help="show the runs' output")
    return p.parse_args(argv)


@dataclasses.dataclass
class Smoke:
    """The settings every check starts from, where its runs go, and the runs made so far."""

    base: RunConfig
    out: Path
    device: torch.device
    width: int | None  # every prior's width (None: each prior's own)
    done: dict[str, Outcome] = dataclasses.field(default_factory=dict)

    def config(self, name: str, **settings) -> RunConfig:
        return dataclasses.replace(self.base, ckpt=name, **settings)

    def run(self, configs: list[RunConfig], **options) -> list[Outcome]:
        outcomes = run(configs, **options)
        self.done |= {cfg.ckpt: o for cfg, o in zip(configs, outcomes, strict=True)}
        return outcomes


@dataclasses.dataclass
class Row:
    codes: list[int]
    note: str = ""
    outcomes: list[Outcome] = dataclasses.field(default_factory=list)
    expected: list[int] | None = None  # the exit codes (None: every one 0)

    @property
    def ok(self) -> bool:
        return self.codes == (self.expected or [0] * len(self.codes))


def history(outcome: Outcome) -> list[dict]:
    return outcome.written.history if outcome.written is not None else []


def compare(a: Outcome, b: Outcome) -> str:
    """``same`` for equal histories, else the largest PSNR difference at any logged row."""
    ha, hb = history(a), history(b)
    if ha == hb:
        return "same"
    gaps = [abs(ra["psnr"] - rb["psnr"]) for ra, rb in zip(ha, hb, strict=False)]
    return f"ΔPSNR {max(gaps):.3g} dB" if gaps else "no rows"


def one(smoke: Smoke, name: str, **settings) -> Row:
    [outcome] = smoke.run([smoke.config(name, **settings)])
    return Row([outcome.code], outcomes=[outcome])


def twice(smoke: Smoke, name: str, **settings) -> Row:
    """The same run twice (another --ckpt): does the device repeat itself?"""
    a = smoke.run([smoke.config(name, **settings)])[0]
    b = smoke.run([smoke.config(name + "_again", **settings)])[0]
    return Row([a.code, b.code], f"run twice: {compare(a, b)}", [a, b])


def against_faithful(smoke: Smoke, name: str, **settings) -> Row:
    row = one(smoke, name, **settings)
    faithful = smoke.done.get("faithful") or smoke.run([smoke.config("faithful")])[0]
    return dataclasses.replace(row, note=f"vs faithful: {compare(faithful, row.outcomes[0])}")


def batched(smoke: Smoke, name: str) -> Row:
    configs = [smoke.config(f"{name}{seed}", seed=seed, fast=True) for seed in range(4)]
    outcomes = smoke.run(configs, max_batch=4)
    sizes = {o.written.report["batch_size"] for o in outcomes if o.written is not None}
    return Row([o.code for o in outcomes], f"batch sizes {sorted(sizes)}", outcomes)


def resumed(smoke: Smoke, name: str, first: dict, then: dict, **settings) -> Row:
    """Half the iterations with ``first``, the rest resumed with ``then``."""
    half = smoke.config(name, num_iter=smoke.base.num_iter // 2, **settings, **first)
    a = smoke.run([half])[0]
    b = smoke.run([dataclasses.replace(half, num_iter=smoke.base.num_iter, resume=True,
                                       **then)])[0]  # fmt: skip
    done = b.written.report["iterations_done"] if b.written is not None else None
    return Row([a.code, b.code], f"resumed to iteration {done}", [a, b])


def refused_elsewhere(smoke: Smoke, name: str) -> Row:
    """A GPU's checkpoint resumed on the CPU: refused in one line (exit 2)."""
    half = smoke.config(name, num_iter=smoke.base.num_iter // 2)
    a = smoke.run([half])[0]
    b = smoke.run([dataclasses.replace(half, num_iter=smoke.base.num_iter, resume=True,
                                       gpu="cpu")])[0]  # fmt: skip
    return Row([a.code, b.code], "resumed with --gpu cpu: exit 2 expected", [a, b], [0, 2])


def index_limit(smoke: Smoke, name: str) -> Row:
    """A 4064x4064 run at width 128 with --low_memory: within 80 GB by the estimate, past
    CUDA's 32-bit index limit, refused before anything is allocated (exit 2, saying why)."""
    path = smoke.out / "big.png"
    ramp = np.linspace(0, 127, 4064, dtype=np.float32)
    Image.fromarray(np.add.outer(ramp, ramp).astype(np.uint8)).convert("RGB").save(path)
    cfg = smoke.config(name, image=str(path), crop=None, width=128, low_memory=True)
    said = io.StringIO()
    with contextlib.redirect_stderr(said):
        [outcome] = smoke.run([cfg])
    print(said.getvalue(), end="", file=sys.stderr)
    why = "2^31" in said.getvalue()
    return Row([outcome.code, 0 if why else 1], "refused by the 2^31-element limit: exit 2",
               [outcome], [2, 0])  # fmt: skip


def kernel_png(out: Path) -> str:
    """A small motion-like kernel as an 8-bit image."""
    k = np.zeros((7, 7))
    k[3, 1:6] = 1.0
    k[2, 5] = 0.5
    path = out / "kernel.png"
    Image.fromarray((k / k.max() * 255).astype(np.uint8)).save(path)
    return str(path)


def mask_file(out: Path, width: int) -> str:
    """A lottery-prior mask over the skip net of ``width``: half of every layer's weights kept
    at random (lip.py finds real ones; this only exercises the pruned net)."""
    generator = torch.Generator().manual_seed(0)
    dense = dense_ticket(SkipNet(width=width))
    mask = {name: torch.rand(m.shape, generator=generator) < 0.5 for name, m in dense.mask.items()}
    path = out / "mask.pt"
    save_ticket(path, Ticket(mask, dense.rewind, {"kind": "random", "round": 1}))
    return str(path)


def checks(smoke: Smoke) -> dict[str, Callable[[], Row | None]]:
    """The checks by name, in the order they run (None: a GPU's check, skipped elsewhere)."""
    gpu = smoke.device.type == "cuda"
    width = {} if smoke.width is None else {"width": smoke.width}
    adam = {"method": "dip", "alg": "adam", "lr": 0.01}
    tasks = {"inpaint": {"task": "inpaint"}, "sr": {"task": "sr"},
             "deblur": {"task": "deblur", "kernel": kernel_png(smoke.out)},
             "blind-deblur": {"task": "blind-deblur", "kernel": kernel_png(smoke.out),
                              "kernel_size": 9},
             "zhuang dop": {"task": "blind-deblur", "variant": "zhuang",
                                         "method": "dop", "kernel": kernel_png(smoke.out)},
             "sr drp": {"task": "sr", "prior": "drp", "factor": 2},
             "phase": {"task": "phase-retrieval", "noise": "shot", "nlevel": 100.0,
                                 "outliers": 0.01}}  # fmt: skip
    fast, eager = {"fast": True}, {"fast": False}
    observers = {"stop": "wmv", "stop_observe": True, "ema": 0.99, "stop_window": 5,
                 "stop_patience": 5}  # fmt: skip
    mask = mask_file(smoke.out, smoke.width or 128)
    out: dict[str, Callable[[], Row | None]] = {
        "faithful": lambda: twice(smoke, "faithful"),
        "deterministic": lambda: twice(smoke, "deterministic", deterministic=True),
        "fast": lambda: against_faithful(smoke, "fast", **fast),
        "low_memory": lambda: against_faithful(smoke, "low_memory", low_memory=True),
        "fast+low_memory": lambda: against_faithful(smoke, "fast_low", **fast, low_memory=True),
        "batched fast": lambda: batched(smoke, "batch"),
        "resume sgd +fast": lambda: resumed(smoke, "sgd_to_fast", eager, fast),
        "resume sgd -fast": lambda: resumed(smoke, "sgd_from_fast", fast, eager),
        "resume adam +fast": lambda: resumed(smoke, "adam_to_fast", eager, fast, **adam),
        "resume adam -fast": lambda: resumed(smoke, "adam_from_fast", fast, eager, **adam),
        "observers": lambda: one(smoke, "observers", **observers),
        "stop sv": lambda: one(smoke, "sv", stop="sv", sv_window=4, sv_patience=4),
        "prior decoder": lambda: one(smoke, "decoder", prior="decoder", **width),
        "prior drp": lambda: one(smoke, "drp", prior="drp", **width),
        "prior lip": lambda: one(smoke, "lip", prior="lip", mask=mask, **width),
    }
    for name, settings in tasks.items():
        out[f"task {name}"] = lambda name=name, settings=settings: one(
            smoke, name.replace(" ", "_"), **settings
        )
    out["resume on the CPU"] = lambda: refused_elsewhere(smoke, "elsewhere") if gpu else None
    out["index limit"] = lambda: index_limit(smoke, "big") if gpu else None
    return out


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def run_check(name: str, check: Callable[[], Row | None], smoke: Smoke, verbose: bool
              ) -> tuple[bool, str]:  # fmt: skip
    """One check: whether it passed (or was skipped: None, a GPU's check on the CPU), and its
    row of the table; its runs' output goes to OUT/NAME.log."""
    if smoke.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(smoke.device)
    log = io.StringIO()
    start = time.perf_counter()
    quiet = contextlib.nullcontext() if verbose else contextlib.ExitStack()
    if not verbose:
        quiet.enter_context(contextlib.redirect_stdout(log))
        quiet.enter_context(contextlib.redirect_stderr(log))
    with quiet:
        try:
            row = check()
        except Exception:  # noqa: BLE001  (a failure is a row of the table, not the end)
            traceback.print_exc()
            row = Row([-1], traceback.format_exc().strip().splitlines()[-1][:120])
    seconds = time.perf_counter() - start
    (smoke.out / f"{name.replace(' ', '_')}.log").write_text(log.getvalue())
    if row is None:
        return True, f"{name:<20} {'skipped':<12} {'-':>8} {'-':>8} {'-':>8}  needs a GPU"
    status = "ok" if row.ok else f"FAILED {row.codes}"
    reports = [o.written.report for o in row.outcomes if o.written is not None]
    rate = reports[0]["iterations_per_s"] if reports else None
    peak = peak_bytes(smoke.device) / 1024**3
    rate_text = "-" if rate is None else f"{rate:.2f}"
    return row.ok, (f"{name:<20} {status:<12} {rate_text:>8} {seconds:>8.1f} {peak:>8.2f}  "
                    f"{row.note}")  # fmt: skip


def smoke_test(args: argparse.Namespace) -> int:
    device, device_name = pick_device(args.gpu)
    size, iters, width = (64, 6, 4) if args.tiny else (args.size, args.iters, None)
    show = max(1, iters // 5)
    if args.out_dir is not None:
        check_writable(args.out_dir, "--out_dir", folder=True)
    base = RunConfig(image="astronaut", crop=size, num_iter=iters, show_every=show,
                     save_every=show, gpu=args.gpu, quiet=True,
                     **({} if width is None else {"width": width}))  # fmt: skip
    if min(size, iters) < 1:
        raise InputError("--size and --iters must be >= 1")
    base.check()
    out = args.out_dir or Path(tempfile.mkdtemp(prefix="gpu_smoke_"))
    out.mkdir(parents=True, exist_ok=True)
    smoke = Smoke(dataclasses.replace(base, out_dir=str(out)), out, device, width)
    table = checks(smoke)
    if unknown := sorted(set(args.only or ()) - set(table)):
        if args.out_dir is None:
            shutil.rmtree(out, ignore_errors=True)
        raise InputError(f"--only: no check {', '.join(unknown)}; the checks are "
                         f"{', '.join(table)}")  # fmt: skip
    names = [n for n in table if args.only is None or n in args.only]
    started = time.perf_counter()
    print(f"device: {device_name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; "
          f"astronaut {size}x{size}, {iters} iterations; runs in {out}", flush=True)  # fmt: skip
    print(f"{'check':<20} {'status':<12} {'it/s':>8} {'seconds':>8} {'peak GB':>8}  note")
    failed = 0
    for name in names:
        ok, line = run_check(name, table[name], smoke, args.verbose)
        failed += not ok
        print(line, flush=True)
    print(f"{len(names) - failed} of {len(names)} checks ok in "
          f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
    if args.out_dir is None:
        shutil.rmtree(out, ignore_errors=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return guarded(lambda: smoke_test(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
