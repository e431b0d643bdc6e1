"""The sidecar of a TensorRT engine: ``model.engine`` -> ``model.engine.json``.

An engine is not portable: it runs only on the TensorRT version and the GPU architecture it was
built for. ``swdet export --format tensorrt`` writes (:func:`write_engine_sidecar`) the model's
``model.json`` plus an ``"engine"`` section::

    {..model.json.., "engine": {"tensorrt_version", "gpu", "compute_capability", "precision",
                                "strongly_typed", "input": {"name", "min", "opt", "max"},
                                "onnx", "onnx_sha256", "built_at", ...}}

and every consumer (the TensorRT runtime, the Triton repository writer, ``swdet export``'s own
check) reads and checks it here, with one rule set (:func:`check_engine_compat`):

* the TensorRT version must equal the running one;
* the compute capability must equal the running GPU's when the sidecar records it;
* the same compute capability under another GPU name only warns (TensorRT loads it; its
  tactics were timed elsewhere); a sidecar without a compute capability needs the same GPU name.

TensorRT keys at the top level (``{"tensorrt_version": ..., "gpu": ...}``, a hand-written
sidecar) are accepted and folded into ``"engine"``. Core module: serving checks engines without
importing ``swdet.export``; nothing here imports TensorRT or torch until a check needs the
running versions.
"""

from __future__ import annotations

import datetime as _dt
import json
import warnings
from pathlib import Path

from swdet.errors import MissingDependency, SwdetError

SIDECAR_SUFFIX = ".json"
INPUT_NAME = "images"
_FLAT_KEYS = ("tensorrt_version", "gpu", "compute_capability", "precision")

__all__ = ["sidecar_path", "engine_sidecar", "write_engine_sidecar", "read_engine_sidecar", "split_sidecar",
           "check_engine_compat", "check_engine_sidecar", "current_gpu", "import_tensorrt"]


def import_tensorrt(purpose: str = "running TensorRT engines"):
    """``import tensorrt`` or a one-line :class:`MissingDependency` naming the extra."""
    try:
        import tensorrt as trt
    except ImportError:
        raise MissingDependency("tensorrt", "tensorrt", purpose) from None
    return trt


def current_gpu(device=None) -> dict:
    """``{"gpu": name, "compute_capability": "major.minor"}`` of a CUDA device (default: the
    current one)."""
    import torch

    if not torch.cuda.is_available():
        raise SwdetError("TensorRT engines need a CUDA GPU and none is available")
    dev = torch.cuda.current_device() if device is None else device
    major, minor = torch.cuda.get_device_capability(dev)
    return {"gpu": torch.cuda.get_device_name(dev), "compute_capability": f"{major}.{minor}"}


def sidecar_path(engine_path: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json`` (next to it; never clashes with a model.json)."""
    p = Path(engine_path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def engine_sidecar(meta: dict, *, tensorrt_version: str, gpu: str, compute_capability: str, precision: str,
                   profile: dict, onnx_sha256: str, onnx_name: str = "", extra: dict | None = None) -> dict:
    """The sidecar dict: ``model.json`` + ``"engine"`` (``profile``: ``{"min", "opt", "max"}``
    shapes of ``images``)."""
    out = dict(meta)
    out["engine"] = {
        "tensorrt_version": str(tensorrt_version),
        "gpu": str(gpu),
        "compute_capability": str(compute_capability),
        "precision": precision,
        "strongly_typed": True,
        "input": {"name": INPUT_NAME, **{k: list(v) for k, v in profile.items()}},
        "onnx": onnx_name,
        "onnx_sha256": onnx_sha256,
        "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    return out


def write_engine_sidecar(engine_path: str | Path, sidecar: dict) -> Path:
    """Write ``<engine>.json`` atomically; returns its path."""
    from swdet.artifact import atomic_write_json

    return atomic_write_json(sidecar_path(engine_path), sidecar)


def read_engine_sidecar(engine_path: str | Path) -> dict:
    """The sidecar of ``engine_path`` with its ``"engine"`` section (top-level TensorRT keys folded
    in); one-line errors when it is missing, unreadable or has no ``tensorrt_version``."""
    engine = Path(engine_path)
    path = sidecar_path(engine)
    if not path.is_file():
        raise SwdetError(f"{engine}: no sidecar {path.name} next to it (model metadata, TensorRT version, GPU); "
                         "rebuild the engine with 'swdet export MODEL.onnx --format tensorrt'")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SwdetError(f"{path}: unreadable engine sidecar ({type(e).__name__}); rebuild the engine") from None
    if not isinstance(data, dict):
        raise SwdetError(f"{path}: engine sidecar is not a JSON object; rebuild the engine")
    _, info = _split(data)
    if "tensorrt_version" not in info:
        raise SwdetError(f"{path}: engine sidecar lacks 'tensorrt_version'; rebuild the engine")
    return {**{k: v for k, v in data.items() if k not in _FLAT_KEYS}, "engine": info}


def _split(data: dict) -> tuple[dict, dict]:
    meta = {k: v for k, v in data.items() if k != "engine" and k not in _FLAT_KEYS}
    info = dict(data["engine"]) if isinstance(data.get("engine"), dict) else {}
    for key in _FLAT_KEYS:
        if key in data and key not in info:
            info[key] = data[key]
    return meta, info


def split_sidecar(data: dict, source: str) -> tuple[dict, dict]:
    """``(model.json metadata, engine info)`` of a sidecar dict, for a runtime: the metadata must
    be a model description (``format`` and ``input``) and the info must name the TensorRT
    version."""
    if not isinstance(data, dict):
        raise SwdetError(f"{source}: engine sidecar is not a JSON object; rebuild the engine")
    meta, info = _split(data)
    from swdet.artifact import FORMAT

    if meta.get("format") != FORMAT or "input" not in meta:
        raise SwdetError(f"{source}: engine sidecar holds no swdet model description; rebuild the engine "
                         "with swdet export --format tensorrt")
    if "tensorrt_version" not in info:
        raise SwdetError(f"{source}: engine sidecar lacks 'tensorrt_version'; rebuild the engine")
    from swdet.modeljson import check_metadata

    return check_metadata(meta, source), info


def check_engine_compat(info: dict, source: str, *, tensorrt_version: str, gpu: str | None,
                        compute_capability: str | None) -> None:
    """The rule set of the module docstring; ``info`` is the sidecar's ``"engine"`` section and
    the keywords describe this machine. Raises a one-line :class:`SwdetError` or warns."""
    rebuild = f"rebuild it here with 'swdet export {info.get('onnx') or 'MODEL.onnx'} --format tensorrt'"
    built = info.get("tensorrt_version")
    if built is not None and str(built) != str(tensorrt_version):
        raise SwdetError(f"{source}: engine built with TensorRT {built}, this machine has TensorRT "
                         f"{tensorrt_version}; {rebuild}")
    built_gpu, cc = info.get("gpu"), info.get("compute_capability")
    if cc and compute_capability and str(cc) != str(compute_capability):
        raise SwdetError(f"{source}: engine built for {built_gpu or 'a GPU'} (compute capability {cc}), this is "
                         f"{gpu} ({compute_capability}); {rebuild}")
    if built_gpu and gpu and str(built_gpu).strip() != str(gpu).strip():
        if not cc:
            raise SwdetError(f"{source}: engine built for GPU '{built_gpu}', this is '{gpu}' (the sidecar records "
                             f"no compute capability); {rebuild}")
        warnings.warn(f"{source}: engine built on {built_gpu}, running on {gpu} (same compute capability {cc}); "
                      "rebuild for best performance", stacklevel=3)


def check_engine_sidecar(engine_path: str | Path, *, tensorrt_version: str | None = None, gpu: str | None = None,
                         compute_capability: str | None = None, device=None) -> dict:
    """Read ``<engine>.json`` and check that this machine can run the engine; returns the sidecar.

    The running TensorRT version and GPU (``device``, default the current one) are queried unless
    given (tests pass them)."""
    data = read_engine_sidecar(engine_path)
    if tensorrt_version is None:
        tensorrt_version = import_tensorrt("running TensorRT engines").__version__
    if gpu is None or compute_capability is None:
        here = current_gpu(device)
        gpu = here["gpu"] if gpu is None else gpu
        compute_capability = here["compute_capability"] if compute_capability is None else compute_capability
    check_engine_compat(data["engine"], str(engine_path), tensorrt_version=tensorrt_version, gpu=gpu,
                        compute_capability=compute_capability)
    return data
