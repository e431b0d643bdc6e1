"""swdet.serve: run exported detectors (torch, ONNX Runtime, TensorRT), batch requests,
benchmark them and verify that a candidate costs what a baseline costs.

Imports neither ``swdet.train`` nor ``swdet.export``: a deployed model needs neither. What serve
shares with other stages is core: host pre/post-processing (:mod:`swdet.preprocess`), the ONNX
metadata (:mod:`swdet.deploy.onnx_meta`), the engine sidecar (:mod:`swdet.deploy.engine_meta`) and dataset
evaluation (:func:`swdet.inference.evaluate_runtime`).

    from swdet.serve import load_runtime, Preprocessor, map_detections, DynamicBatcher, benchmark
    from swdet.serve.verify import verify, format_verify_report
    rt = load_runtime("model.onnx")
    with Preprocessor(rt.imgsz) as pre:
        batch = pre(["a.jpg", "b.jpg"])
    dets = map_detections(rt.infer(batch.images), batch.letterboxes, rt.class_names, rt.category_ids)

Names are imported lazily (``import swdet.serve`` stays cheap).
"""

from __future__ import annotations

from swdet.lazy import lazy_exports

_EXPORTS = {
    "load_runtime": "swdet.serve.runtimes",
    "Runtime": "swdet.serve.runtimes.base",
    "OUTPUT_NAMES": "swdet.serve.runtimes.base",
    "TorchRuntime": "swdet.serve.runtimes.torch_runtime",
    "OnnxRuntime": "swdet.serve.runtimes.onnxruntime_runtime",
    "TensorRTRuntime": "swdet.serve.runtimes.tensorrt_runtime",
    "Preprocessor": "swdet.preprocess",  # core host code, shared with predict and calib
    "PreparedBatch": "swdet.preprocess",
    "Detections": "swdet.preprocess",
    "prepare_batch": "swdet.preprocess",
    "map_detections": "swdet.preprocess",
    "DynamicBatcher": "swdet.serve.batcher",
    "QueueFull": "swdet.serve.batcher",
    "BatcherClosed": "swdet.serve.batcher",
    "benchmark": "swdet.serve.bench",
    "interleaved_latency": "swdet.serve.bench",
    "VerifyReport": "swdet.serve.verify",
    "format_verify_report": "swdet.serve.verify",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
