"""Decode images of any mode safely into RGB, for training and for the search service.

Every image the project touches goes through `load_image`, so both sides see the same pixels:
EXIF orientation applied, palette/alpha/grayscale/CMYK/16-bit converted to 8-bit RGB, and
decompression bombs refused before their pixels are decoded.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps

# Larger than any photo a camera makes (about 8k x 8k); PIL's own default warns at 89 MP only.
MAX_IMAGE_PIXELS = 64_000_000
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ImageError(ValueError):
    """An image that cannot be used: missing, undecodable, or too large."""


def load_image(
    source: str | os.PathLike | bytes | BinaryIO, max_pixels: int = MAX_IMAGE_PIXELS
) -> Image.Image:
    """Open, check and fully decode an image into 8-bit RGB.

    `source` is a path, raw bytes, or a binary file object. Raises `ImageError` with a
    message that names the problem. `max_pixels` can lower the size limit; PIL's own bomb
    check (about 179 MP) still applies above it.
    """
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "<bytes>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(source)
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(
                    f"{name}: {width}x{height} pixels is more than the limit of {max_pixels} "
                    f"(refused as a possible decompression bomb)"
                )
            img.load()
            return to_rgb(img)
    except ImageError:
        raise
    except FileNotFoundError as e:
        raise ImageError(f"{name}: file not found") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{name}: refused as a possible decompression bomb ({e})") from e
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        raise ImageError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from e


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB with EXIF orientation applied; transparency is composited onto white."""
    img = ImageOps.exif_transpose(img)
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def is_image_path(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def has_image(doc: Any) -> bool:
    """Whether a document (any docarray document with image fields) carries an image: a
    `tensor`, bytes in `blob`, or a non-empty `uri`. Such a document is embedded as an image;
    its `text`, if any, is a stored caption."""
    return (
        getattr(doc, "blob", None) is not None
        or getattr(doc, "tensor", None) is not None
        or bool(getattr(doc, "uri", None))
    )
