"""Robust image decoding: every image that enters swdet goes through :func:`load_image`.

The result is always an 8-bit RGB :class:`PIL.Image.Image` in *display* orientation:

- **EXIF orientation** is applied (:func:`PIL.ImageOps.exif_transpose`), so a phone photo stored
  sideways comes out the way it is shown; a broken EXIF block is ignored, not an error.
- **Modes**: ``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX`` -> RGB via PIL.
- **Alpha** (``RGBA``, ``LA``, ``PA``, ``P`` with a transparency key, premultiplied ``RGBa``/``La``)
  is composited over **white**: ``out = a·rgb + (1 - a)·255``. Fully transparent pixels often hold
  junk colour (frequently black), so dropping the alpha channel would show that junk; white is what
  a viewer shows on a page.
- **High bit depth** is scaled linearly, never clipped: 16-bit modes (``I;16``, ``I;16B``, ...) map
  ``v -> round(v · 255 / 65535)``; 32-bit integer ``I`` uses the same 16-bit scale when all values
  lie in ``[0, 65535]`` (how PIL opens 16-bit PNG/TIFF), otherwise ``255·(v - min)/(max - min)``;
  float ``F`` maps ``[0, 1]`` data by ``v·255`` and any other range by min-max.
- **Errors**: a missing, unreadable, truncated or corrupt file raises :class:`ImageDecodeError`
  (a :class:`~swdet.errors.SwdetError`) naming the file and the problem. The whole image is
  decoded eagerly (``Image.load()``) so truncation is found here, not later. PIL's global
  ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never touched.
- Multi-frame files (GIF, TIFF) give their first frame.

:func:`decode_bytes` does the same for in-memory data (the serving path), :func:`image_size`
reads only the header and returns the display size ``(width, height)`` with EXIF rotation taken
into account.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from swdet.errors import SwdetError

__all__ = ["ImageDecodeError", "load_image", "decode_bytes", "image_size", "to_rgb", "IMAGE_EXTENSIONS", "list_images"]

#: File suffixes treated as images when a folder is scanned (lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")

# EXIF orientation values that swap width and height (transpose, rotate 90/270, transverse).
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
_EXIF_ORIENTATION_TAG = 0x0112


class ImageDecodeError(SwdetError):
    """An image file (or byte string) could not be decoded; the message names it and why."""

    def __init__(self, name: str | os.PathLike, problem: str):
        super().__init__(f"{name}: {problem}")
        self.name = str(name)
        self.problem = problem


def _describe(exc: BaseException) -> str:
    """A short, one-line description of a decoder exception."""
    if isinstance(exc, UnidentifiedImageError):
        return "not an image file or unsupported format"
    if isinstance(exc, Image.DecompressionBombError):
        return f"image too large ({exc})"
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "truncated" in text.lower():
        detail = re.search(r"\d+ bytes not processed", text)
        return "truncated image file" + (f" ({detail.group(0)})" if detail else "")
    return f"corrupt image data ({type(exc).__name__}: {text})"


def _apply_exif(img: Image.Image) -> Image.Image:
    try:
        if img.getexif().get(_EXIF_ORIENTATION_TAG, 1) in (None, 1):
            return img  # nothing to do; skip exif_transpose's copy
        out = ImageOps.exif_transpose(img)
    except Exception:  # a malformed EXIF block must not make a readable image unusable
        return img
    return img if out is None else out


def _high_depth_to_u8(img: Image.Image) -> Image.Image:
    """``I;16*`` / ``I`` / ``F`` -> ``L`` by the linear maps given in the module docstring."""
    mode = img.mode
    arr = np.asarray(img)
    if mode.startswith("I;16"):
        out = arr.astype(np.float64) * (255.0 / 65535.0)
    else:
        a = arr.astype(np.float64)
        finite = np.isfinite(a)
        if not finite.all():
            a = np.where(finite, a, 0.0)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if mode == "F" and lo >= 0.0 and hi <= 1.0:
            out = a * 255.0
        elif mode != "F" and lo >= 0.0 and hi <= 65535.0:
            out = a * (255.0 / 65535.0)
        elif hi > lo:
            out = (a - lo) * (255.0 / (hi - lo))
        else:
            out = np.zeros_like(a)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), mode="L")


def _on_white(img: Image.Image) -> Image.Image:
    """Composite an image with alpha over white: ``a·rgb + (1 - a)·255``."""
    rgba = img.convert("RGBA")  # also un-premultiplies RGBa / La
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (see the module docstring for the rules)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        return _high_depth_to_u8(img).convert("RGB")
    if mode == "P":
        if "transparency" in img.info:
            return _on_white(img)
        return img.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _on_white(img)
    return img.convert("RGB")


@contextlib.contextmanager
def _decode_errors(name: str):
    """Any failure while opening or decoding ``name`` -> one :class:`ImageDecodeError` line."""
    try:
        yield
    except ImageDecodeError:
        raise
    except FileNotFoundError:
        raise ImageDecodeError(name, "file not found") from None
    except IsADirectoryError:
        raise ImageDecodeError(name, "is a directory, not an image file") from None
    except PermissionError:
        raise ImageDecodeError(name, "permission denied") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        raise ImageDecodeError(name, _describe(exc)) from None


def _decode(opener, name: str) -> Image.Image:
    with _decode_errors(name):
        with opener() as fp:
            img = Image.open(fp)
            img.load()  # decode everything now: truncation and bad data surface here
            img = _apply_exif(img)  # may read EXIF from the file (TIFF): before it closes
        out = to_rgb(img)
    if out.width < 1 or out.height < 1:
        raise ImageDecodeError(name, f"empty image ({out.width}x{out.height})")
    return out


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode ``path`` to an 8-bit RGB PIL image in display orientation.

    Raises :class:`ImageDecodeError` (``"<path>: <problem>"``) for a missing, truncated, corrupt or
    non-image file.
    """
    name = os.fspath(path)
    return _decode(lambda: open(name, "rb"), name)


def decode_bytes(data: bytes | bytearray | memoryview, name: str = "<bytes>") -> Image.Image:
    """Decode an encoded image held in memory (e.g. an HTTP upload); same rules as :func:`load_image`.

    ``name`` is only used in error messages.
    """
    if not data:
        raise ImageDecodeError(name, "empty data")
    return _decode(lambda: io.BytesIO(bytes(data)), name)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """Display size ``(width, height)`` from the header only (EXIF rotation by 90° swaps them).

    Cheap: no pixel data is decoded, so truncation is *not* detected here. Raises
    :class:`ImageDecodeError` when the file is missing or its header is unreadable.
    """
    name = os.fspath(path)
    with _decode_errors(name), Image.open(Path(name)) as img:
        w, h = img.size
        try:
            orientation = img.getexif().get(_EXIF_ORIENTATION_TAG, 1)
        except Exception:
            orientation = 1
    if orientation in _SWAPPING_ORIENTATIONS:
        w, h = h, w
    return int(w), int(h)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted, by :data:`IMAGE_EXTENSIONS`, any case);
    a one-line :class:`SwdetError` when ``folder`` is not a folder or holds no image."""
    root = Path(folder)
    if not root.is_dir():
        raise SwdetError(f"{root}: not a folder of images" if root.exists() else f"{root}: folder not found")
    files = sorted(f for f in root.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
    if not files:
        raise SwdetError(f"{root}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return files
