"""swdet.calib: INT8 post-training quantization of an swdet ONNX export to an explicitly
quantized (Q/DQ) ONNX model that TensorRT builds as a strongly typed INT8 engine.

Public API (imported lazily so ``import swdet.calib`` -- and ``swdet --help`` -- stay fast)::

    calibrate(model_path, images, out, *, num_images=128, method="percentile", percentile=99.99,
              per_channel=True, exclude=(), cache=None, use_cache=True, report=False,
              report_images=4, batch_size=4, seed=0, verify=True, rewrite=True, head_outputs="int8",
              stem="float", progress=False, log=None) -> CalibResult
    load_fp32_model(path) -> (onnx.ModelProto, metadata, bytes)   # validation of the input
    split_network(model) -> Split                                   # network / post-processing
    quantize_network(network, amax, *, per_channel=True, exclude=(), nodes_to_quantize=None,
                     float_outputs=(), one_reader=False) -> onnx.ModelProto
    rewrite_for_int8(network, keep=()) -> (onnx.ModelProto, RewriteReport)  # FP32 rewrites
    stem_convs(network) -> [Conv names]                             # the image stem (<= 4 channels)
    ort_conv_counts(model, int8_allowed=None) -> {"int8", "float", "total", "float_convs", "ops"}
    zero_points(model) -> [(name, elem_type, values)]
    default_cache_path(model_path) -> Path                          # model.onnx -> model.calib.npz
    verify_runs(path, batch_sizes=(1, 8))
    METHODS = ("entropy", "percentile", "minmax")
"""

from __future__ import annotations

from swdet.lazy import lazy_exports

_EXPORTS = {
    "calibrate": "swdet.calib.quantize",
    "CalibResult": "swdet.calib.quantize",
    "load_fp32_model": "swdet.calib.quantize",
    "split_network": "swdet.calib.quantize",
    "preprocess_network": "swdet.calib.quantize",
    "quantize_network": "swdet.calib.quantize",
    "zero_points": "swdet.calib.quantize",
    "quantized_nodes": "swdet.calib.quantize",
    "default_cache_path": "swdet.calib.quantize",
    "verify_runs": "swdet.calib.quantize",
    "summary_row": "swdet.calib.quantize",
    "rewrite_for_int8": "swdet.calib.fusion",
    "merge_sibling_convs": "swdet.calib.fusion",
    "duplicate_shared_convs": "swdet.calib.fusion",
    "channels_last_group_norms": "swdet.calib.fusion",
    "stem_convs": "swdet.calib.quantize",
    "ort_conv_counts": "swdet.calib.fusion",
    "ort_optimized_graph": "swdet.calib.fusion",
    "METHODS": "swdet.calib.stats",
    "CalibrationStats": "swdet.calib.stats",
    "load_cache": "swdet.calib.stats",
    "sensitivity": "swdet.calib.report",
    "format_report": "swdet.calib.report",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
