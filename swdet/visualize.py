"""Draw detections on images (PIL only).

Each class gets a fixed colour derived from its name (CRC-32, so the same in every process and
run, unlike Python's salted ``hash``): hue ``h = frac(crc32(name) · φ⁻¹)`` with ``φ`` the golden
ratio, saturation 0.75, value 0.95.
"""

from __future__ import annotations

import colorsys
import functools
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["class_color", "draw_detections"]

_GOLDEN = 0.6180339887498949


@functools.lru_cache(maxsize=1024)
def class_color(name: str) -> tuple[int, int, int]:
    """Deterministic RGB colour of a class name (same name, same colour, in every run)."""
    hue = (zlib.crc32(str(name).encode("utf-8")) * _GOLDEN) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return int(r * 255 + 0.5), int(g * 255 + 0.5), int(b * 255 + 0.5)


@functools.lru_cache(maxsize=16)
def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)  # scalable font, Pillow >= 10.1
    except TypeError:
        return ImageFont.load_default()


def draw_detections(
    image: Image.Image,
    boxes: Any,
    scores: Any,
    labels: Sequence[str],
    *,
    score_threshold: float = 0.0,
    line_width: int | None = None,
    font_size: int | None = None,
) -> Image.Image:
    """Return an RGB copy of ``image`` with boxes, class names and scores drawn on it.

    Args:
        image: any PIL image (converted to RGB; the input is not modified).
        boxes: ``[N, 4]`` ``(x1, y1, x2, y2)`` in ``image`` pixels (numpy or CPU tensor).
        scores: ``[N]`` confidences, printed with two decimals.
        labels: ``N`` class names; the colour of a box is :func:`class_color` of its name.
        score_threshold: boxes scoring below it are not drawn.
        line_width: box outline width; default scales with the image (``max(2, min(W, H) // 300)``).
        font_size: label text height in pixels; default ``max(10, min(W, H) // 40)``.

    Lower-scoring boxes are drawn first, so the most confident box and its label end on top.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not (len(b) == len(s) == len(labels)):
        raise ValueError(f"boxes {len(b)}, scores {len(s)} and labels {len(labels)} differ in length")
    out = image.convert("RGB") if image.mode != "RGB" else image.copy()
    W, H = out.size
    lw = line_width if line_width is not None else max(2, min(W, H) // 300)
    font = _font(font_size if font_size is not None else max(10, min(W, H) // 40))
    draw = ImageDraw.Draw(out)

    keep = np.flatnonzero(s >= score_threshold)
    keep = keep[np.argsort(s[keep], kind="stable")]  # ascending: best drawn last
    b = b[keep].copy()
    b[:, 0::2] = b[:, 0::2].clip(0, W - 1)
    b[:, 1::2] = b[:, 1::2].clip(0, H - 1)
    for (x1, y1, x2, y2), i in zip(b.tolist(), keep.tolist()):
        name = str(labels[i])
        color = class_color(name)
        draw.rectangle((x1, y1, max(x1, x2), max(y1, y2)), outline=color, width=lw)
        text = f"{name} {s[i]:.2f}"
        tx0, ty0, tx1, ty1 = draw.textbbox((0, 0), text, font=font)
        tw, th = tx1 - tx0, ty1 - ty0
        pad = 2
        # label above the box, or inside it when the box touches the top edge
        top = y1 - th - 2 * pad if y1 - th - 2 * pad >= 0 else y1
        left = min(x1, max(0.0, W - tw - 2 * pad))
        draw.rectangle((left, top, left + tw + 2 * pad, top + th + 2 * pad), fill=color)
        luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        text_color = (0, 0, 0) if luminance > 140 else (255, 255, 255)
        draw.text((left + pad - tx0, top + pad - ty0), text, fill=text_color, font=font)
    return out
