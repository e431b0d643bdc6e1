"""ONNX export with the post-processing baked in (docs/design.md, "ONNX contract").

The graph has one input and the four EfficientNMS-convention outputs::

    images       float32 [B, 3, S, S]  RGB 0-255 (normalization is inside the graph)
    num_dets     int32   [B, 1]
    det_boxes    float32 [B, K, 4]     x1, y1, x2, y2 in input pixels
    det_scores   float32 [B, K]
    det_classes  int32   [B, K]        0..C-1 (model.json maps them to dataset ids)

B is dynamic unless ``batch`` is an int; K = ``max_det``.

How it is built:

* the architecture's row in :data:`swdet.architectures.ARCHITECTURES` names the module that
  builds its graph (:mod:`swdet.export.retinanet_export`, :mod:`swdet.export.rcnn_export`);
  both go through the shared network export (:mod:`swdet.export.network`): the network
  (normalization, backbone, FPN, head; raw outputs) goes through ``torch.onnx.export``,
  TorchScript-based exporter first, the dynamo exporter as the fallback.
* the post-processing is not traced: :mod:`swdet.export.onnx_postprocess` writes it as explicit
  ONNX nodes (anchors as constants, per-level TopK, decoding, threshold, NMS, padding) merged
  into the network graph. Its semantics are those of :mod:`swdet.models.postprocess`.
* lossless clean-up only (:func:`swdet.deploy.graph.tidy_graph`): ``Constant`` nodes become
  initializers, ``Identity`` chains and dead nodes are removed; ``onnxsim`` is used on the
  network part when it is installed (never required).
* ``onnx.checker.check_model(full_check=True)`` and strict shape inference must pass (the
  ``EfficientNMS_TRT`` plugin node has no ONNX schema: its outputs are typed by hand).
* the ``model.json`` metadata, with the export settings under ``"export"``, is stored in
  ``metadata_props["swdet"]`` (JSON) by :func:`swdet.deploy.onnx_meta.set_onnx_metadata`.

FP16 (``precision="fp16"``, for TensorRT's strongly typed mode): weights and network compute in
float16, the input stays float32 and is cast after normalization (the mean/std constants stay
float32), the head outputs are cast back to float32; decoding, threshold and NMS are float32.
ONNX Runtime's CPU provider runs such graphs (it inserts casts around kernels it has no float16
version of).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto
from torch import nn

from swdet.deploy.graph import default_opset
from swdet.deploy.onnx_meta import read_onnx_metadata
from swdet.errors import SwdetError
from swdet.export.network import (  # noqa: F401 - the export options, re-exported
    DEFAULT_OPSET,
    INPUT_NAME,
    MAX_OPSET,
    MIN_OPSET,
    ExportSettings,
    resolve_settings,
)
from swdet.export.onnx_postprocess import EFFICIENT_NMS_OP


def _resolve_model(model) -> tuple[nn.Module, dict, str]:
    if isinstance(model, (str, Path)):
        from swdet.export.strip import load_for_export

        module, meta = load_for_export(model)
        return module, meta, str(model)
    if isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], nn.Module) and isinstance(model[1], dict):
        return model[0], model[1], "model"
    raise TypeError("export_onnx: model must be a path (run directory, .safetensors, model.json, "
                    "checkpoint .pt) or a (nn.Module, metadata dict) pair")


def build_onnx(model: nn.Module, meta: dict, settings: ExportSettings, exporter: str = "auto") -> onnx.ModelProto:
    """The complete, checked graph (network + post-processing + metadata), built by the module
    the architecture's row names."""
    from swdet.architectures import architecture, load
    from swdet.artifact import model_config_from_meta

    cfg = model_config_from_meta(meta)
    arch = architecture(cfg.arch)
    if not arch.two_stage and hasattr(model, "postprocess"):
        raise SwdetError(f"export: the model does not match its architecture {cfg.arch!r}")
    return load(arch.onnx_graph)(model, meta, settings, exporter=exporter)


def export_onnx(model, out, *, imgsz: int | None = None, batch: int | str = "dynamic",
                score_threshold: float | str = "auto", nms: str = "onnx", precision: str = "fp32",
                opset: int = DEFAULT_OPSET, max_det: int | None = None, pre_nms_topk: int | None = None,
                exporter: str = "auto") -> Path:
    """Export a detector to ONNX with post-processing in the graph; returns ``out``.

    Args:
        model: a run directory, ``model.safetensors`` / ``model.json``, a training checkpoint, or a
            ``(nn.Module, model.json dict)`` pair.
        out: the ``.onnx`` file to write (atomically).
        imgsz: input size S (multiple of 32); default the model's. A different size regenerates
            the anchors (the network is fully convolutional).
        batch: ``"dynamic"`` or a fixed batch size.
        score_threshold: ``"auto"`` = ``model.json["postprocess"]["score_threshold"]`` (θ = N_f/N
            for Sampling-Free runs, see ``model.json["threshold"]``), or a number in [0, 1).
        nms: ``"onnx"`` (standard NonMaxSuppression; ONNX Runtime and TensorRT) or ``"efficient"``
            (TensorRT's EfficientNMS_TRT plugin; TensorRT only).
        precision: ``"fp32"`` or ``"fp16"`` (network in float16, post-processing in float32).
        opset: ONNX opset of the default domain (13-20).
        max_det: detections per image K (default ``model.json``).
        pre_nms_topk: candidates per level before NMS (default ``model.json``).
        exporter: ``"auto"`` (TorchScript, then dynamo), ``"torchscript"`` or ``"dynamo"``.
    """
    from swdet.artifact import atomic_write_bytes

    module, meta, _ = _resolve_model(model)
    settings = resolve_settings(meta, imgsz=imgsz, batch=batch, score_threshold=score_threshold, nms=nms,
                                precision=precision, opset=opset, max_det=max_det, pre_nms_topk=pre_nms_topk)
    proto = build_onnx(module, meta, settings, exporter=exporter)
    out = Path(out)
    data = proto.SerializeToString()
    if len(data) >= 2**31:
        raise SwdetError(f"{out}: the model is over 2 GB, which a single ONNX file cannot hold")
    atomic_write_bytes(out, data)
    return out


def graph_summary(model: onnx.ModelProto | str | Path) -> dict:
    """Facts for the CLI's closing table: opset, node count, op types, precision, nms."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    ops = [n.op_type for n in model.graph.node]
    meta = read_onnx_metadata(model) or {}
    exp = meta.get("export", {})
    opset = default_opset(model)
    nms = "efficient" if EFFICIENT_NMS_OP in ops else ("onnx" if "NonMaxSuppression" in ops else "none")
    return {"opset": opset, "nodes": len(ops), "op_types": sorted(set(ops)), "nms": nms,
            "precision": detect_precision(model), "score_threshold": exp.get("score_threshold",
                                                                             meta.get("postprocess", {}).get("score_threshold")),
            "meta": meta}


def detect_precision(model: onnx.ModelProto) -> str:
    """``int8`` when the graph has Q/DQ nodes, ``fp16`` when most float weights are float16,
    else ``fp32``."""
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        return "int8"
    sizes = {TensorProto.FLOAT: 0, TensorProto.FLOAT16: 0}
    for t in model.graph.initializer:
        if t.data_type in sizes:
            sizes[t.data_type] += int(np.prod(t.dims)) if len(t.dims) else 1
    return "fp16" if sizes[TensorProto.FLOAT16] > sizes[TensorProto.FLOAT] else "fp32"
