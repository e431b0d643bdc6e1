"""The deployable artifact: ``model.safetensors`` (detector weights only) + ``model.json``.

``model.json`` holds everything needed to rebuild and run the detector without ``swdet.train``:
the architecture config, class names and dataset category ids, input size and normalization,
post-processing settings with the score threshold and how it was derived, the training method
and library versions. The same metadata is embedded in every exported ONNX graph and written
next to every engine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swdet.config import ModelConfig, PostprocessConfig, _fill
from swdet.errors import SwdetError

if TYPE_CHECKING:  # torch is imported where weights are handled, so reading metadata stays light
    import torch
    from torch import nn

FORMAT = "swdet-model"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
META_NAME = "model.json"


# ----------------------------------------------------------------------------------------------
# Atomic writes (every file swdet writes goes through these two functions)


def _umask() -> int:
    """The process umask (read from ``/proc`` where possible: setting it to read it back is not
    thread-safe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temp file in the same folder, ``fsync``, then
    ``os.replace``. A kill leaves either the old file or the new one, never half of one.

    The final mode is ``0o666 & ~umask`` like any newly created file (``mkstemp`` creates 0600,
    which would hide artifacts from other users, e.g. a Triton server). An ``OSError`` (read-only
    folder, disk full, a directory in the way) becomes ``SwdetError("<path>: cannot write
    (<reason>)")``. Returns ``path``.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as e:
        _discard(tmp)
        raise SwdetError(f"{path}: cannot write ({e.strerror or e})") from None
    except BaseException:
        _discard(tmp)
        raise
    return path


def _discard(tmp: str | None) -> None:
    if tmp is not None:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2, allow_nan: bool = True) -> Path:
    """``obj`` as JSON (dataclasses, paths, numpy and torch scalars and arrays converted) through
    :func:`atomic_write_bytes`. ``indent=None`` writes it compactly; ``allow_nan=False`` refuses
    NaN and infinities (strict JSON)."""
    seps = (",", ":") if indent is None else None
    text = json.dumps(obj, indent=indent, separators=seps, default=json_default, allow_nan=allow_nan)
    return atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def json_default(o):
    """``json.dumps(default=...)`` for what swdet writes: dataclasses, paths, numpy arrays and
    scalars, 0-d tensors (``.item()``) and tensors (``.tolist()``)."""
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist") and getattr(o, "ndim", 0):  # numpy arrays, tensors
        return o.tolist()
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def library_versions() -> dict[str, str]:
    import torch
    import torchvision

    from swdet import __version__

    return {"swdet": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version()}


def build_metadata(model_cfg: ModelConfig, post: PostprocessConfig, *, class_names: list[str],
                   category_ids: list[int], method: list[str], threshold: dict | None = None,
                   training: dict | None = None, num_parameters: int | None = None) -> dict:
    """The ``model.json`` dict. ``threshold`` records how the score threshold was derived, e.g.
    ``{"source": "sampling_free", "theta": 0.0123, "num_fg": ..., "num_all": ..., "rule": "N_f/N"}``
    (see :func:`threshold_record`)."""
    from swdet.data.letterbox import PAD_VALUE
    from swdet.models.retinanet import IMAGENET_MEAN, IMAGENET_STD

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": dataclasses.asdict(model_cfg),
        "classes": {"names": list(class_names), "category_ids": [int(c) for c in category_ids]},
        "input": {
            "name": "images", "layout": "NCHW", "color": "RGB",
            "dtype": "float32", "range": [0, 255], "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "letterbox": {"align": "top-left", "pad_value": PAD_VALUE},
            "normalization": "in-graph",
        },
        "postprocess": dataclasses.asdict(post),
        "threshold": threshold or {"source": "default", "theta": post.score_threshold},
        "training": {"method": list(method), **(training or {})},
        "num_parameters": num_parameters,
        "versions": library_versions(),
    }


def save_artifact(out_dir: str | Path, model: nn.Module, meta: dict) -> Path:
    """Write ``model.safetensors`` (the detector's state dict) and ``model.json`` atomically."""
    from safetensors.torch import save

    out = Path(out_dir)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = dict(meta, num_parameters=sum(p.numel() for p in model.parameters()))
    atomic_write_bytes(out / WEIGHTS_NAME, save(state, metadata={"format": FORMAT}))
    atomic_write_json(out / META_NAME, meta)
    return out / WEIGHTS_NAME


def resolve_artifact(path: str | Path) -> tuple[Path, Path]:
    """``(weights, meta)`` paths for a run directory, a ``.safetensors`` or a ``model.json``."""
    p = Path(path)
    if p.is_dir():
        weights, meta = p / WEIGHTS_NAME, p / META_NAME
    elif p.suffix == ".safetensors":
        weights, meta = p, p.with_name(META_NAME) if not p.with_suffix(".json").is_file() else p.with_suffix(".json")
    elif p.suffix == ".json":
        weights, meta = p.with_name(WEIGHTS_NAME), p
    else:
        raise SwdetError(f"{p}: not a run directory, .safetensors or model.json")
    if not p.exists():
        raise SwdetError(f"{p}: no such file or directory")
    for f in (weights, meta):
        if not f.is_file():
            raise SwdetError(f"{f}: missing (a deployable artifact is model.safetensors + model.json)")
    return weights, meta


def read_metadata(meta_path: str | Path) -> dict:
    meta_path = Path(meta_path)
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise SwdetError(f"{meta_path}: cannot read ({e.__class__.__name__})") from None
    except json.JSONDecodeError as e:
        raise SwdetError(f"{meta_path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    from swdet.modeljson import check_metadata

    return check_metadata(meta, str(meta_path))


def input_size(meta: dict) -> int:
    """The square input size S of a model description: ``model.imgsz``, the one field every
    stage reads (a ``model.json`` written before it was the only one also has ``input.size``)."""
    model = meta.get("model") or {}
    return int(model["imgsz"] if "imgsz" in model else meta["input"]["size"])


def model_config_from_meta(meta: dict, source: str = "model.json") -> ModelConfig:
    return _fill(ModelConfig(), meta["model"], f"{source}: model")


def postprocess_from_meta(meta: dict, source: str = "model.json") -> PostprocessConfig:
    return _fill(PostprocessConfig(), meta["postprocess"], f"{source}: postprocess")


def load_artifact(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the detector from an artifact; returns ``(model in eval mode, metadata)``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from swdet.models import build_model

    weights, meta_path = resolve_artifact(path)
    meta = read_metadata(meta_path)
    cfg = model_config_from_meta(meta, str(meta_path))
    cfg.pretrained = "none"
    model = build_model(cfg)
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise SwdetError(f"{weights}: cannot read weights ({str(e).splitlines()[0][:120]})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise SwdetError(f"{weights}: weights do not match the architecture in {meta_path.name} ({what})")
    return model.to(device).eval(), meta


# ----------------------------------------------------------------------------------------------
# Training checkpoints and the score threshold (read here so no stage needs swdet.train for them)


def read_checkpoint(path: str | Path, map_location="cpu", *, require: tuple[str, ...] = ()) -> dict:
    """An swdet training checkpoint (``checkpoints/last.pt``), loaded with
    ``torch.load(weights_only=True)`` only: tensors and plain containers, never code from the
    file. One-line errors: the file must exist, hold nothing else (a pickle that would build
    other objects is refused, and nothing in it runs), and be a dict whose ``"model"`` is a
    state dict; ``require`` names further keys that must be present (e.g. ``("iteration",)``
    to resume)."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise SwdetError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e) or "Unsupported class" in str(e):
            raise SwdetError(f"{path}: refused: the checkpoint holds objects other than tensors and plain "
                             "containers (only those are loaded, so a checkpoint cannot run code)") from None
        raise SwdetError(f"{path}: not a readable swdet checkpoint (UnpicklingError)") from None
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file is a user error
        raise SwdetError(f"{path}: not a readable swdet checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise SwdetError(f"{path}: not an swdet training checkpoint (no 'model' state dict)")
    missing = [k for k in require if k not in state]
    if missing:
        raise SwdetError(f"{path}: not an swdet training checkpoint (no {missing[0]!r} entry)")
    return state


def derive_threshold(cfg, stats: dict | None) -> dict:
    """``model.json["threshold"]``: how the score threshold is derived, decided here for the
    trainer and for ``swdet export`` of a checkpoint alike. Sampling-Free with
    ``methods.sampling_free.adaptive_threshold`` and anchor statistics gives ``θ = N_f / N``
    (:func:`threshold_record`); every other run keeps ``postprocess.score_threshold``."""
    adaptive = "sampling_free" in cfg.loss.method and cfg.methods.sampling_free.adaptive_threshold
    if adaptive and stats and "num_fg" in stats and "num_all" in stats:
        return threshold_record(int(stats["num_fg"]), int(stats["num_all"]))  # θ = N_f / N
    return {"source": "default", "theta": cfg.postprocess.score_threshold}


def postprocess_with_threshold(post: PostprocessConfig, threshold: dict) -> PostprocessConfig:
    """A copy of ``post`` whose score threshold is the derived one (:func:`derive_threshold`)."""
    out = dataclasses.replace(post)
    if threshold.get("source") == "sampling_free":
        out.score_threshold = float(threshold["theta"])
    return out


def threshold_record(num_fg: int, num_all: int) -> dict:
    """``model.json["threshold"]`` of the Sampling-Free adaptive score threshold (Sampling-Free
    Sec. 3.2): ``θ = N_f / N``, ``N_f`` foreground anchors and ``N`` = foreground + background
    anchors over the training set. The same equation as
    :func:`swdet.train.weighting.adaptive_threshold` (which calls this for plain counts), kept in
    core so ``swdet.export`` derives it from a checkpoint without importing ``swdet.train``."""
    if not 0 < num_fg <= num_all:
        raise SwdetError(f"anchor statistics: need 0 < num_fg <= num_all, got num_fg={num_fg}, num_all={num_all}")
    theta = float(num_fg) / float(num_all)  # θ = N_f / N
    return {"source": "sampling_free", "rule": "N_f/N", "theta": theta, "num_fg": int(num_fg),
            "num_all": int(num_all)}
