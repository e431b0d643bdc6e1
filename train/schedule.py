"""The training schedule: the learning-rate factor of each iteration and the autocast dtype."""

from __future__ import annotations

import math

import torch


def lr_factor(it: int, total: int, cfg) -> float:
    """Linear warmup from ``warmup_factor``, then step decay (``gamma`` at each fraction in
    ``steps``) or cosine to zero. ``it`` counts from 0."""
    warm = 1.0
    if it < cfg.warmup_iters:
        alpha = it / max(1, cfg.warmup_iters)
        warm = cfg.warmup_factor * (1 - alpha) + alpha
    if cfg.schedule == "cosine":
        return warm * 0.5 * (1 + math.cos(math.pi * min(it, total) / max(1, total)))
    milestones = [round(s * total) if s <= 1 else int(s) for s in cfg.steps]
    return warm * cfg.gamma ** sum(it >= m for m in milestones)


def amp_dtype(cfg_amp: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or cfg_amp == "none":
        return None
    if cfg_amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[cfg_amp]
