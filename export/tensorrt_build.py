"""TensorRT engine building (TensorRT 10 / 11 Python API, strongly typed networks).

Precision comes from the ONNX graph (docs/design.md, "Conventions: TensorRT"): FP16 casts from
``--precision fp16``, INT8 Q/DQ nodes from ``swdet calib``. The network is created with the
``STRONGLY_TYPED`` flag (explicit batch is implicit in TensorRT 10), so no FP16/INT8 builder
flags and no calibrators are used (TensorRT 11 removed both).

Every engine gets a sidecar ``<engine>.json``: the model's ``model.json`` plus an ``"engine"``
section with the TensorRT version, GPU name and compute capability it was built for, the
precision, the optimization profile of ``images`` and the SHA-256 of the source ONNX. The
sidecar (path, layout, reading and the compatibility rules: ``check_engine_sidecar``) lives in
core, :mod:`swdet.deploy.engine_meta`, so serving checks engines without importing this stage; this
module only writes it.

TensorRT is an optional extra (``pip install "swdet[tensorrt]"``) imported only when needed.
The build needs a CUDA GPU; torch owns the CUDA context (no pycuda).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from swdet.deploy.engine_meta import INPUT_NAME, current_gpu, engine_sidecar, write_engine_sidecar
from swdet.deploy.engine_meta import import_tensorrt as _import_tensorrt
from swdet.errors import SwdetError

DEFAULT_OPT_BATCH = 8
DEFAULT_MAX_BATCH = 32


def import_tensorrt(purpose: str = "building engines"):
    """``import tensorrt`` or a one-line :class:`~swdet.errors.MissingDependency` naming the extra."""
    return _import_tensorrt(purpose)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Optimization profile


def resolve_profile(input_shape: list, min_batch: int = 1, opt_batch: int | None = None,
                    max_batch: int | None = None) -> dict[str, list[int]]:
    """``{"min", "opt", "max"}`` shapes for ``images`` from its ONNX shape ``[B, 3, S, S]``.

    A fixed batch B gives (B, B, B) and rejects other requests; a dynamic one defaults to
    ``min=1, opt=min(8, max), max=32``.
    """
    if len(input_shape) != 4 or any(not isinstance(d, int) or d <= 0 for d in input_shape[1:]):
        raise SwdetError(f"input {INPUT_NAME} has shape {input_shape}; expected [B, 3, S, S] with a static "
                         "3 x S x S (only the batch may be dynamic)")
    rest = [int(d) for d in input_shape[1:]]
    b = input_shape[0]
    for name, v in (("--min-batch", min_batch), ("--opt-batch", opt_batch), ("--max-batch", max_batch)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise SwdetError(f"{name} {v!r}: must be a positive integer")
    if isinstance(b, int) and b > 0:
        asked = {v for v in (opt_batch, max_batch) if v is not None} | ({min_batch} if min_batch != 1 else set())
        if asked - {b}:
            raise SwdetError(f"the ONNX model has a fixed batch of {b}; export it with --batch dynamic to "
                             f"build for batch sizes {sorted(asked)}")
        lo = hi = opt = b
    else:
        lo = min_batch
        hi = max_batch if max_batch is not None else max(DEFAULT_MAX_BATCH, lo)
        opt = opt_batch if opt_batch is not None else min(max(DEFAULT_OPT_BATCH, lo), hi)
        if not lo <= opt <= hi:
            raise SwdetError(f"batch profile must satisfy min <= opt <= max, got {lo} <= {opt} <= {hi}")
    return {"min": [lo, *rest], "opt": [opt, *rest], "max": [hi, *rest]}


# ----------------------------------------------------------------------------------------------
# Build


def _progress_monitor(trt, stream=sys.stderr):
    """A ``trt.IProgressMonitor`` printing phase starts and ends (thread-safe: one write per call)."""

    class _Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.depth: dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            d = self.depth.get(parent_phase, -1) + 1 if parent_phase else 0
            self.depth[phase_name] = d
            if d <= 1:
                stream.write(f"[tensorrt] {'  ' * d}{phase_name} ({num_steps} steps)\n")
                stream.flush()

        def step_complete(self, phase_name, step):
            return True  # never cancel

        def phase_finish(self, phase_name):
            if self.depth.pop(phase_name, 99) == 0:
                stream.write(f"[tensorrt] {phase_name} done\n")
                stream.flush()

    return _Monitor()


def build_engine(onnx_path: str | Path, out: str | Path, *, min_batch: int = 1, opt_batch: int | None = None,
                 max_batch: int | None = None, workspace_gb: float | None = None,
                 timing_cache: str | Path | None = None, verbose: bool = False, progress: bool = True) -> Path:
    """Build a TensorRT engine from an swdet ONNX file; returns ``out``.

    The static check (:func:`swdet.deploy.trt_rules.check_tensorrt_compat`) runs first and any
    error refuses the build. ``timing_cache`` is read when it exists and written back after the
    build. The sidecar ``<out>.json`` is written next to the engine.
    """
    from swdet.artifact import atomic_write_bytes
    from swdet.deploy.graph import load_onnx, static_dims
    from swdet.export.onnx_export import detect_precision
    from swdet.deploy.onnx_meta import read_onnx_metadata
    from swdet.deploy.trt_rules import check_tensorrt_compat, format_problems, has_errors

    onnx_path, out = Path(onnx_path), Path(out)
    proto = load_onnx(onnx_path)
    meta = read_onnx_metadata(proto)
    if meta is None:
        raise SwdetError(f"{onnx_path}: no swdet metadata (metadata_props['swdet']); export it with 'swdet export'")
    problems = check_tensorrt_compat(proto)
    if has_errors(problems):
        raise SwdetError(f"{onnx_path}: not buildable by TensorRT: "
                         + "; ".join(str(p) for p in problems if p.severity == "error")[:600])
    inputs = [i for i in proto.graph.input if i.name == INPUT_NAME]
    if not inputs:
        raise SwdetError(f"{onnx_path}: no input named {INPUT_NAME!r}")
    shape = static_dims(inputs[0])
    profile = resolve_profile(shape, min_batch, opt_batch, max_batch)
    if workspace_gb is not None and not workspace_gb > 0:
        raise SwdetError(f"--workspace-gb {workspace_gb}: must be positive")
    precision = detect_precision(proto)
    del proto

    trt = import_tensorrt("building engines")
    device = current_gpu()  # also makes torch create the CUDA context TensorRT will use
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")  # EfficientNMS_TRT
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is None:  # a TensorRT where strong typing is the only mode
        network = builder.create_network(0)
    else:
        network = builder.create_network(1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        raise SwdetError(f"{onnx_path}: TensorRT's ONNX parser failed: {errs[0] if errs else 'unknown error'}"
                         + (f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""))
    config = builder.create_builder_config()
    if workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(INPUT_NAME, profile["min"], profile["opt"], profile["max"])
    config.add_optimization_profile(opt_profile)
    cache_path = Path(timing_cache) if timing_cache else None
    if cache_path is not None:
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, False)
    if progress:
        config.progress_monitor = _progress_monitor(trt)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise SwdetError(f"{onnx_path}: TensorRT build failed (rerun with --verbose for the builder log)")
    atomic_write_bytes(out, bytes(serialized))
    if cache_path is not None:
        atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    sidecar = engine_sidecar(meta, tensorrt_version=trt.__version__, gpu=device["gpu"],
                             compute_capability=device["compute_capability"], precision=precision,
                             profile=profile, onnx_sha256=sha256_file(onnx_path), onnx_name=onnx_path.name,
                             extra={"workspace_gb": workspace_gb,
                                    "warnings": [str(p) for p in problems]})
    write_engine_sidecar(out, sidecar)
    if problems and verbose:
        print(format_problems(problems), file=sys.stderr)
    return out
