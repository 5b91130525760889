import hashlib
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from utils import InputError
from utils.images import (
    PAPER_IMAGES,
    centre_crop,
    crop_to_multiple,
    fetch_paper_image,
    load_image_file,
    resolve_image,
)


@pytest.fixture
def rgb(rng) -> np.ndarray:
    return (rng.random((21, 30, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize("mode,channels", [("RGB", 3), ("RGBA", 3), ("L", 1), ("LA", 1), ("P", 3)])
def test_modes_load_as_float_chw(tmp_path: Path, rgb: np.ndarray, mode: str, channels: int) -> None:
    path = tmp_path / f"x_{mode}.png"
    Image.fromarray(rgb).convert(mode).save(path)
    pixels = load_image_file(path).pixels
    assert pixels.shape == (channels, 21, 30) and pixels.dtype == np.float32
    assert pixels.min() >= 0 and pixels.max() <= 1
    if mode in ("RGB", "RGBA"):  # alpha dropped, colour exact
        np.testing.assert_allclose(pixels, np.moveaxis(rgb, -1, 0) / 255, atol=1e-6)


def test_sixteen_bit_gray_keeps_its_precision(tmp_path: Path, rng) -> None:
    raw = (rng.random((20, 24)) * 65535).astype(np.uint16)
    Image.fromarray(raw).save(tmp_path / "g16.png")
    pixels = load_image_file(tmp_path / "g16.png").pixels
    np.testing.assert_allclose(pixels[0], raw / 65535, atol=1e-7)


def test_jpeg(tmp_path: Path, rgb: np.ndarray) -> None:
    Image.fromarray(rgb).save(tmp_path / "x.jpg")
    assert resolve_image(str(tmp_path / "x.jpg")).pixels.shape == (3, 21, 30)


@pytest.mark.parametrize("content", [b"not an image", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_unreadable_file_is_an_input_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "bad.png").write_bytes(content)
    with pytest.raises(InputError, match="cannot read"):
        load_image_file(tmp_path / "bad.png")


def test_missing_file_and_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no image file"):
        resolve_image(str(tmp_path / "nope.png"))
    with pytest.raises(InputError, match="known image"):
        resolve_image("Lenna_of_nowhere")


@pytest.fixture
def paper_copy(tmp_path: Path, rgb: np.ndarray, monkeypatch) -> bytes:
    """A stand-in for a paper image (the real ones are not committed): its bytes become the
    published copy of 'Baboon', sha256 and all."""
    path = tmp_path / "published.png"
    Image.fromarray(rgb).save(path)
    data = path.read_bytes()
    monkeypatch.setitem(PAPER_IMAGES, "Baboon", hashlib.sha256(data).hexdigest())
    return data


def test_paper_image_from_data_dir_is_sha_checked(paper_copy: bytes, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "Baboon.png").write_bytes(paper_copy)
    image = resolve_image("Baboon", tmp_path / "d", download=False)
    assert image.pixels.shape == (3, 21, 30)
    assert image.sha256 == PAPER_IMAGES["Baboon"]
    with (tmp_path / "d" / "Baboon.png").open("ab") as f:
        f.write(b"tampered")
    with pytest.raises(InputError, match="sha256"):
        fetch_paper_image("Baboon", tmp_path / "d")


def test_fetch_downloads_once_and_checks(paper_copy: bytes, tmp_path: Path, monkeypatch) -> None:
    calls = []

    class Response:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def read(self) -> bytes:
            return self.data

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

    monkeypatch.setattr(
        urllib.request, "urlopen", lambda url, timeout: calls.append(url) or Response(paper_copy)
    )
    path = fetch_paper_image("Baboon", tmp_path / "d")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == PAPER_IMAGES["Baboon"]
    fetch_paper_image("Baboon", tmp_path / "d")
    assert len(calls) == 1 and calls[0].endswith("/data/denoising/Baboon.png")

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Response(b"corrupt"))
    with pytest.raises(InputError, match="sha256"):
        fetch_paper_image("Peppers", tmp_path / "d")
    assert not (tmp_path / "d" / "Peppers.png").exists()


def test_offline_fetch_is_an_input_error(tmp_path: Path, monkeypatch) -> None:
    def offline(url, timeout):
        raise OSError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(InputError, match="could not download"):
        resolve_image("kodim03", tmp_path)


def test_bundled_scikit_image_needs_no_download() -> None:
    assert resolve_image("astronaut").pixels.shape == (3, 512, 512)
    assert resolve_image("camera").pixels.shape == (1, 512, 512)


def test_crops(rng) -> None:
    image = rng.random((3, 100, 77)).astype(np.float32)
    cropped = crop_to_multiple(image, 32)
    assert cropped.shape == (3, 96, 64)
    np.testing.assert_array_equal(cropped, image[:, 2:98, 6:70])  # centred, like the public code
    assert centre_crop(image, 10, 11).shape == (3, 10, 11)
