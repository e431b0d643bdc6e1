"""Training checkpoints: written atomically (temp file + rename), so a kill never corrupts one.

Reading is core's :func:`swdet.artifact.read_checkpoint` (``swdet export`` reads checkpoints too,
without importing ``swdet.train``); :func:`load_checkpoint` adds what resuming needs.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from swdet.artifact import atomic_write_bytes, read_checkpoint


def save_checkpoint(path: str | Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """A checkpoint to resume from: :func:`~swdet.artifact.read_checkpoint` with an
    ``iteration``."""
    return read_checkpoint(path, map_location, require=("iteration",))
