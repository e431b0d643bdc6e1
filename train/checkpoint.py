"""Training checkpoints: written atomically (temp file + rename), so a kill never corrupts one.

A checkpoint holds tensors and plain containers only (dict, list, tuple, str, int, float, bool,
None), so it loads with ``torch.load(weights_only=True)``: reading one never runs code from the
file. :func:`plain_state` converts what the trainer collects (numpy arrays and scalars from RNG
states or statistics) and refuses anything else when the checkpoint is *written*, naming the
entry, instead of when a resume finds it unreadable.

Reading is core's :func:`swdet.artifact.read_checkpoint` (``swdet export`` reads checkpoints too,
without importing ``swdet.train``); :func:`load_checkpoint` adds what resuming needs.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch

from swdet.artifact import atomic_write_bytes, read_checkpoint

_PLAIN = (str, int, float, bool, type(None), bytes)


def plain_state(obj, where: str = "checkpoint"):
    """``obj`` with numpy arrays as tensors and numpy scalars as Python scalars; a ``TypeError``
    naming the entry for anything that is not a tensor or a plain container."""
    if torch.is_tensor(obj) or isinstance(obj, _PLAIN):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: plain_state(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [plain_state(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(f"{where}: a {type(obj).__name__} cannot go into a checkpoint (tensors and plain "
                    "containers only, so it loads with weights_only=True)")


def save_checkpoint(path: str | Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(plain_state(state), buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """A checkpoint to resume from: :func:`~swdet.artifact.read_checkpoint` with an
    ``iteration``."""
    return read_checkpoint(path, map_location, require=("iteration",))


# ----------------------------------------------------------------------------------------------
# RNG states as tensors and plain containers


def rng_state() -> dict:
    """Python, numpy, torch CPU (and CUDA) generator states, each a tensor or plain container."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),  # (version, tuple of ints, None)
        "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]),
                         float(n["cached_gaussian"])))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
