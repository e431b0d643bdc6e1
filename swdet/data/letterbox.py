"""Letterbox geometry, shared by training, every runtime and the mapping back to the image.

An image of ``h x w`` is resized by ``scale = size / max(h, w)`` (aspect kept), placed at the
top-left corner of a ``size x size`` canvas and padded right and bottom with :data:`PAD_VALUE`.
A box in canvas pixels maps back to the original image by dividing by ``scale`` and clipping.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

PAD_VALUE = 114


@dataclass(frozen=True)
class Letterbox:
    """Where an original image went inside the square canvas."""

    orig_h: int
    orig_w: int
    size: int
    scale: float

    @classmethod
    def fit(cls, orig_h: int, orig_w: int, size: int) -> "Letterbox":
        return cls(int(orig_h), int(orig_w), int(size), size / max(orig_h, orig_w))

    @property
    def resized_hw(self) -> tuple[int, int]:
        return (max(1, round(self.orig_h * self.scale)), max(1, round(self.orig_w * self.scale)))

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Canvas-pixel ``[N, 4]`` xyxy boxes -> original-image pixels, clipped to the image."""
        out = np.asarray(boxes, dtype=np.float64) / self.scale
        out[:, 0::2] = out[:, 0::2].clip(0, self.orig_w)
        out[:, 1::2] = out[:, 1::2].clip(0, self.orig_h)
        return out

    def to_canvas(self, boxes: np.ndarray) -> np.ndarray:
        """Original-image ``[N, 4]`` xyxy boxes -> canvas pixels."""
        return np.asarray(boxes, dtype=np.float64) * self.scale


def letterbox_image(image: Image.Image, size: int, scale: float | None = None,
                    offset: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, Letterbox]:
    """Resize ``image`` (RGB) into a ``size x size`` uint8 canvas; returns ``(HWC array, Letterbox)``.

    ``scale`` overrides the fitted scale (training scale jitter); content past the canvas is cut.
    ``offset = (ox, oy)`` (training only, default ``(0, 0)``) is the pixel of the *resized* image
    that lands on the canvas origin, i.e. a crop window when the resized image is larger than the
    canvas: a point maps as ``canvas = original · scale - offset``. Negative values are treated
    as 0. The returned :class:`Letterbox` does not record the offset.
    """
    w, h = image.size
    lb = Letterbox.fit(h, w, size)
    if scale is not None:
        lb = Letterbox(h, w, size, float(scale))
    rh, rw = lb.resized_hw
    resized = image.resize((rw, rh), Image.BILINEAR) if (rw, rh) != (w, h) else image
    arr = np.asarray(resized, dtype=np.uint8)
    ox = min(max(int(offset[0]), 0), rw)
    oy = min(max(int(offset[1]), 0), rh)
    canvas = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    ch, cw = min(rh - oy, size), min(rw - ox, size)
    canvas[:ch, :cw] = arr[oy:oy + ch, ox:ox + cw]
    return canvas, lb
