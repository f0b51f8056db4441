"""Turning a document into an RGB image safely: `ImagePolicy`.

Images come from `blob` bytes, an HxWxC uint8 `tensor`, or a `uri`: `data:` URIs always, local
files only under `allowed_roots` (symlinks and `..` resolved first, so nothing escapes them),
http(s) only with `allow_remote=True` (no server-side request forgery by default); size limits
on bytes and pixels. Every refusal is an `ImageError` whose message says what to change.

All decoding goes through `imagepairs.images.load_image`, the function training uses, so the
service sees the same pixels the model was trained on.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import os
import re
import stat
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit
from urllib.request import url2pathname

import numpy as np
import requests
from PIL import Image

from imagepairs.images import MAX_IMAGE_PIXELS, ImageError, load_image, to_rgb
from search.limits import pixel_budget_error

# An image file or blob larger than this is refused before it is decoded.
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
REMOTE_TIMEOUT_S = 10.0
_BYTESIO_REPR = re.compile(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def path_list(value: str | os.PathLike | Sequence[str | os.PathLike] | None) -> list[str]:
    """A list of folders from a list, or from one string separated by `os.pathsep` or commas
    (the form an environment variable such as IMAGE_ROOTS=/data/a:/data/b takes)."""
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        parts = re.split(rf"[{re.escape(os.pathsep)},]", os.fspath(value))
    else:
        parts = [os.fspath(v) for v in value]
    return [p.strip() for p in parts if p and p.strip()]


@dataclass
class PixelBudget:
    """The decoded pixels one request may still spend (see `search.limits.MAX_REQUEST_PIXELS`)."""

    left: int

    def take(self, pixels: int) -> None:
        """Spend `pixels`, or raise `ImageError` (and spend nothing) when they do not fit."""
        if pixels > self.left:
            raise ImageError(pixel_budget_error(pixels, self.left))
        self.left -= pixels


@dataclass(frozen=True)
class ImagePolicy:
    """Where images may come from and how large they may be."""

    allowed_roots: tuple[str, ...] = ()
    allow_remote: bool = False
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = MAX_IMAGE_PIXELS
    timeout: float = REMOTE_TIMEOUT_S

    @classmethod
    def create(
        cls,
        allowed_roots: str | Sequence[str | os.PathLike] | None = None,
        allow_remote: bool = False,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_pixels: int = MAX_IMAGE_PIXELS,
        timeout: float = REMOTE_TIMEOUT_S,
    ) -> ImagePolicy:
        # Roots are compared in their resolved form, so that a root that is itself a symlink
        # still matches the resolved paths of the files inside it.
        roots = tuple(dict.fromkeys(os.path.realpath(p) for p in path_list(allowed_roots)))
        return cls(roots, bool(allow_remote), int(max_bytes), int(max_pixels), float(timeout))

    def load(self, doc: Any, budget: PixelBudget | None = None) -> Image.Image:
        """The document's image as RGB: `blob` first, then `tensor`, then `uri`. With a
        `budget`, its pixels are taken from it before the image is decoded."""
        if doc.blob is not None:
            blob = bytes(doc.blob)
            # JSON (the HTTP gateway) has no bytes: there `blob` is sent as a data: URI string.
            # No image format starts with these five bytes, so raw bytes are never mistaken.
            if blob[:5].lower() == b"data:":
                uri = blob.decode("ascii", errors="replace")
                data = self._data_uri_bytes(uri, "image blob")
                return self.decode(data, "image blob", budget)
            return self.decode(blob, "image blob", budget)
        if doc.tensor is not None:
            return self.from_tensor(doc.tensor, budget)
        if doc.uri:
            return self.from_uri(doc.uri, budget)
        raise ImageError("document has no image (blob, tensor or uri)")

    def decode(self, data: bytes, what: str, budget: PixelBudget | None = None) -> Image.Image:
        if len(data) > self.max_bytes:
            raise ImageError(f"{what}: {len(data)} bytes is more than max_bytes={self.max_bytes}")
        pixels = _header_pixels(data)
        if budget is not None and pixels <= self.max_pixels:  # bigger ones are refused below
            budget.take(pixels)
        try:
            return load_image(bytes(data), max_pixels=self.max_pixels)
        except ImageError as e:
            # PIL names the in-memory file object (`<_io.BytesIO object at 0x...>`): noise here
            reason = _BYTESIO_REPR.sub("", str(e).removeprefix("<bytes>: "))
            raise ImageError(f"{what}: {reason}") from None

    def from_tensor(self, tensor: Any, budget: PixelBudget | None = None) -> Image.Image:
        arr = np.asarray(tensor)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
            raise ImageError(
                f"image tensor must be HxWxC with C in 1, 3, 4 (or HxW), got shape {arr.shape}"
            )
        if arr.shape[0] * arr.shape[1] > self.max_pixels:
            raise ImageError(
                f"image tensor: {arr.shape[1]}x{arr.shape[0]} pixels is more than "
                f"max_pixels={self.max_pixels}"
            )
        if budget is not None:
            budget.take(arr.shape[0] * arr.shape[1])
        if arr.dtype != np.uint8:
            # JSON (HTTP) carries numbers without a dtype: accept integers that fit in a byte.
            if arr.dtype.kind not in "iu" or arr.size and (arr.min() < 0 or arr.max() > 255):
                raise ImageError(f"image tensor must hold uint8 values 0..255, got {arr.dtype}")
            arr = arr.astype(np.uint8)
        return to_rgb(Image.fromarray(np.ascontiguousarray(arr)))

    def from_uri(self, uri: str, budget: PixelBudget | None = None) -> Image.Image:
        scheme = urlsplit(uri).scheme.lower()
        shown = uri if len(uri) <= 80 else uri[:77] + "..."
        if scheme == "data":
            return self.decode(self._data_uri_bytes(uri, shown), shown, budget)
        if scheme in ("http", "https"):
            if not self.allow_remote:
                raise ImageError(
                    f"{shown}: remote image URLs are refused (allow_remote is off); send the "
                    f"image bytes as `blob` or a data: URI instead"
                )
            return self.decode(self._fetch(uri, shown), shown, budget)
        if scheme == "file":
            path = url2pathname(urlsplit(uri).path)
        elif scheme and len(scheme) > 1:
            raise ImageError(f"{shown}: unsupported URI scheme {scheme!r}")
        else:
            path = uri
        return self.decode(self._read_local(path), shown, budget)

    def resolve_local(self, path: str) -> str:
        """The real path of a local image file, if it lies under one of the allowed roots."""
        if not self.allowed_roots:
            raise ImageError(
                f"{path}: reading local image files is refused: no allowed_roots are set "
                f"(set the image encoder's allowed_roots, IMAGE_ROOTS in flow.yml, to the folders "
                f"images may be read from, or send the image bytes as `blob`)"
            )
        # A relative path is looked up under each root in turn; realpath resolves `..` and
        # symlinks, so the check below sees where the file really is.
        candidates = (
            [path] if os.path.isabs(path) else [os.path.join(r, path) for r in self.allowed_roots]
        )
        inside = [
            real
            for real in (os.path.realpath(c) for c in candidates)
            if any(_is_within(real, root) for root in self.allowed_roots)
        ]
        if not inside:
            raise ImageError(
                f"{path}: outside the allowed image roots ({', '.join(self.allowed_roots)}); "
                f"symlinks and '..' are resolved before this check"
            )
        return next((p for p in inside if os.path.exists(p)), inside[0])

    def _read_local(self, path: str) -> bytes:
        real = self.resolve_local(path)
        try:
            # O_NONBLOCK: opening a FIFO must not hang the encoder; it is refused just below.
            fd = os.open(real, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            raise ImageError(f"{path}: file not found") from None
        except OSError as e:
            raise ImageError(f"{path}: cannot open ({e.strerror})") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # checked before fdopen, which refuses a folder
            os.close(fd)
            if stat.S_ISDIR(info.st_mode):
                raise ImageError(f"{path} is a directory, not an image file")
            raise ImageError(f"{path}: not a regular file")
        with os.fdopen(fd, "rb") as f:
            if info.st_size > self.max_bytes:
                raise ImageError(
                    f"{path}: {info.st_size} bytes is more than max_bytes={self.max_bytes}"
                )
            return f.read(self.max_bytes + 1)

    def _data_uri_bytes(self, uri: str, shown: str) -> bytes:
        header, sep, payload = uri.partition(",")
        if not sep:
            raise ImageError(f"{shown}: malformed data URI (no ',')")
        # base64 takes 4 characters per 3 bytes: refuse oversized payloads before decoding them
        if len(payload) > self.max_bytes * 4 // 3 + 4:
            raise ImageError(f"{shown}: data URI is more than max_bytes={self.max_bytes}")
        try:
            if header.lower().endswith(";base64"):
                return base64.b64decode("".join(payload.split()), validate=True)
            return unquote_to_bytes(payload)
        except (binascii.Error, ValueError) as e:
            raise ImageError(f"{shown}: malformed data URI ({e})") from None

    def _fetch(self, uri: str, shown: str) -> bytes:
        try:
            with requests.get(uri, stream=True, timeout=self.timeout) as r:
                r.raise_for_status()
                data = bytearray()
                for chunk in r.iter_content(64 * 1024):
                    data += chunk
                    if len(data) > self.max_bytes:
                        raise ImageError(f"{shown}: more than max_bytes={self.max_bytes}")
                return bytes(data)
        except requests.RequestException as e:
            raise ImageError(f"{shown}: download failed ({type(e).__name__}: {e})") from None


def check_resize_cost(img: Image.Image, short_side: int, max_pixels: int) -> None:
    """Refuse images whose resize (shortest side to `short_side`) would exceed `max_pixels`.

    A 1 x 10,000,000 strip passes the source pixel limit, but resizing its short side to 224
    would make a 224 x 2.2e9 image: a decompression bomb by aspect ratio. (The model's own
    square input is always allowed, even where max_pixels is set below it.)
    """
    w, h = img.size
    if min(w, h) < 1:
        raise ImageError(f"image has no pixels ({w}x{h})")
    long_side = math.ceil(max(w, h) * short_side / min(w, h))
    if long_side * short_side > max(max_pixels, short_side * short_side):
        raise ImageError(
            f"image of {w}x{h} pixels has an extreme aspect ratio: resizing it for the model "
            f"would make it {long_side}x{short_side}, more than max_pixels={max_pixels}"
        )


def _header_pixels(data: bytes) -> int:
    """Width x height from an image's header, without decoding it; 0 when PIL cannot read
    the header (decoding then fails with the reason)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a bomb's header: refused by the decode
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
    except Exception:  # noqa: BLE001 - any unreadable header is reported by the decode
        return 0
    return width * height


def _is_within(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives (Windows) or mixed absolute/relative
        return False
