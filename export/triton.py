"""Triton Inference Server model repository for an swdet ONNX model or TensorRT engine.

Layout (Triton's model repository convention)::

    out_dir/<name>/config.pbtxt
    out_dir/<name>/1/model.onnx     platform "onnxruntime_onnx"
    out_dir/<name>/1/model.plan     platform "tensorrt_plan"
    out_dir/<name>/model.json       the swdet metadata (Triton ignores extra files)

``config.pbtxt`` (protobuf text format of Triton's ``ModelConfig``) declares the I/O of the ONNX
contract. With a dynamic-batch model ``max_batch_size`` is > 0, the dims leave out the batch
axis and ``dynamic_batching`` is on; a fixed-batch model gets ``max_batch_size: 0`` and its full
dims (Triton then does no batching), and asking it for ``max_batch > 1`` is an error.
"""

from __future__ import annotations

import re
from pathlib import Path

from swdet.errors import SwdetError

DEFAULT_MAX_BATCH = 8
DEFAULT_QUEUE_DELAY_US = 100
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _onnx_facts(path: Path) -> tuple[dict, int | None, int, int]:
    """``(meta, batch or None if dynamic, imgsz, max_det)`` of an swdet ONNX file."""
    from swdet.deploy.graph import load_onnx, static_dims
    from swdet.deploy.onnx_meta import read_onnx_metadata

    proto = load_onnx(path)
    meta = read_onnx_metadata(proto)
    if meta is None:
        raise SwdetError(f"{path}: no swdet metadata (metadata_props['swdet']); export it with 'swdet export'")
    dims = {v.name: static_dims(v) for v in list(proto.graph.input) + list(proto.graph.output)}
    img = dims.get("images")
    boxes = dims.get("det_boxes")
    if not img or len(img) != 4 or not boxes or len(boxes) != 3:
        raise SwdetError(f"{path}: not an swdet detector graph (needs input images [B,3,S,S] and det_boxes [B,K,4])")
    if img[2] is None or img[2] != img[3] or boxes[1] is None:
        raise SwdetError(f"{path}: input size and max detections must be static")
    return meta, img[0], int(img[2]), int(boxes[1])


def _engine_facts(path: Path) -> tuple[dict, int | None, int, int, int]:
    """``(meta, fixed batch or None, imgsz, max_det, profile max batch)`` from the sidecar."""
    from swdet.deploy.engine_meta import read_engine_sidecar

    meta = read_engine_sidecar(path)
    prof = meta["engine"].get("input", {})
    try:
        lo, hi = int(prof["min"][0]), int(prof["max"][0])
        size = int(prof["max"][2])
        max_det = int(meta["postprocess"]["max_det"])
    except (KeyError, IndexError, TypeError, ValueError):
        raise SwdetError(f"{path}: engine sidecar lacks the input profile or postprocess.max_det") from None
    return meta, (lo if lo == hi else None), size, max_det, hi


def _dims(values) -> str:
    return "[ " + ", ".join(str(int(v)) for v in values) + " ]"


def triton_config(*, name: str, platform: str, max_batch_size: int, imgsz: int, max_det: int,
                  fixed_batch: int | None = None, preferred_batch_sizes: list[int] | None = None,
                  max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US, instance_kind: str | None = None,
                  instance_count: int = 1) -> str:
    """The ``config.pbtxt`` text."""
    lead = [] if max_batch_size > 0 else [fixed_batch or 1]
    tensors_in = [("images", "TYPE_FP32", lead + [3, imgsz, imgsz])]
    tensors_out = [("num_dets", "TYPE_INT32", lead + [1]), ("det_boxes", "TYPE_FP32", lead + [max_det, 4]),
                   ("det_scores", "TYPE_FP32", lead + [max_det]), ("det_classes", "TYPE_INT32", lead + [max_det])]

    def block(entries) -> str:
        items = [f'  {{\n    name: "{n}"\n    data_type: {t}\n    dims: {_dims(d)}\n  }}' for n, t, d in entries]
        return "[\n" + ",\n".join(items) + "\n]"

    lines = [f'name: "{name}"', f'platform: "{platform}"', f"max_batch_size: {int(max_batch_size)}",
             f"input {block(tensors_in)}", f"output {block(tensors_out)}"]
    if max_batch_size > 0:
        db = ["dynamic_batching {"]
        if preferred_batch_sizes:
            db.append(f"  preferred_batch_size: {_dims(preferred_batch_sizes)}")
        db.append(f"  max_queue_delay_microseconds: {int(max_queue_delay_us)}")
        db.append("}")
        lines.append("\n".join(db))
    if instance_kind:
        lines.append(f"instance_group [\n  {{\n    count: {int(instance_count)}\n    kind: {instance_kind}\n  }}\n]")
    return "\n".join(lines) + "\n"


def write_triton_repository(model_path: str | Path, out_dir: str | Path, model_name: str = "swdet",
                            max_batch: int | None = None, preferred_batch_sizes: list[int] | None = None,
                            max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US, version: int = 1) -> Path:
    """Write a Triton model repository for ``model_path`` (``.onnx``, ``.engine`` or ``.plan``);
    returns the model's folder ``out_dir/<model_name>``.

    Args:
        max_batch: Triton's ``max_batch_size`` (default: 8 for a dynamic ONNX model, the profile
            maximum for an engine). A fixed-batch model accepts only 1 (or None).
        preferred_batch_sizes: the dynamic batcher's preferred sizes (each in [1, max_batch]).
        max_queue_delay_us: how long the dynamic batcher may hold a request to fill a batch.
    """
    from swdet.artifact import atomic_write_bytes, atomic_write_json

    src = Path(model_path)
    if not src.is_file():
        raise SwdetError(f"{src}: no such file")
    if not _NAME.match(model_name):
        raise SwdetError(f"--model-name {model_name!r}: use letters, digits, '_', '-' and '.' only")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SwdetError(f"version {version!r}: must be a positive integer")
    suffix = src.suffix.lower()
    if suffix == ".onnx":
        meta, fixed, imgsz, max_det = _onnx_facts(src)
        platform, filename, limit, kind = "onnxruntime_onnx", "model.onnx", None, None
    elif suffix in (".engine", ".plan"):
        meta, fixed, imgsz, max_det, limit = _engine_facts(src)
        platform, filename, kind = "tensorrt_plan", "model.plan", "KIND_GPU"
    else:
        raise SwdetError(f"{src}: expected an .onnx, .engine or .plan file")
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
        raise SwdetError(f"--max-batch {max_batch!r}: must be a positive integer")
    if fixed is not None:
        if max_batch is not None and max_batch > 1:
            raise SwdetError(f"{src}: fixed batch of {fixed}; Triton batching up to {max_batch} needs a "
                             "dynamic-batch model (export with --batch dynamic)")
        if preferred_batch_sizes:
            raise SwdetError(f"{src}: fixed batch of {fixed}: preferred batch sizes need a dynamic-batch model")
        max_batch_size = 0
    else:
        max_batch_size = max_batch if max_batch is not None else (limit or DEFAULT_MAX_BATCH)
        if limit is not None and max_batch_size > limit:
            raise SwdetError(f"{src}: the engine's profile allows batches up to {limit}, not {max_batch_size}; "
                             "rebuild it with a larger --max-batch")
    prefs = sorted({int(p) for p in (preferred_batch_sizes or [])})
    if any(p < 1 or p > max(max_batch_size, 1) for p in prefs):
        raise SwdetError(f"--preferred-batch-sizes {prefs}: each must be in [1, {max_batch_size}]")
    if isinstance(max_queue_delay_us, bool) or not isinstance(max_queue_delay_us, int) or max_queue_delay_us < 0:
        raise SwdetError(f"--max-queue-delay-us {max_queue_delay_us!r}: must be a non-negative integer")
    text = triton_config(name=model_name, platform=platform, max_batch_size=max_batch_size, imgsz=imgsz,
                         max_det=max_det, fixed_batch=fixed, preferred_batch_sizes=prefs,
                         max_queue_delay_us=max_queue_delay_us, instance_kind=kind)
    model_dir = Path(out_dir) / model_name
    atomic_write_bytes(model_dir / str(version) / filename, src.read_bytes())
    atomic_write_bytes(model_dir / "config.pbtxt", text.encode())
    atomic_write_json(model_dir / "model.json", meta)
    return model_dir
