"""ONNX export with the post-processing baked in (DESIGN.md, "ONNX contract").

The graph has one input and the four EfficientNMS-convention outputs::

    images       float32 [B, 3, S, S]  RGB 0-255 (normalization is inside the graph)
    num_dets     int32   [B, 1]
    det_boxes    float32 [B, K, 4]     x1, y1, x2, y2 in input pixels
    det_scores   float32 [B, K]
    det_classes  int32   [B, K]        0..C-1 (model.json maps them to dataset ids)

B is dynamic unless ``batch`` is an int; K = ``max_det``.

How it is built:

* the network (normalization, backbone, FPN, head; per-level raw outputs) goes through
  ``torch.onnx.export``. The TorchScript-based exporter (``dynamo=False``) is used first: it is
  the one that behaves the same on every supported torch (2.4 has no usable ``dynamo=True``;
  2.9+ still ships the TorchScript exporter and only changed the default), it writes exactly
  the requested opset (the dynamo exporter starts at opset 18 and down-converts), it needs no
  ``onnxscript`` and no ``torch.export`` constraint solving for the dynamic batch. Where it is
  missing or fails (a future torch), the dynamo exporter is the fallback.
* the post-processing is not traced: :mod:`swdet.export.onnx_postprocess` writes it as explicit
  ONNX nodes (anchors as constants, per-level TopK, decoding, threshold, NMS, padding) merged
  into the network graph. Its semantics are those of :mod:`swdet.models.postprocess`.
* lossless clean-up only: ``Constant`` nodes become initializers, ``Identity`` chains and dead
  nodes are removed; ``onnxsim`` is used on the network part when it is installed (never required).
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

import contextlib
import copy
import importlib.util
import inspect
import io
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from torch import nn

from swdet.errors import SwdetError
from swdet.export.onnx_postprocess import (
    EFFICIENT_NMS_OP,
    TRT_DOMAIN,
    GraphBuilder,
    LevelSpec,
    build_candidates,
    build_nms,
    output_value_infos,
)
from swdet.deploy.graph import check_and_infer, default_opset, static_reshapes, tidy_graph
from swdet.deploy.onnx_meta import read_onnx_metadata, set_onnx_metadata

INPUT_NAME = "images"
MIN_OPSET = 13  # GatherND batch_dims, ReduceSum axes as input, NonMaxSuppression-11
MAX_OPSET = 20  # TensorRT 10.0's ONNX parser: opsets 9-20 (onnx-tensorrt docs/operators.md)
DEFAULT_OPSET = 17
BATCH_DIM = "batch"


@dataclass
class ExportSettings:
    """Resolved export options (what ends up under ``model.json["export"]``)."""

    imgsz: int
    batch: int | str  # an int, or "dynamic"
    score_threshold: float
    threshold_source: str  # "auto" (model.json) or "override"
    nms: str  # onnx | efficient
    precision: str  # fp32 | fp16
    opset: int
    max_det: int
    pre_nms_topk: int
    nms_iou: float
    exporter: str = ""  # filled after export: torchscript | dynamo


# ----------------------------------------------------------------------------------------------
# Inputs


def _resolve_model(model) -> tuple[nn.Module, dict, str]:
    if isinstance(model, (str, Path)):
        from swdet.export.strip import load_for_export

        module, meta = load_for_export(model)
        return module, meta, str(model)
    if isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], nn.Module) and isinstance(model[1], dict):
        return model[0], model[1], "model"
    raise TypeError("export_onnx: model must be a path (run directory, .safetensors, model.json, "
                    "checkpoint .pt) or a (nn.Module, metadata dict) pair")


def _parse_batch(batch) -> int | str:
    if isinstance(batch, str):
        if batch.strip().lower() == "dynamic":
            return "dynamic"
        try:
            batch = int(batch)
        except ValueError:
            raise SwdetError(f"--batch {batch!r}: expected a positive integer or 'dynamic'") from None
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise SwdetError(f"--batch {batch!r}: expected a positive integer or 'dynamic'")
    return batch


def resolve_settings(meta: dict, *, imgsz=None, batch="dynamic", score_threshold="auto", nms="onnx",
                     precision="fp32", opset=DEFAULT_OPSET, max_det=None, pre_nms_topk=None) -> ExportSettings:
    """Validate the options against the model's metadata; one-line errors."""
    post = meta.get("postprocess", {})
    size = int(meta["model"]["imgsz"]) if imgsz is None else imgsz
    if isinstance(size, bool) or not isinstance(size, int) or size < 64 or size % 32:
        raise SwdetError(f"--imgsz {size!r}: must be a multiple of 32, at least 64")
    if isinstance(score_threshold, str) and score_threshold.strip().lower() == "auto":
        if "score_threshold" not in post:
            raise SwdetError("model.json: postprocess.score_threshold missing; pass --score-threshold FLOAT")
        thr, source = float(post["score_threshold"]), "auto"
    else:
        try:
            thr = float(score_threshold)
        except (TypeError, ValueError):
            raise SwdetError(f"--score-threshold {score_threshold!r}: expected 'auto' or a number") from None
        source = "override"
    if not (0.0 <= thr < 1.0) or math.isnan(thr):
        raise SwdetError(f"--score-threshold {thr}: must be in [0, 1)")
    if nms not in ("onnx", "efficient"):
        raise SwdetError(f"--nms {nms!r}: choose onnx or efficient")
    if precision not in ("fp32", "fp16"):
        raise SwdetError(f"--precision {precision!r}: choose fp32 or fp16 (INT8 comes from 'swdet calib')")
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise SwdetError(f"--opset {opset!r}: must be in [{MIN_OPSET}, {MAX_OPSET}] (TensorRT 10 parses "
                         f"opsets up to {MAX_OPSET}; the post-processing needs {MIN_OPSET}+)")
    md = int(post.get("max_det", 100)) if max_det is None else max_det
    topk = int(post.get("pre_nms_topk", 1000)) if pre_nms_topk is None else pre_nms_topk
    for name, v in (("--max-det", md), ("--pre-nms-topk", topk)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SwdetError(f"{name} {v!r}: must be a positive integer")
    iou = float(post.get("nms_iou", 0.5))
    if not 0.0 <= iou <= 1.0:
        raise SwdetError(f"model.json: postprocess.nms_iou {iou} must be in [0, 1]")
    return ExportSettings(imgsz=size, batch=_parse_batch(batch), score_threshold=thr, threshold_source=source,
                          nms=nms, precision=precision, opset=opset, max_det=md, pre_nms_topk=topk, nms_iou=iou)


# ----------------------------------------------------------------------------------------------
# The network part


class _CastAfter(nn.Module):
    """``inner(x).to(dtype)``: normalization in float32, the rest of the network in ``dtype``."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.inner, self.dtype = inner, dtype

    def forward(self, x):
        return self.inner(x).to(self.dtype)


class ExportNetwork(nn.Module):
    """The detector as exported: ``images -> (cls_l ..., box_l ...)`` per level, float32."""

    def __init__(self, model: nn.Module, precision: str = "fp32"):
        super().__init__()
        net = model
        if precision == "fp16":
            net = copy.deepcopy(model).float()
            for name, child in net.named_children():
                if name != "normalize":
                    child.half()
            net.normalize = _CastAfter(net.normalize, torch.float16)
        self.net = net.eval()

    def forward(self, images):
        out = self.net(images)
        return tuple(t.float() for t in out["cls_logits"]) + tuple(t.float() for t in out["bbox_deltas"])


def _torchscript_export(net, example, names, dynamic: bool, opset: int) -> onnx.ModelProto:
    kwargs = dict(input_names=[INPUT_NAME], output_names=names, opset_version=opset, do_constant_folding=True,
                  dynamic_axes={INPUT_NAME: {0: BATCH_DIM}} if dynamic else None)
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # torch >= 2.5 has the switch; >= 2.9 defaults to True
    buf = io.BytesIO()
    torch.onnx.export(net, (example,), buf, **kwargs)
    return onnx.load_from_string(buf.getvalue())


def _dynamo_export(net, example, names, dynamic: bool, opset: int) -> onnx.ModelProto:
    kwargs = dict(input_names=[INPUT_NAME], output_names=names, opset_version=max(opset, 18), dynamo=True)
    if dynamic:
        kwargs["dynamic_shapes"] = {INPUT_NAME: {0: torch.export.Dim(BATCH_DIM, min=1, max=65536)}}
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(net, (example,), None, **kwargs)
    proto = program.model_proto
    if len(proto.functions):
        proto = onnx.inliner.inline_local_functions(proto)
    return proto


def export_network(model: nn.Module, settings: ExportSettings, names: list[str],
                   exporter: str = "auto") -> tuple[onnx.ModelProto, str]:
    """``torch.onnx.export`` of :class:`ExportNetwork`; returns ``(proto, exporter used)``."""
    net = ExportNetwork(model, settings.precision)
    dynamic = settings.batch == "dynamic"
    example = torch.rand(2 if dynamic else settings.batch, 3, settings.imgsz, settings.imgsz) * 255
    order = {"auto": ["torchscript", "dynamo"], "torchscript": ["torchscript"], "dynamo": ["dynamo"]}.get(exporter)
    if order is None:
        raise ValueError(f"exporter {exporter!r}: choose auto, torchscript or dynamo")
    failures = []
    for which in order:
        if which == "dynamo" and "dynamo" not in inspect.signature(torch.onnx.export).parameters:
            failures.append("dynamo: not in this torch")
            continue
        if which == "dynamo" and importlib.util.find_spec("onnxscript") is None:
            failures.append("dynamo: needs the onnxscript package (pip install onnxscript)")
            continue
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecation and tracer notices about our own, known graph
                fn = _torchscript_export if which == "torchscript" else _dynamo_export
                return fn(net, example, names, dynamic, settings.opset), which
        except Exception as e:  # noqa: BLE001 - try the next exporter, report all if none works
            failures.append(f"{which}: {type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}")
    raise SwdetError(f"torch.onnx.export failed ({'; '.join(failures)})")


# ----------------------------------------------------------------------------------------------
# Lossless clean-up


def _maybe_onnxsim(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        import onnxsim  # optional, never required
    except ImportError:
        return model
    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception:  # noqa: BLE001 - simplification is best effort
        return model
    return simplified if ok else model


# ----------------------------------------------------------------------------------------------
# Metadata


def export_metadata(meta: dict, settings: ExportSettings) -> dict:
    """``model.json`` with what the graph bakes in: input size, post-processing, and
    ``"export"``: the settings used."""
    import onnx as _onnx

    out = copy.deepcopy(meta)
    out["model"]["imgsz"] = settings.imgsz
    out.setdefault("input", {})["size"] = settings.imgsz
    post = out.setdefault("postprocess", {})
    post.update(score_threshold=settings.score_threshold, max_det=settings.max_det,
                pre_nms_topk=settings.pre_nms_topk, nms_iou=settings.nms_iou)
    exp = asdict(settings)
    exp["versions"] = {"torch": torch.__version__, "onnx": _onnx.__version__}
    out["export"] = exp
    return out


# ----------------------------------------------------------------------------------------------
# The whole graph


def level_specs(cfg, names_cls, names_box, pre_nms_topk: int, imgsz: int) -> list[LevelSpec]:
    from swdet.models.anchors import feature_sizes, num_anchors_per_cell

    a = num_anchors_per_cell(cfg)
    specs = []
    for c, b, n in zip(names_cls, names_box, feature_sizes(cfg, imgsz)):
        num = n * n * a
        specs.append(LevelSpec(c, b, num, min(pre_nms_topk, num * cfg.num_classes)))
    return specs


def build_onnx(model: nn.Module, meta: dict, settings: ExportSettings, exporter: str = "auto") -> onnx.ModelProto:
    """The complete, checked graph (network + post-processing + metadata)."""
    from swdet.artifact import model_config_from_meta
    from swdet.boxes import BBOX_XFORM_CLIP
    from swdet.models import RETINANET_BOX_WEIGHTS
    from swdet.models.anchors import generate_anchors

    cfg = model_config_from_meta(meta)
    if cfg.arch == "faster_rcnn":
        from swdet.export.rcnn_export import build_rcnn_onnx

        return build_rcnn_onnx(model, meta, settings, exporter=exporter)
    if cfg.arch != "retinanet" or hasattr(model, "postprocess"):
        raise SwdetError(f"export: architecture {cfg.arch!r} is not exportable (RetinaNet and Faster R-CNN only)")
    cfg.imgsz = settings.imgsz
    levels = list(range(cfg.min_level, cfg.max_level + 1))
    names_cls = [f"net/cls_logits_p{l}" for l in levels]
    names_box = [f"net/bbox_deltas_p{l}" for l in levels]
    proto, used = export_network(model, settings, names_cls + names_box, exporter)
    settings.exporter = used
    proto = static_reshapes(tidy_graph(proto))
    proto = _maybe_onnxsim(proto)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), settings.opset)
    settings.opset = int(opset)

    specs = level_specs(cfg, names_cls, names_box, settings.pre_nms_topk, settings.imgsz)
    anchors = [a.numpy() for a in generate_anchors(cfg, settings.imgsz)]
    for s, a in zip(specs, anchors):
        if a.shape[0] != s.num_anchors:
            raise RuntimeError(f"anchor count {a.shape[0]} != head outputs {s.num_anchors}")
    g = GraphBuilder("post", opset=settings.opset)
    threshold_first = settings.score_threshold if settings.nms == "onnx" and settings.score_threshold > 0 else None
    boxes, scores, classes = build_candidates(g, specs, anchors, num_classes=cfg.num_classes, imgsz=settings.imgsz,
                                              box_weights=RETINANET_BOX_WEIGHTS, box_clip=BBOX_XFORM_CLIP,
                                              threshold_first=threshold_first)
    num_candidates = None if threshold_first is not None else sum(s.topk for s in specs)
    batch = BATCH_DIM if settings.batch == "dynamic" else settings.batch
    extra_vi = build_nms(g, boxes, scores, classes, nms=settings.nms, num_candidates=num_candidates,
                         num_classes=cfg.num_classes, score_threshold=settings.score_threshold,
                         nms_iou=settings.nms_iou, max_det=settings.max_det, batch=batch)

    return finish_graph(proto, [(g.nodes, g.initializers)], meta, settings, batch, extra_vi,
                        doc="swdet detector: images [B,3,S,S] RGB 0-255 -> num_dets, det_boxes, det_scores, "
                            "det_classes")


def finish_graph(proto: onnx.ModelProto, parts, meta: dict, settings: ExportSettings, batch: int | str,
                 extra_value_info, doc: str) -> onnx.ModelProto:
    """Append the post-processing ``parts`` (``(nodes, initializers)`` pairs, in order) to the
    exported network, declare the contract outputs, name and tidy the graph, stamp producer and
    metadata, then check it (the last step of every exporter)."""
    from swdet import __version__

    graph = proto.graph
    del graph.output[:]
    for nodes, initializers in parts:
        graph.node.extend(nodes)
        graph.initializer.extend(initializers)
    graph.output.extend(output_value_infos(batch, settings.max_det))
    graph.name = "swdet_" + str(meta["model"].get("name", "detector"))
    if settings.nms == "efficient" and not any(o.domain == TRT_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(TRT_DOMAIN, 1))
    proto = tidy_graph(proto)
    proto.producer_name = "swdet"
    proto.producer_version = __version__
    proto.doc_string = doc
    set_onnx_metadata(proto, export_metadata(meta, settings))
    return check_and_infer(proto, extra_value_info=extra_value_info)


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
