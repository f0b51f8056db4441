"""imagepairs.images.load_image: every image mode to 8-bit RGB, EXIF rotation, and refusals."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagepairs.images import MAX_IMAGE_PIXELS, ImageError, is_image_path, load_image

WHITE, RED = (255, 255, 255), (255, 0, 0)


def saved(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height 1-bit pixels (its data is not all there)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00"))
        + chunk(b"IEND", b"")
    )


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (4, 2), (255, 0, 0, 255))
    img.putpixel((0, 0), (0, 0, 255, 0))  # fully transparent blue shows as white
    out = load_image(saved(img, tmp_path / "rgba.png"))
    assert out.mode == "RGB" and out.size == (4, 2)
    assert out.getpixel((0, 0)) == WHITE
    assert out.getpixel((1, 0)) == RED


def test_palette_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (3, 3), 1)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    img.putpixel((1, 1), 0)
    img.info["transparency"] = 0  # palette index 0 (black) is transparent
    path = saved(img, tmp_path / "pal.png", transparency=0)
    assert Image.open(path).mode == "P"
    out = load_image(path)
    assert out.mode == "RGB"
    assert out.getpixel((1, 1)) == WHITE
    assert out.getpixel((0, 0)) == RED


def test_palette_gif_without_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (2, 2), 0)
    img.putpalette([10, 20, 30] + [0] * 765)
    out = load_image(saved(img, tmp_path / "p.gif"))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (10, 20, 30)


def test_grayscale_l(tmp_path: Path) -> None:
    out = load_image(saved(Image.new("L", (5, 4), 77), tmp_path / "l.png"))
    assert out.mode == "RGB" and out.size == (5, 4)
    assert out.getpixel((2, 2)) == (77, 77, 77)


def test_grayscale_with_alpha(tmp_path: Path) -> None:
    out = load_image(saved(Image.new("LA", (2, 2), (0, 0)), tmp_path / "la.png"))
    assert out.getpixel((0, 0)) == WHITE


def test_one_bit(tmp_path: Path) -> None:
    img = Image.new("1", (4, 4), 0)
    img.putpixel((3, 3), 1)
    out = load_image(saved(img, tmp_path / "bw.png"))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (0, 0, 0) and out.getpixel((3, 3)) == WHITE


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = saved(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / "cmyk.jpg")
    assert Image.open(path).mode == "CMYK"
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (8, 8)
    assert np.allclose(out.getpixel((4, 4)), RED, atol=8)


def test_sixteen_bit_png(tmp_path: Path) -> None:
    values = np.array([[0, 32768], [65535, 1000]], dtype=np.uint16)
    path = saved(Image.frombytes("I;16", (2, 2), values.tobytes()), tmp_path / "i16.png")
    assert Image.open(path).mode.startswith("I")
    out = np.asarray(load_image(path))
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    # Scaled from the 16-bit range, not clipped at 255.
    assert out[0, 0].tolist() == [0, 0, 0]
    assert out[1, 0].tolist() == [255, 255, 255]
    assert 126 <= out[0, 1, 0] <= 128
    assert out[1, 1, 0] == 3


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), RED)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = saved(img, tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert Image.open(path).size == (40, 20)
    assert load_image(path).size == (20, 40)


def test_bytes_and_file_object_match_path(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (16, 12, 3), dtype=np.uint8))
    path = saved(img, tmp_path / "x.png")
    from_path = np.asarray(load_image(path))
    assert np.array_equal(np.asarray(load_image(path.read_bytes())), from_path)
    assert np.array_equal(np.asarray(load_image(io.BytesIO(path.read_bytes()))), from_path)
    assert np.array_equal(np.asarray(load_image(str(path))), from_path)


def test_max_pixels_refuses_before_decoding(tmp_path: Path) -> None:
    path = saved(Image.new("1", (300, 300)), tmp_path / "big.png")
    with pytest.raises(ImageError, match="300x300 pixels is more than the limit of 10000") as e:
        load_image(path, max_pixels=10_000)
    assert "big.png" in str(e.value)
    assert load_image(path).size == (300, 300)  # under the default limit


def test_image_over_default_limit_is_refused(tmp_path: Path) -> None:
    # 100 megapixels of 1-bit blank compresses to a few kB: cheap to make, costly to decode.
    path = saved(Image.new("1", (10_000, 10_000)), tmp_path / "bomb.png")
    assert 10_000 * 10_000 > MAX_IMAGE_PIXELS
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(path)


@pytest.mark.parametrize("size", [(9_000, 9_000), (20_000, 20_000), (1 << 20, 1 << 20)])
def test_forged_header_is_refused(size: tuple[int, int]) -> None:
    # Sizes over our limit, over PIL's warning (89 MP) and over PIL's hard error (179 MP).
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(png_claiming(*size))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_file_names_the_file(tmp_path: Path, fmt: str, keep: float) -> None:
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, fmt)
    raw = buf.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(ImageError) as e:
        load_image(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"", "cannot decode"), (b"not an image at all", "cannot decode"), (None, "file not found")],
)
def test_unreadable_sources(tmp_path: Path, content: bytes | None, match: str) -> None:
    path = tmp_path / "x.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageError, match=match) as e:
        load_image(path)
    assert str(path) in str(e.value)


def test_bytes_errors_say_bytes() -> None:
    with pytest.raises(ImageError, match="<bytes>"):
        load_image(b"\x00" * 32)


def test_is_image_path() -> None:
    assert is_image_path("a/b.JPG") and is_image_path("x.webp") and is_image_path("y.tiff")
    assert not is_image_path("notes.txt") and not is_image_path("jpg")
