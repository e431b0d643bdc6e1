"""Runtimes behind one interface; :func:`load_runtime` picks one from the model file."""

from __future__ import annotations

from pathlib import Path

from swdet.errors import SwdetError
from swdet.serve.runtimes.base import OUTPUT_NAMES, Runtime


def load_runtime(path, device: str = "auto", score_threshold: float | None = None, **kwargs) -> Runtime:
    """A run directory, ``.safetensors`` or ``model.json`` -> torch; ``.onnx`` -> ONNX Runtime;
    ``.engine`` / ``.plan`` -> TensorRT."""
    p = Path(path)
    if not p.exists():
        raise SwdetError(f"{p}: no such file or directory")
    suffix = p.suffix.lower()
    if p.is_dir() or suffix in (".safetensors", ".json"):
        from swdet.serve.runtimes.torch_runtime import TorchRuntime

        return TorchRuntime(p, device=device, score_threshold=score_threshold, **kwargs)
    if suffix == ".onnx":
        from swdet.serve.runtimes.onnxruntime_runtime import OnnxRuntime

        return OnnxRuntime(p, device=device, score_threshold=score_threshold, **kwargs)
    if suffix in (".engine", ".plan"):
        from swdet.serve.runtimes.tensorrt_runtime import TensorRTRuntime

        return TensorRTRuntime(p, device=device, score_threshold=score_threshold, **kwargs)
    raise SwdetError(f"{p}: unknown model file type {suffix or '(none)'}; expected a run directory, "
                     ".safetensors, .onnx or .engine")


__all__ = ["Runtime", "load_runtime", "OUTPUT_NAMES"]
