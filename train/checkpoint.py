"""Training checkpoints: written atomically (temp file + rename), so a kill never corrupts one."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from swdet.artifact import atomic_write_bytes
from swdet.errors import SwdetError


def save_checkpoint(path: str | Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise SwdetError(f"{path}: checkpoint not found")
    try:
        # The checkpoint holds numpy RNG state and plain containers; it is our own file.
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file is a user error
        raise SwdetError(f"{path}: not a readable swdet checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or "model" not in state or "iteration" not in state:
        raise SwdetError(f"{path}: not an swdet training checkpoint (no model/iteration)")
    return state
