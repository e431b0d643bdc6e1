"""The network part of every ONNX export, shared by the architecture exporters
(:mod:`swdet.export.retinanet_export`, :mod:`swdet.export.rcnn_export`), which import it
downward, never each other:

* the resolved export options (:class:`ExportSettings`, :func:`resolve_settings`) and the
  ``model.json`` they are stamped into (:func:`export_metadata`);
* the FP16 copy of a detector (:func:`network_copy`: weights and compute in float16, the
  input cast after the float32 normalization);
* ``torch.onnx.export`` with the exporter fallback (:func:`export_module`): the TorchScript-based
  exporter (``dynamo=False``) first -- it behaves the same on every supported torch (2.4 has no
  usable ``dynamo=True``; 2.9+ still ships it and only changed the default), writes exactly the
  requested opset, needs no ``onnxscript`` and no ``torch.export`` constraint solving for the
  dynamic batch -- then, where it is missing or fails, the dynamo exporter (it needs
  ``onnxscript``); :func:`export_dense` adds the lossless clean-up of the result;
* the last step of every exporter (:func:`finish_graph`): post-processing appended, contract
  outputs declared, metadata stored, the ONNX checker and strict shape inference.
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

import onnx
import torch
from onnx import helper
from torch import nn

from swdet.config import check_imgsz
from swdet.deploy.graph import check_and_infer, default_opset, static_reshapes, tidy_graph
from swdet.deploy.onnx_meta import set_onnx_metadata
from swdet.errors import SwdetError
from swdet.export.onnx_postprocess import TRT_DOMAIN, output_value_infos

INPUT_NAME = "images"
MIN_OPSET = 13  # GatherND batch_dims, ReduceSum axes as input, NonMaxSuppression-11
# TensorRT 10.0's ONNX parser: opsets 9-20 (https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md)
MAX_OPSET = 20
DEFAULT_OPSET = 17
BATCH_DIM = "batch"
EXPORTERS = {"auto": ("torchscript", "dynamo"), "torchscript": ("torchscript",), "dynamo": ("dynamo",)}


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

    @property
    def dynamic(self) -> bool:
        return self.batch == "dynamic"

    @property
    def batch_dim(self) -> int | str:
        """The batch dimension of the graph's inputs and outputs."""
        return BATCH_DIM if self.dynamic else self.batch


def as_float32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32: cast only what is not float32 already (an fp16 export). ``t.float()`` on
    a float32 tensor is free in eager mode but the ONNX tracer still writes a ``Cast`` node, which
    ONNX Runtime leaves in an INT8 graph after the head outputs' DequantizeLinear (7 ms per batch
    of 8 on retinanet_r50_fpn at 320 px, measured)."""
    return t if t.dtype == torch.float32 else t.float()


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
    from swdet.artifact import input_size

    post = meta.get("postprocess", {})
    size = check_imgsz(input_size(meta) if imgsz is None else imgsz, "--imgsz")
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
# The network


class CastAfter(nn.Module):
    """``inner(x).to(dtype)``: normalization in float32, the rest of the network in ``dtype``."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.inner, self.dtype = inner, dtype

    def forward(self, x):
        return self.inner(x).to(self.dtype)


def network_copy(model: nn.Module, precision: str) -> nn.Module:
    """The detector in eval mode; for ``fp16`` a copy with every child but the normalization in
    float16 (the input stays float32 and is cast after normalization)."""
    if precision != "fp16":
        return model.eval()
    net = copy.deepcopy(model).float()
    for name, child in net.named_children():
        if name != "normalize":
            child.half()
    net.normalize = CastAfter(net.normalize, torch.float16)
    return net.eval()


def example_images(settings: ExportSettings) -> torch.Tensor:
    """A traced example input: ``[B, 3, S, S]`` in 0-255 (B = 2 for a dynamic batch)."""
    batch = 2 if settings.dynamic else settings.batch
    return torch.rand(batch, 3, settings.imgsz, settings.imgsz) * 255


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


def export_module(net: nn.Module, example: torch.Tensor, names: list[str], dynamic: bool, opset: int,
                  exporter: str = "auto") -> tuple[onnx.ModelProto, str]:
    """``torch.onnx.export`` of ``net`` (input ``images``, outputs ``names``, batch axis dynamic
    or not) with the fallback of the module docstring; returns ``(proto, exporter used)``."""
    order = EXPORTERS.get(exporter)
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
                return fn(net, example, names, dynamic, opset), which
        except Exception as e:  # noqa: BLE001 - try the next exporter, report all if none works
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            failures.append(f"{which}: {type(e).__name__}: {first}")
    raise SwdetError(f"torch.onnx.export failed ({'; '.join(failures)})")


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


def export_dense(net: nn.Module, settings: ExportSettings, names: list[str], exporter: str = "auto") -> onnx.ModelProto:
    """The detector's dense part (``images -> names``) as a clean ONNX graph: exported
    (:func:`export_module`), Constants to initializers, computed Reshape targets made static,
    ``onnxsim`` when installed. Records the exporter and the opset it wrote in ``settings``."""
    proto, used = export_module(net, example_images(settings), names, settings.dynamic, settings.opset, exporter)
    settings.exporter = used
    proto = _maybe_onnxsim(static_reshapes(tidy_graph(proto)))
    settings.opset = int(default_opset(proto) or settings.opset)
    return proto


# ----------------------------------------------------------------------------------------------
# Metadata and the last step


def export_metadata(meta: dict, settings: ExportSettings) -> dict:
    """``model.json`` with what the graph bakes in: input size, post-processing, and
    ``"export"``: the settings used."""
    out = copy.deepcopy(meta)
    out["model"]["imgsz"] = settings.imgsz
    out.get("input", {}).pop("size", None)  # an older model.json's second copy of the size
    post = out.setdefault("postprocess", {})
    post.update(score_threshold=settings.score_threshold, max_det=settings.max_det,
                pre_nms_topk=settings.pre_nms_topk, nms_iou=settings.nms_iou)
    exp = asdict(settings)
    exp["versions"] = {"torch": torch.__version__, "onnx": onnx.__version__}
    out["export"] = exp
    return out


def finish_graph(proto: onnx.ModelProto, parts, meta: dict, settings: ExportSettings, extra_value_info,
                 doc: str) -> onnx.ModelProto:
    """Append the post-processing ``parts`` (``(nodes, initializers)`` pairs, in order) to the
    exported network, declare the contract outputs, name and tidy the graph, stamp producer and
    metadata, then check it (the last step of every exporter)."""
    from swdet import __version__

    graph = proto.graph
    del graph.output[:]
    for nodes, initializers in parts:
        graph.node.extend(nodes)
        graph.initializer.extend(initializers)
    graph.output.extend(output_value_infos(settings.batch_dim, settings.max_det))
    graph.name = "swdet_" + str(meta["model"].get("name", "detector"))
    if settings.nms == "efficient" and not any(o.domain == TRT_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(TRT_DOMAIN, 1))
    proto = tidy_graph(proto)
    proto.producer_name = "swdet"
    proto.producer_version = __version__
    proto.doc_string = doc
    set_onnx_metadata(proto, export_metadata(meta, settings))
    return check_and_infer(proto, extra_value_info=extra_value_info)
