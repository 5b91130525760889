"""One home for a run's folder: its file names, what is written there, how it is read back, and
whether a run may be started, resumed or must be refused.

A run named CKPT writes ``OUT_DIR/CKPT_<name>`` for every name in ``FILES``, each atomically. Its
``config.json`` holds ``{"format", "settings", "data", "report"}``: the RunConfig fields, the
identity of the data (files, sha256, shape), and the outcome. ``state.pt`` holds the same
settings and data with the resumable state of the loop.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from utils import InputError
from utils.io import save_csv, save_json, save_npz, save_png, save_torch

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
    "state": "state.pt",  # the resumable state
}


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

    def save_noise(self, **arrays: np.ndarray) -> None:
        save_npz(self.path("noise"), **arrays)

    def save_kernels(self, **arrays: np.ndarray) -> None:
        save_npz(self.path("kernels"), **arrays)

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
        except Exception as err:  # noqa: BLE001  (a corrupt or foreign file)
            raise InputError(f"--resume: cannot read {path} ({err})") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise InputError(f"--resume: {path} was written by an earlier version of this code; "
                             "start the run again with --overwrite")  # fmt: skip
        return state

    # --- starting
    def claim(self, settings: dict, data: dict, num_iter: int, resume: bool,
              overwrite: bool) -> dict | None:  # fmt: skip
        """Make the folder ready for a run with these defining settings and data: with
        ``overwrite`` remove every file of an earlier run; with ``resume`` return its state after
        checking it is the same run; otherwise refuse to touch an existing run."""
        existing = self.existing()
        if overwrite:  # all of them, so no file of the old run survives beside the new one
            for path in existing:
                path.unlink()
            return None
        if not resume:
            if existing:
                raise InputError(f"{existing[0]} exists: pass --resume to continue that run, "
                                 "--overwrite to replace it, or choose another --ckpt")  # fmt: skip
            return None
        if not self.path("state").exists():
            raise InputError(f"--resume: no checkpoint {self.path('state')}; start the run "
                             "without --resume")  # fmt: skip
        state = self.state()
        for saved, wanted in ((state["settings"], settings), (state["data"], data)):
            check_same(
                self.path("state"),
                saved,
                wanted,
                "--resume needs the same; use it or another --ckpt",
            )
        if state["iteration"] > num_iter:
            raise InputError(f"--resume: the run is already at iteration {state['iteration']}")
        return state


def check_same(path: Path, saved: dict, wanted: dict, advice: str) -> None:
    """InputError naming the first entry of ``wanted`` that ``saved`` (read from ``path``)
    has with another value."""
    for key, value in wanted.items():
        if saved.get(key) != value:
            raise InputError(
                f"{path} was made with {key}={saved.get(key)!r}, not {value!r}; {advice}"
            )
