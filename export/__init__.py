"""swdet.export: deployable artifacts, ONNX with baked post-processing, TensorRT, Triton.

Public API (imported lazily so ``import swdet.export`` -- and ``swdet --help`` -- stay fast)::

    to_artifact(path, out_dir=None) -> Path                       # strip: checkpoint/run -> artifact
    load_for_export(path) -> (nn.Module, meta)                     # the detector alone + model.json
    export_onnx(model, out, *, imgsz=None, batch="dynamic", score_threshold="auto", nms="onnx",
                precision="fp32", opset=17, max_det=None, pre_nms_topk=None) -> Path
    read_onnx_metadata(model_or_path) -> dict | None               # metadata_props["swdet"] (swdet.deploy.onnx_meta)
    check_tensorrt_compat(onnx_path_or_model) -> list[Problem]     # static TensorRT 10 check (swdet.deploy.trt_rules)
    format_problems(problems) -> str
    build_engine(onnx_path, out, *, min_batch=1, opt_batch=None, max_batch=None,
                 workspace_gb=None, timing_cache=None, verbose=False) -> Path
    check_engine_sidecar(engine_path) -> dict                       # TensorRT version / GPU match (swdet.deploy.engine_meta)
    write_triton_repository(onnx_or_engine, out_dir, model_name="swdet", max_batch=None,
                            preferred_batch_sizes=None, max_queue_delay_us=100) -> Path
"""

from __future__ import annotations

from swdet.lazy import lazy_exports

_EXPORTS = {
    "to_artifact": "swdet.export.strip",
    "load_for_export": "swdet.export.strip",
    "export_onnx": "swdet.export.onnx_export",
    "read_onnx_metadata": "swdet.deploy.onnx_meta",  # core: shared with calib and serve
    "check_tensorrt_compat": "swdet.deploy.trt_rules",  # core: shared with calib
    "format_problems": "swdet.deploy.trt_rules",
    "Problem": "swdet.deploy.trt_rules",
    "build_engine": "swdet.export.tensorrt_build",
    "check_engine_sidecar": "swdet.deploy.engine_meta",  # core: shared with serve
    "sidecar_path": "swdet.deploy.engine_meta",
    "write_triton_repository": "swdet.export.triton",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
