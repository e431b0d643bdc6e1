"""The training schedule: the learning-rate factor of each iteration, the autocast dtype and the
optimizer kernels."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from swdet.errors import SwdetError


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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512_BF16 or AMX-BF16 in the Linux CPU
    flags), where a bf16 convolution is faster than an fp32 one; elsewhere oneDNN emulates it."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def amp_dtype(cfg_amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the training step, or None (fp32).

    ``auto``: bf16 on a CUDA GPU that supports it, else fp16 there; fp32 on the CPU (bf16 there is
    opt-in: ``bf16``, with AP checked, README "First run"). ``fp16`` needs CUDA."""
    if cfg_amp == "none":
        return None
    if device.type != "cuda":
        if cfg_amp == "fp16":
            raise SwdetError("train.amp: fp16 autocast needs a CUDA device; on the CPU use bf16 or none")
        return torch.bfloat16 if cfg_amp == "bf16" else None
    if cfg_amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[cfg_amp]


def fused_optimizers(device: torch.device) -> bool:
    """Whether the optimizers run their fused kernels (``fused=True``: one kernel per parameter
    instead of ~10 elementwise ops): on CUDA, and on the CPU where this torch has them (probed by
    building one; measured here with torch 2.14 only).
    Same update up to float rounding; on the CPU the recipe's AdamW step over ``retinanet_tiny``'s
    76 parameters takes 0.8 ms instead of 4.0 ms (README "First run")."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    try:
        probe = [torch.zeros(1, requires_grad=True)]
        torch.optim.AdamW(probe, fused=True)
        torch.optim.SGD(probe, lr=0.1, momentum=0.9, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return False
    return True
