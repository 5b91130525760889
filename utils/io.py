"""Atomic file output: a reader (or a killed run) never sees a half-written file. And the checks
every entry point makes of where it will write, before it computes anything."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image

from utils import InputError

# What atomic_write adds to a file's name for its temporary: "." + name + ".XXXXXXXX.tmp".
TEMPORARY_EXTRA = len(".") + len(".XXXXXXXX.tmp")


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write`` on a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_png(path: Path, image: np.ndarray) -> None:
    """Save a (C, H, W) float image (C = 1 or 3) as an 8-bit PNG, values clipped to [0, 1]."""
    hwc = np.clip(np.moveaxis(np.asarray(image, dtype=np.float64), 0, -1), 0.0, 1.0)
    pixels = np.round(hwc * 255).astype(np.uint8)
    img = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    atomic_write(path, lambda f: img.save(f, format="PNG"))


def save_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def save_text(path: Path, text: str) -> None:
    """``text`` and a final newline, UTF-8, written atomically."""
    atomic_write(path, lambda f: f.write((text + "\n").encode()))


def save_csv(path: Path, header: list[str], rows: Iterable[Iterable[Any]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def save_torch(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def check_writable(path: Path | str, flag: str, folder: bool = False) -> None:
    """InputError (one line naming ``flag``) unless ``path`` can be written: a folder
    (``folder``) or a file, that is there or can be made. The nearest part of it that exists
    must be a folder (not a file) this process may write in, no part of its name may exceed the
    file system's limit (with atomic writes' temporary names), and a file must not be a folder."""
    path = Path(path)
    parent = path if folder else path.parent
    existing = next(p for p in (parent, *parent.parents, Path(".")) if found(p, flag))
    limit = name_limit(existing)
    for part in path.parts:
        extra = TEMPORARY_EXTRA if part == path.name and not folder else 0
        if len(part.encode()) + extra > limit:
            raise InputError(f"{flag} {path}: a name of {len(part)} characters; the file system "
                             f"takes at most {limit - extra}")  # fmt: skip
    if not existing.is_dir():
        where = "is a file" if existing == path else f"is below {existing}, a file"
        raise InputError(f"{flag} {path} {where}; give a folder")
    if not folder and path.is_dir():
        raise InputError(f"{flag} {path} is a folder; give a file name")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: {existing} is not writable here")


def found(path: Path, flag: str) -> bool:
    """Whether ``path`` exists; InputError for a path the system cannot look up (too long)."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as err:
        raise InputError(f"{flag} {str(path)[:60]}...: {err.strerror}") from None
    return True


def name_limit(folder: Path) -> int:
    """The longest file name (bytes) the file system of ``folder`` (which exists) takes."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255
