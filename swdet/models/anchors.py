"""Anchors of a square input, in the order the heads flatten their outputs.

For level ``l`` (stride ``s = 2^l``) and cell ``(y, x)`` the anchors are centred at
``((x + 0.5)·s, (y + 0.5)·s)`` with side ``anchor_size·s·scale`` and aspect ratio ``h/w = r``
(area kept): ``w = side / sqrt(r)``, ``h = side·sqrt(r)``. Order: level, y, x, (ratio, scale).
Anchors depend only on the input size, so export bakes them in as a constant.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def num_anchors_per_cell(cfg) -> int:
    return len(cfg.anchor_scales) * len(cfg.anchor_ratios)


def level_strides(cfg) -> list[int]:
    return [2 ** level for level in range(cfg.min_level, cfg.max_level + 1)]


def feature_sizes(cfg, imgsz: int | None = None) -> list[int]:
    size = imgsz or cfg.imgsz
    return [math.ceil(size / s) for s in level_strides(cfg)]


def cell_anchors(cfg, stride: int) -> Tensor:
    """``[A, 4]`` anchors centred at the origin for one level."""
    out = []
    for r in cfg.anchor_ratios:
        for s in cfg.anchor_scales:
            side = cfg.anchor_size * stride * s
            w, h = side / math.sqrt(r), side * math.sqrt(r)
            out.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(out, dtype=torch.float32)


def generate_anchors(cfg, imgsz: int | None = None, device=None) -> list[Tensor]:
    """Per-level ``[H·W·A, 4]`` anchors (xyxy, input pixels) for a square input."""
    levels = []
    for stride, n in zip(level_strides(cfg), feature_sizes(cfg, imgsz)):
        base = cell_anchors(cfg, stride).to(device)
        c = (torch.arange(n, dtype=torch.float32, device=device) + 0.5) * stride
        cy, cx = torch.meshgrid(c, c, indexing="ij")
        shifts = torch.stack((cx, cy, cx, cy), dim=-1).reshape(-1, 1, 4)
        levels.append((shifts + base[None]).reshape(-1, 4))
    return levels
