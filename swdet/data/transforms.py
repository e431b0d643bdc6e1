"""Sample geometry: the inference letterbox and the training augmentation, for image + boxes.

Both return ``(canvas, boxes, labels, scale)``: ``canvas`` uint8 ``[S, S, 3]`` (HWC, RGB),
``boxes`` float64 ``[n, 4]`` xyxy in canvas pixels, ``labels`` ``[n]``, and the resize ``scale``.

Training augmentation, with ``u`` four uniforms in ``[0, 1)`` (the caller draws them from a
generator seeded per sample, which makes the result reproducible):

1. horizontal flip when ``u0 < hflip``: ``x1' = W - x2``, ``x2' = W - x1``;
2. scale jitter: ``s = fit · (lo + (hi - lo)·u1)``, ``fit = S / max(H, W)``;
3. crop window when the resized image exceeds the canvas:
   ``ox = ⌊u2 · max(0, ⌊W·s⌉ - S)⌋``, ``oy = ⌊u3 · max(0, ⌊H·s⌉ - S)⌋``; content past the canvas
   is cut; boxes map as ``b' = b·s - (ox, oy, ox, oy)`` and are clipped to the visible content
   ``[0, min(S, ⌊W·s⌉ - ox)] x [0, min(S, ⌊H·s⌉ - oy)]``;
4. a box is kept iff ``area(clipped) >= min_visible · area(unclipped)`` and both clipped sides
   ``>= min_box_size``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from swdet.errors import SwdetError

from .letterbox import letterbox_image

__all__ = ["AugmentConfig", "hflip_boxes", "letterbox_sample", "augment_sample", "to_chw_tensor"]


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation parameters (defaults: flip 0.5, scale jitter 0.75..1.25)."""

    hflip: float = 0.5
    scale_jitter: tuple[float, float] = (0.75, 1.25)
    min_visible: float = 0.3
    min_box_size: float = 2.0

    def __post_init__(self):
        lo, hi = self.scale_jitter
        if not 0 < lo <= hi:
            raise SwdetError(f"scale_jitter={self.scale_jitter!r}: need 0 < lo <= hi")
        if not 0.0 <= self.hflip <= 1.0:
            raise SwdetError(f"hflip={self.hflip!r}: must be a probability in [0, 1]")
        if not 0.0 <= self.min_visible <= 1.0:
            raise SwdetError(f"min_visible={self.min_visible!r}: must be in [0, 1]")


def hflip_boxes(boxes: np.ndarray, width: float) -> np.ndarray:
    """Mirror xyxy boxes in an image of ``width``: ``(W - x2, y1, W - x1, y2)``."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], axis=1)


def letterbox_sample(img: Image.Image, boxes: np.ndarray, labels: np.ndarray, size: int):
    """The inference letterbox (``scale = S / max(H, W)``, top-left, no crop) for image + boxes."""
    canvas, lb = letterbox_image(img, size)
    rh, rw = lb.resized_hw
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * lb.scale
    b[:, 0::2] = b[:, 0::2].clip(0, min(size, rw))
    b[:, 1::2] = b[:, 1::2].clip(0, min(size, rh))
    return canvas, b, labels, lb.scale


def augment_sample(img: Image.Image, boxes: np.ndarray, labels: np.ndarray, size: int,
                   u: np.ndarray, cfg: AugmentConfig = AugmentConfig()):
    """Flip, scale jitter and crop (module docstring) driven by the four uniforms ``u``."""
    w, h = img.size
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if u[0] < cfg.hflip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        b = hflip_boxes(b, w)
    lo, hi = cfg.scale_jitter
    scale = size / max(h, w) * (lo + (hi - lo) * float(u[1]))
    rw, rh = max(1, round(w * scale)), max(1, round(h * scale))
    ox = int(u[2] * max(0, rw - size))
    oy = int(u[3] * max(0, rh - size))
    canvas, _ = letterbox_image(img, size, scale=scale, offset=(ox, oy))
    b = b * scale - np.array([ox, oy, ox, oy], dtype=np.float64)
    full_area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    b[:, 0::2] = b[:, 0::2].clip(0, min(size, rw - ox))
    b[:, 1::2] = b[:, 1::2].clip(0, min(size, rh - oy))
    bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    keep = (bw * bh >= cfg.min_visible * full_area) & (bw >= cfg.min_box_size) & (bh >= cfg.min_box_size)
    return canvas, b[keep], np.asarray(labels)[keep], scale


def to_chw_tensor(canvas: np.ndarray) -> torch.Tensor:
    """uint8 HWC array -> contiguous uint8 ``[3, S, S]`` tensor."""
    return torch.from_numpy(np.ascontiguousarray(canvas)).permute(2, 0, 1).contiguous()
