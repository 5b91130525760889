"""One home for a run's folder: its file names, what is written there, how it is read back, and
whether a run may be started, resumed or must be refused.

A run named CKPT writes ``OUT_DIR/CKPT_<name>`` for every name in ``FILES``, each atomically. Its
``config.json`` holds ``{"format", "settings", "data", "report"}``: the RunConfig fields, the
identity of the data (files, sha256, shape), and the outcome. ``state.pt`` holds the same
settings and data with the resumable state of the loop.

Before a run looks at its folder it takes ``OUT_DIR/CKPT.lock`` (``RunLock``): an exclusive
``flock`` that the operating system releases when the process ends, however it ends, so two
processes never write one run and a killed run leaves nothing to clean up. ``claim`` then decides,
by a policy, whether the run starts, resumes, is reused or is refused (``POLICIES``).
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from utils import InputError
from utils.io import save_csv, save_json, save_npz, save_png, save_torch
from utils.state import generator_device

FORMAT = 3  # of config.json and state.pt; 2: one RunConfig, derived seed streams; 3: noise types,
# stopping rules (2026-11-25)
FILES = {
    "last": "last.png",  # the last iterate of the prior's output x
    "noisy": "noisy.png",  # the observation y
    "clean": "clean.png",  # the reference, when there is one
    "sparse": "sparse.png",  # DOP's g⊙g − h⊙h, shown as 0.5 + s/2
    "stopped": "stopped.png",  # x at the iteration the stopping rule (--stop) detected
    "ema": "ema.png",  # the output's moving average (--ema) at the last iterate
    "history": "history.csv",  # the logged rows
    "config": "config.json",  # settings, data and report
    "noise": "noise.npz",  # the synthetic corruption: noisy, salt, pepper
    "pixel_mask": "pixel_mask.png",  # inpainting: the observed pixels (white)
    "kernel": "kernel.png",  # deblurring: the known (or true) kernel, scaled to its maximum
    "estimated_kernel": "estimated_kernel.png",  # blind deblurring: the estimate, likewise
    "kernels": "kernels.npz",  # blind deblurring: the estimated (and true) kernels' values
    "support": "support.png",  # phase retrieval: the object's box in the canvas (white)
    "phase": "phase.png",  # phase retrieval: the object's true phase, 0.5 + φ / (2 max |φ|)
    "state": "state.pt",  # the resumable state
}
# What ``claim`` does with an earlier run of the same name: "new" refuses it (the command line
# without --resume or --overwrite), "resume" continues it (the same settings and data), "overwrite"
# removes its files, "auto" reuses it when it has ended, resumes it when it has a checkpoint and
# starts over what a run killed before its first checkpoint left (the drivers' mode).
POLICIES = ("new", "resume", "overwrite", "auto")


@dataclass(frozen=True)
class RunDir:
    out_dir: Path
    ckpt: str

    def path(self, name: str) -> Path:
        return Path(self.out_dir) / f"{self.ckpt}_{FILES[name]}"

    @property
    def log(self) -> Path:
        """Where reproduce.py sends a subprocess's output, or (--launcher slurm) a link to its
        job's log (not a run file: never removed)."""
        return Path(self.out_dir) / f"{self.ckpt}.log"

    def existing(self) -> list[Path]:
        return [path for name in FILES if (path := self.path(name)).exists()]

    # --- writing
    def save_image(self, name: str, image: np.ndarray) -> None:
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        save_png(self.path(name), image)

    def save_arrays(self, name: str, **arrays: np.ndarray) -> None:
        """An .npz file of FILES (noise, kernels)."""
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        save_npz(self.path(name), **arrays)

    def save_history(self, rows: list[dict[str, float]]) -> None:
        columns = list(rows[0]) if rows else ["iteration", "loss"]
        save_csv(self.path("history"), columns, ([row[c] for c in columns] for row in rows))

    def save_config(self, settings: dict, data: dict, report: dict) -> None:
        record = {"format": FORMAT, "settings": settings, "data": data, "report": report}
        save_json(self.path("config"), record)

    def save_state(self, settings: dict, data: dict, state: dict) -> None:
        save_torch(self.path("state"), {"format": FORMAT, "settings": settings, "data": data,
                                        **state})  # fmt: skip

    # --- reading
    def config(self) -> dict | None:
        """config.json, or None when the run has not written one (it has not ended)."""
        path = self.path("config")
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        if record.get("format") != FORMAT:
            raise InputError(f"{path} was written by an earlier version of this code; delete "
                             "the run's files or choose another --out_dir")  # fmt: skip
        return record

    def date(self) -> str:
        """The UTC day the run ended (its config.json was written), as YYYY-MM-DD."""
        return time.strftime("%Y-%m-%d", time.gmtime(self.path("config").stat().st_mtime))

    def history(self) -> dict[str, np.ndarray]:
        """The history's columns by name (iteration, loss, then observers' and metrics')."""
        with self.path("history").open() as f:
            rows = list(csv.DictReader(f))
        names = rows[0].keys() if rows else ["iteration", "loss"]
        return {name: np.array([float(row[name]) for row in rows]) for name in names}

    def image(self, name: str) -> np.ndarray:
        """A saved 8-bit PNG as float (H, W[, 3]) in [0, 1]."""
        with Image.open(self.path(name)) as img:
            return np.asarray(img, dtype=np.float64) / 255.0

    def state(self) -> dict:
        path = self.path("state")
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # noqa: BLE001  (a damaged or foreign file: its reader's
            # message, hundreds of characters of zip or pickle internals, is left out)
            raise InputError(f"the checkpoint {path} cannot be read ({type(err).__name__}: "
                             "damaged, or not a checkpoint); start the run again with "
                             "--overwrite") from None  # fmt: skip
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise InputError(f"--resume: {path} was written by an earlier version of this code; "
                             "start the run again with --overwrite")  # fmt: skip
        return state

    # --- starting
    def claim(self, settings: dict, data: dict, num_iter: int, policy: str,
              device_type: str | None = None) -> tuple[str, dict | None]:  # fmt: skip
        """What to do with this run, by ``policy`` (``POLICIES``), given its defining settings
        and data: ("start", None) with the folder cleared of an earlier run's files where the
        policy allows it, ("resume", state), or ("reuse", None) for an ended run (auto only).
        InputError when the policy refuses, or the folder holds this name with other settings,
        or a checkpoint whose random stream cannot continue on ``device_type`` (``resumable``).
        Call it holding the run's lock."""
        existing = self.existing()
        if policy == "new" and existing:
            raise InputError(f"{existing[0]} exists: pass --resume to continue that run, "
                             "--overwrite to replace it, or choose another --ckpt")  # fmt: skip
        if policy == "auto" and self.ended(settings, data, num_iter):
            return "reuse", None
        if (policy == "resume" and not self.path("state").is_file()
                and self.ended(settings, data, num_iter)):  # fmt: skip
            return "reuse", None  # ended, its last state not kept (not finite): outputs kept
        if policy == "resume" or (policy == "auto" and self.path("state").is_file()):
            return "resume", self.resumable(settings, data, num_iter, device_type)
        for path in existing:  # "overwrite", or "auto" over a run killed before its checkpoint
            path.unlink()
        return "start", None

    def ended(self, settings: dict, data: dict | None, num_iter: int) -> bool:
        """Whether the run has ended (finished at ``num_iter``, stopped by its rule, or diverged)
        with these settings and (when given) data; InputError when the folder holds a run of
        this name made otherwise."""
        if (record := self.config()) is None:
            return False
        advice = "delete the run's files or choose another folder"
        check_same(self.path("config"), record["settings"], settings, advice)
        if data is not None:
            check_same(self.path("config"), comparable(record["data"]), comparable(data), advice)
        report = record["report"]
        return report["status"] in ("diverged", "stopped") or report["iterations_done"] == num_iter

    def resumable(self, settings: dict, data: dict, num_iter: int,
                  device_type: str | None = None) -> dict:  # fmt: skip
        """The checkpoint, checked to be of the same run (settings and data), not past
        ``num_iter``, and (given ``device_type``, "cpu" or "cuda") with an η stream that can go
        on there: a generator's state restores only on its own device type, so a run goes on
        where its stream was drawn (any GPU for a GPU's run; a GPU of another model draws other
        numbers from the same state, which changes no statistic but the exact history)."""
        if not self.path("state").exists():
            if (record := self.config()) is not None:  # it ended, its last state not finite
                report = record["report"]
                raise InputError(f"--resume: the run {self.ckpt} ended ({report['status']} at "
                                 f"iteration {report['iterations_done']}) with no checkpoint to "
                                 "go on from; start it again with --overwrite")  # fmt: skip
            again = "again with --overwrite" if self.existing() else "without --resume"
            raise InputError(f"--resume: no checkpoint {self.path('state')}; start the run "
                             f"{again}")  # fmt: skip
        state = self.state()
        advice = "--resume needs the same; use it or another --ckpt"
        check_same(self.path("state"), state["settings"], settings, advice)
        check_same(self.path("state"), comparable(state["data"]), comparable(data), advice)
        if state["iteration"] > num_iter:
            raise InputError(f"--resume: the run is already at iteration {state['iteration']}")
        drawn = generator_device(state)
        if device_type is not None and drawn != device_type:
            where = "on a GPU (--gpu N)" if drawn == "cuda" else "with --gpu cpu"
            raise InputError(
                f"--resume: {self.path('state')} drew its input perturbation on a {drawn} "
                f"device, whose random stream cannot go on on {device_type}; resume it {where}, "
                "or start it again with --overwrite"
            )  # fmt: skip
        return state

    def lock(self, wait: float = 0.0) -> RunLock:
        """The run's lock, taken (waiting up to ``wait`` seconds for another holder)."""
        return RunLock(Path(self.out_dir) / f"{self.ckpt}.lock", self.ckpt, wait)


class RunLock:
    """An exclusive claim on a run: ``fcntl.flock`` on ``OUT_DIR/CKPT.lock``, a file that names
    the holder (process id, start time) and exists while the run is held. The lock goes with
    the process: a run killed in any way (kill -9 included) releases it, and the next run of
    the name takes it over. The holder removes the file before it lets go, so a waiter that got
    the lock of a removed file sees that the file at the path is not the one it locked and
    tries again."""

    def __init__(self, path: Path, name: str, wait: float = 0.0) -> None:
        self.path = path
        deadline = time.monotonic() + wait
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").split()
                os.close(fd)
                if time.monotonic() >= deadline:
                    pid, since = (holder + ["?", "?"])[:2]
                    raise InputError(f"{name} is being written by process {pid} since {since} "
                                     f"({path}); wait for it to end, or choose another --ckpt"
                                     ) from None  # fmt: skip
                time.sleep(0.1)
                continue
            if same_file(fd, path):  # not a file its holder removed while this one waited
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode(), 0)
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # while holding it (see the class's docstring)
            os.close(self.fd)  # closing the last descriptor releases the flock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def comparable(identity: dict) -> dict:
    """A data identity as runs are compared: a file by its content (sha256), not its path, so
    that a moved folder's runs are the same runs."""
    return {key: value for key, value in identity.items()
            if identity.get(f"{key}_sha256") is None}  # fmt: skip


def check_same(path: Path, saved: dict, wanted: dict, advice: str) -> None:
    """InputError naming the first entry of ``wanted`` that ``saved`` (read from ``path``)
    has with another value."""
    for key, value in wanted.items():
        if saved.get(key) != value:
            raise InputError(
                f"{path} was made with {key}={saved.get(key)!r}, not {value!r}; {advice}"
            )
