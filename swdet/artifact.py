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
from typing import Any

import torch
from torch import nn

from swdet.config import ModelConfig, PostprocessConfig, _fill
from swdet.data.letterbox import PAD_VALUE
from swdet.errors import SwdetError
from swdet.models.retinanet import IMAGENET_MEAN, IMAGENET_STD

FORMAT = "swdet-model"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
META_NAME = "model.json"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def _json_default(o):
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def library_versions() -> dict[str, str]:
    import torchvision

    from swdet import __version__

    return {"swdet": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version()}


def build_metadata(model_cfg: ModelConfig, post: PostprocessConfig, *, class_names: list[str],
                   category_ids: list[int], method: list[str], threshold: dict | None = None,
                   training: dict | None = None, num_parameters: int | None = None) -> dict:
    """The ``model.json`` dict. ``threshold`` records how the score threshold was derived, e.g.
    ``{"source": "sampling_free", "theta": 0.0123, "num_fg": ..., "num_all": ..., "rule": "N_f/N"}``."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": dataclasses.asdict(model_cfg),
        "classes": {"names": list(class_names), "category_ids": [int(c) for c in category_ids]},
        "input": {
            "name": "images", "size": model_cfg.imgsz, "layout": "NCHW", "color": "RGB",
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
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SwdetError(f"{meta_path}: not an swdet model description (format != {FORMAT!r})")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise SwdetError(f"{meta_path}: written by a newer swdet (format_version "
                         f"{meta['format_version']}); upgrade swdet")
    return meta


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
