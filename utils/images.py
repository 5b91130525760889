"""Images: loading any PNG/JPEG, the paper's test images, scikit-image's bundled images, crops.

Images are float32 numpy arrays of shape (C, H, W) with values in [0, 1] (C = 1 or 3).
"""

from __future__ import annotations

import hashlib
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils import InputError
from utils.io import atomic_write

DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "denoising"
# The data beside the clone, never committed: the paper's images, Levin et al.'s set.
SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
SHARED_IMAGES = SHARED_DATA / "denoising"

# The test images of the paper (Figures 3-5) with the sha256 of the public copies.
PAPER_IMAGES = {
    "F16": "33810cc97ab8222e5bbb5fb32394d314d7d53564b008a4bf5371d0044ca45336",
    "Peppers": "d7b926dff30cdbe2760f0f72d0850aac7d9b4bf2ad83a77370cef1e1ded52f9f",
    "Baboon": "3714ba077446c372241027cc672f4c32749f95089ffbc0188398e39246e1a440",
    "kodim03": "e25ca1ff2f0c0cb5fdfd5f9b0a0bb21ac4c3de3c84a67f35b09a85d3306249db",
}
PAPER_URL = (
    "https://raw.githubusercontent.com/ChongYou/robust-image-recovery/master/data/denoising/{}.png"
)

# Images that ship inside the scikit-image wheel (no download): usable with --image NAME.
BUNDLED_IMAGES = ("astronaut", "camera", "cat", "coffee", "rocket", "coins", "moon", "text")
EMBEDDED_DEFAULT = "astronaut"


@dataclass(frozen=True)
class LoadedImage:
    pixels: np.ndarray  # float32 (C, H, W) in [0, 1]
    source: str  # what was loaded: a path, or "skimage.data.NAME"
    sha256: str | None  # of the file, when it came from one


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def to_float_chw(array: np.ndarray, what: str) -> np.ndarray:
    """uint8/uint16 (H, W[, C]) -> float32 (C, H, W) in [0, 1]; alpha is dropped, gray kept gray."""
    if array.dtype == np.uint8:
        scaled = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        scaled = array.astype(np.float32) / 65535.0
    elif array.dtype == bool:
        scaled = array.astype(np.float32)
    else:
        raise InputError(f"{what}: unsupported pixel type {array.dtype}; use an 8- or 16-bit image")
    if scaled.ndim == 2:
        scaled = scaled[..., None]
    if scaled.ndim != 3 or scaled.shape[-1] not in (1, 2, 3, 4):
        raise InputError(f"{what}: unsupported image shape {array.shape}; use a gray or RGB image")
    channels = {1: 1, 2: 1, 3: 3, 4: 3}[scaled.shape[-1]]  # gray+alpha -> gray, RGBA -> RGB
    return np.ascontiguousarray(np.moveaxis(scaled[..., :channels], -1, 0))


def load_image_file(path: Path) -> LoadedImage:
    """Read a PNG/JPEG/... file: gray, gray+alpha, RGB, RGBA or palette; 8 or 16 bits."""
    import skimage.io

    path = Path(path)
    if not path.is_file():
        raise InputError(f"no image file at {path}")
    data = path.read_bytes()
    try:
        array = skimage.io.imread(path)
    except Exception as err:  # noqa: BLE001  (imageio and Pillow raise many kinds)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"cannot read {path} as an image ({reason}); give a PNG or JPEG") from None
    if _is_16bit_colour_png(data):
        warnings.warn(f"{path}: Pillow reads 16-bit colour PNGs at 8 bits", stacklevel=2)
    return LoadedImage(to_float_chw(array, str(path)), str(path), sha256_of(data))


def _is_16bit_colour_png(data: bytes) -> bool:
    # PNG IHDR: bit depth at byte 24, colour type at byte 25 (2 = RGB, 6 = RGBA).
    return (
        data[:8] == b"\x89PNG\r\n\x1a\n"
        and len(data) > 25
        and data[24] == 16
        and data[25] in (2, 6)
    )


def fetch_paper_image(name: str, data_dir: Path, download: bool = True) -> Path:
    """Path of a paper image in ``data_dir``, downloaded once from the public code if missing.

    The file is checked against the sha256 of the public copy, before and after the download.
    """
    expected = PAPER_IMAGES[name]
    path = Path(data_dir) / f"{name}.png"
    if path.is_file():
        if sha256_of(path.read_bytes()) != expected:
            raise InputError(
                f"{path} differs from the paper's {name}.png (sha256); delete it to fetch it again"
            )
        return path
    if not download:
        raise InputError(f"{path} is missing; pass --data_dir to a folder that has {name}.png")
    url = PAPER_URL.format(name)
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            data = response.read()
    except OSError as err:
        raise InputError(
            f"could not download {name}.png from {url} ({err}); put it in {data_dir} "
            "or pass --data_dir to a folder that has it"
        ) from None
    if sha256_of(data) != expected:
        raise InputError(
            f"the download of {name}.png from {url} failed its sha256 check; try again"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(data))
    return path


def bundled_image(name: str) -> LoadedImage:
    """One of scikit-image's bundled images (they ship inside the wheel: no download)."""
    import skimage.data

    try:
        array = np.asarray(getattr(skimage.data, "chelsea" if name == "cat" else name)())
    except Exception as err:  # noqa: BLE001  (skimage raises various errors when data is absent)
        raise InputError(f"scikit-image could not load its image '{name}' ({err})") from None
    return LoadedImage(to_float_chw(array, f"skimage.data.{name}"), f"skimage.data.{name}", None)


def resolve_image(
    spec: str, data_dir: Path = DEFAULT_DATA_DIR, download: bool = True
) -> LoadedImage:
    """``spec`` is a path to an image file, a paper image name, or a bundled scikit-image name."""
    path = Path(spec).expanduser()
    if path.suffix and (path.exists() or spec not in PAPER_IMAGES):
        return load_image_file(path)
    if spec in PAPER_IMAGES:
        return load_image_file(fetch_paper_image(spec, data_dir, download))
    if spec in BUNDLED_IMAGES:
        return bundled_image(spec)
    if path.exists():
        return load_image_file(path)
    raise InputError(
        f"no image file or known image named '{spec}': give a path, a paper image "
        f"({', '.join(PAPER_IMAGES)}) or a scikit-image image ({', '.join(BUNDLED_IMAGES)})"
    )


def check_image_names(names: list[str], flag: str) -> None:
    """InputError naming those of ``names`` that are neither a paper image, a scikit-image image
    nor an image file (nothing is read or downloaded): before a command runs one of them."""
    known = (*PAPER_IMAGES, *BUNDLED_IMAGES)
    unknown = [name for name in names if name not in known and not Path(name).is_file()]
    if unknown or not names:
        raise InputError(
            f"{flag}: no image file or known image named {', '.join(map(repr, unknown))}; give "
            f"paths, paper images ({', '.join(PAPER_IMAGES)}) or scikit-image images "
            f"({', '.join(BUNDLED_IMAGES)})"
        )


def centre_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The central height x width window of an image (..., H, W): a numpy array or a tensor."""
    top, left = (image.shape[-2] - height) // 2, (image.shape[-1] - width) // 2
    return image[..., top : top + height, left : left + width]


def crop_to_multiple(image: np.ndarray, d: int = 32) -> np.ndarray:
    """Centre crop so that both sides divide by ``d`` (the public code's ``crop_image``)."""
    return centre_crop(
        image, image.shape[1] - image.shape[1] % d, image.shape[2] - image.shape[2] % d
    )
