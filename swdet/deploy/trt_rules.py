"""Static check of an ONNX graph against what TensorRT 10's ONNX parser accepts.

It runs without TensorRT (no GPU needed) so ``swdet export`` can refuse a graph before anyone
waits for a build, and tells which node is at fault. Pure ONNX rules, so it lives in core:
``swdet.export`` checks before building, ``swdet.calib`` checks the graph it writes (calib
must not import export), and ``swdet.export`` re-exports the public names.

Sources (looked up, encoded here, not copied):

* https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md (the operator support matrix of the TensorRT 10.x
  parser: supported opsets 9-20 in 10.0, up to 24 in later 10.x; the supported / unsupported
  operators and their restrictions, e.g. ``TopK``: ``sorted`` must be 1 and ``K`` below 3840
  (a run-time K is accepted by 10.x; 8.x required an initializer);
  ``QuantizeLinear`` / ``DequantizeLinear``: zero point must be 0; ``Resize`` modes;
  ``ScatterND``: no reduction; INT8 only as a quantized type);
* TensorRT's quantization guide (explicit quantization: symmetric signed INT8, Q/DQ pairs,
  per-tensor scales on activations, per-channel scales on weights along the output-channel axis);
* TensorRT's NMS layer docs (``IINMSLayer``: at most 5000 boxes per image considered; the
  NonMaxSuppression scalar inputs must be build-time constants) and the EfficientNMS_TRT plugin
  README / PluginConfig.yaml (attributes, their types and ranges, plugin version "1");
* TensorRT optimization profiles: swdet builds profiles on the batch axis only, so any other
  dynamic input dimension is an error.

:func:`check_tensorrt_compat` returns a list of :class:`Problem`; errors make TensorRT fail (or
swdet refuse to build), warnings are things that build but may behave differently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from swdet.deploy.graph import default_opset, load_onnx

OPSET_MIN, OPSET_MAX_10_0, OPSET_MAX = 9, 20, 24
TOPK_MAX_K = 3840  # "K input must be less than 3840"
NMS_TOPK_BOX_LIMIT = 5000  # INMSLayer TopK box limit (2000 on SM 5.3 / 6.2)
EFFICIENT_NMS_MAX_SELECTED = 4096  # the plugin sorts at most this many scores per image

# Operators the TensorRT 10 ONNX parser supports (operator support matrix, "Y" rows).
SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization
BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike
Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
Greater GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish
Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less
LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RMSNormalization RNN
RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink
Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan
Tanh TensorScatter ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())
# Supported only by recent 10.x parsers (10.15 changelog): a warning, not an error.
RECENT_OPS = frozenset({"Attention", "RotaryEmbedding", "RMSNormalization", "TensorScatter"})
# Listed as not supported ("N" rows).
UNSUPPORTED_OPS = frozenset("""
AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor CenterCropPad Col2Im Compress
ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear ImageDecoder MatMulInteger MaxRoiPool
MaxUnpool MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement
OptionalHasElement QLinearConv QLinearMatMul RegexFullMatch SequenceAt SequenceConstruct SequenceEmpty
SequenceErase SequenceInsert SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence
StringConcat StringNormalizer StringSplit TfIdfVectorizer Unique
""".split())
# Plugins registered by TensorRT's plugin library that swdet may emit or meet.
KNOWN_PLUGINS = frozenset({"EfficientNMS_TRT", "BatchedNMSDynamic_TRT", "BatchedNMS_TRT", "RoIAlign_TRT",
                           "ScatterND", "InstanceNormalization_TRT"})
EFFICIENT_NMS_ATTRS = {  # name: (type, required)
    "score_threshold": ("float", True),
    "iou_threshold": ("float", True),
    "max_output_boxes": ("int", True),
    "background_class": ("int", True),
    "score_activation": ("int", True),
    "class_agnostic": ("int", False),
    "box_coding": ("int", True),
    "plugin_version": ("str", False),
    "plugin_namespace": ("str", False),
}
RESIZE_MODES = {"nearest", "linear"}
RESIZE_COORD = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
# Element types TensorRT has no representation for (INT8/UINT8/DOUBLE are handled separately).
UNSUPPORTED_TYPES = {TensorProto.INT16: "INT16", TensorProto.UINT16: "UINT16", TensorProto.UINT32: "UINT32",
                     TensorProto.UINT64: "UINT64", TensorProto.STRING: "STRING",
                     TensorProto.COMPLEX64: "COMPLEX64", TensorProto.COMPLEX128: "COMPLEX128"}
CAST_TARGETS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.INT32,
                TensorProto.INT64, TensorProto.UINT8, TensorProto.BOOL}
AXES_FROM_INPUT = {  # op: input index of an "axes"-like tensor that must be a build-time constant
    "Squeeze": 1, "Unsqueeze": 1, "Slice": 3, "ReduceSum": 1, "ReduceMean": 1, "ReduceMax": 1,
    "ReduceMin": 1, "ReduceProd": 1, "ReduceL1": 1, "ReduceL2": 1, "ReduceLogSum": 1,
    "ReduceLogSumExp": 1, "ReduceSumSquare": 1, "CumSum": 1, "OneHot": 1,
}
POST_PROCESS_OPS = {"TopK", "NonMaxSuppression", "EfficientNMS_TRT"}


@dataclass(frozen=True)
class Problem:
    """One finding: ``severity`` is ``"error"`` (TensorRT fails or swdet refuses) or
    ``"warning"``."""

    severity: str
    node: str
    op: str
    message: str

    def __str__(self) -> str:
        where = f"{self.node} ({self.op})" if self.op else self.node
        return f"{self.severity}: {where}: {self.message}"


class _Graph:
    """Lookups over one (inlined) graph: constants, producers, consumers, tensor types."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.g = g
        self.inits = {t.name: t for t in g.initializer}
        self.const_nodes = {n.output[0]: n for n in g.node if n.op_type == "Constant" and n.output}
        self.producer = {o: n for n in g.node for o in n.output if o}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for n in g.node:
            for i, name in enumerate(n.input):
                if name:
                    self.consumers.setdefault(name, []).append((n, i))
        self.types: dict[str, int] = {}
        self.shapes: dict[str, list] = {}
        for v in list(g.input) + list(g.value_info) + list(g.output):
            t = v.type.tensor_type
            if t.elem_type:
                self.types[v.name] = t.elem_type
            if t.HasField("shape"):
                self.shapes[v.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                       for d in t.shape.dim]
        for name, t in self.inits.items():
            self.types[name] = t.data_type
            self.shapes[name] = list(t.dims)

    def is_const(self, name: str) -> bool:
        return name in self.inits or name in self.const_nodes

    def value(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        n = self.const_nodes.get(name)
        if n is not None:
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
                if a.name in ("value_float", "value_int"):
                    return np.array(a.f if a.name == "value_float" else a.i)
                if a.name in ("value_floats", "value_ints"):
                    return np.array(a.floats if a.name == "value_floats" else a.ints)
        return None


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _name(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"node#{index}"


def _post_region(gr: _Graph) -> set[str]:
    """Names of nodes at or after the post-processing: swdet's ``post/`` nodes and everything
    downstream of a TopK / NonMaxSuppression / EfficientNMS."""
    region: set[str] = set()
    stack = [n for n in gr.g.node if n.op_type in POST_PROCESS_OPS or n.name.startswith("post/")]
    seen = set()
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        region.add(n.name)
        for o in n.output:
            for c, _ in gr.consumers.get(o, []):
                stack.append(c)
    return region


def _weight_axis(gr: _Graph, dq: onnx.NodeProto) -> int | None:
    """The output-channel axis a per-channel weight scale must use, from the DQ's consumer."""
    for consumer, idx in gr.consumers.get(dq.output[0], []):
        if consumer.op_type == "Conv" and idx == 1:
            return 0  # W [O, I/g, k...]
        if consumer.op_type == "ConvTranspose" and idx == 1:
            return 1  # W [I, O/g, k...]
        if consumer.op_type == "Gemm" and idx == 1:
            return 0 if _attr(consumer, "transB", 0) else 1
        if consumer.op_type == "MatMul" and idx == 1:
            return -1  # B [..., K, N]: N is the last axis
    return None


def _check_qdq(gr: _Graph, node: onnx.NodeProto, where: str, post: set[str], out: list[Problem]) -> None:
    op = node.op_type
    add = lambda sev, msg: out.append(Problem(sev, where, op, msg))  # noqa: E731
    if node.name in post:
        add("error", "quantization inside the post-processing (decoding, thresholds and NMS must stay "
                     "float32; quantize the network only)")
    scale_name = node.input[1] if len(node.input) > 1 else ""
    zp_name = node.input[2] if len(node.input) > 2 else ""
    if not scale_name or not gr.is_const(scale_name):
        add("error", "scale must be a constant (initializer)")
        scale = None
    else:
        scale = gr.value(scale_name)
        if scale is not None and (not np.all(np.isfinite(scale)) or np.any(scale <= 0)):
            add("error", "scale must be positive and finite")
    if zp_name:
        if not gr.is_const(zp_name):
            add("error", "zero point must be a constant (initializer)")
        else:
            zp = gr.value(zp_name)
            if zp is not None and np.any(zp != 0):
                add("error", "non-zero zero point: TensorRT supports symmetric quantization only "
                             "(y_zero_point / x_zero_point must be 0)")
            ztype = gr.types.get(zp_name)
            if ztype is not None and ztype not in (TensorProto.INT8, TensorProto.FLOAT8E4M3FN, TensorProto.INT4):
                add("error", f"zero point type {TensorProto.DataType.Name(ztype)}: TensorRT quantizes to "
                             "signed INT8 (give an int8 zero point of 0)")
    elif op == "QuantizeLinear":
        add("warning", "no zero point: ONNX then means uint8 (ONNX Runtime clamps negatives) while "
                       "TensorRT quantizes to int8; give an int8 zero point of 0")
    per_channel = scale is not None and scale.size > 1
    data = node.input[0]
    is_weight = op == "DequantizeLinear" and gr.is_const(data)
    if per_channel:
        if not is_weight:
            add("error", "per-channel scale on an activation: activations must be quantized per tensor")
        else:
            want = _weight_axis(gr, node)
            axis = int(_attr(node, "axis", 1))
            rank = len(gr.shapes.get(data, [])) or None
            if want is not None and rank:
                if want < 0:
                    want += rank
                if axis < 0:
                    axis += rank
                if axis != want:
                    add("error", f"per-channel weight scale along axis {axis}; TensorRT needs the "
                                 f"output-channel axis {want}")
    if op == "QuantizeLinear":
        consumers = gr.consumers.get(node.output[0], [])
        if not consumers or any(c.op_type != "DequantizeLinear" for c, _ in consumers):
            add("error", "QuantizeLinear must feed DequantizeLinear nodes only (Q/DQ pairs)")
    else:  # DequantizeLinear
        src = gr.producer.get(data)
        if not is_weight and (src is None or src.op_type != "QuantizeLinear"):
            add("error", "DequantizeLinear input must be a quantized constant (weights) or a "
                         "QuantizeLinear output (Q/DQ pairs)")


def _check_efficient_nms(gr: _Graph, node: onnx.NodeProto, where: str, out: list[Problem]) -> None:
    op = node.op_type
    add = lambda sev, msg: out.append(Problem(sev, where, op, msg))  # noqa: E731
    attrs = {a.name: a for a in node.attribute}
    kinds = {onnx.AttributeProto.FLOAT: "float", onnx.AttributeProto.INT: "int", onnx.AttributeProto.STRING: "str"}
    for name, (kind, required) in EFFICIENT_NMS_ATTRS.items():
        a = attrs.get(name)
        if a is None:
            if required:
                add("error", f"missing attribute {name}")
            continue
        if kinds.get(a.type) != kind:
            add("error", f"attribute {name} must be a {kind}")
    for name in attrs:
        if name not in EFFICIENT_NMS_ATTRS:
            add("warning", f"unknown attribute {name} (ignored by the plugin)")
    v = {n: onnx.helper.get_attribute_value(a) for n, a in attrs.items()}
    if isinstance(v.get("score_threshold"), float) and v["score_threshold"] < 0:
        add("error", "score_threshold must be >= 0")
    iou = v.get("iou_threshold")
    if isinstance(iou, float) and not 0.0 < iou <= 1.0:
        add("error", f"iou_threshold {iou} must be in (0, 1]")
    mob = v.get("max_output_boxes")
    if isinstance(mob, int):
        if mob <= 0:
            add("error", "max_output_boxes must be positive")
        elif mob > EFFICIENT_NMS_MAX_SELECTED:
            add("warning", f"max_output_boxes {mob} > {EFFICIENT_NMS_MAX_SELECTED}: the plugin only "
                           f"considers the {EFFICIENT_NMS_MAX_SELECTED} best scores per image")
    for name in ("score_activation", "class_agnostic", "box_coding"):
        if name in v and isinstance(v[name], int) and v[name] not in (0, 1):
            add("error", f"{name} must be 0 or 1, got {v[name]}")
    ver = v.get("plugin_version")
    if isinstance(ver, bytes):
        ver = ver.decode()
    if ver is not None and ver != "1":
        add("error", f"plugin_version {ver!r}: EfficientNMS_TRT has version \"1\"")
    if len(node.input) not in (2, 3):
        add("error", f"{len(node.input)} inputs; expects boxes, scores and optionally anchors")
    if len(node.output) != 4:
        add("error", f"{len(node.output)} outputs; produces num_detections, detection_boxes, "
                     "detection_scores, detection_classes")
    if node.input:
        boxes = gr.shapes.get(node.input[0])
        if boxes and (len(boxes) not in (3, 4) or boxes[-1] not in (4, None)):
            add("error", f"boxes input shape {boxes}: expected [B, N, 4] or [B, N, C, 4]")
    if len(node.input) > 1:
        scores = gr.shapes.get(node.input[1])
        if scores and len(scores) != 3:
            add("error", f"scores input shape {scores}: expected [B, N, C]")


def _upper_bound(gr: _Graph, name: str, depth: int = 0) -> int | None:
    """An upper bound of an integer tensor from constants through ``Min`` / ``Max`` / shape-only
    ops (how swdet clamps a run-time TopK K), or None when none is visible."""
    if gr.is_const(name):
        v = gr.value(name)
        return None if v is None or v.size == 0 else int(np.max(v))
    node = gr.producer.get(name)
    if node is None or depth > 16:
        return None
    bounds = [_upper_bound(gr, i, depth + 1) for i in node.input if i]
    if node.op_type == "Min":
        known = [b for b in bounds if b is not None]
        return min(known) if known else None
    if node.op_type == "Max":
        return None if not bounds or any(b is None for b in bounds) else max(bounds)
    if node.op_type in ("Reshape", "Squeeze", "Unsqueeze", "Identity", "Cast") and bounds:
        return bounds[0]
    return None


# ----------------------------------------------------------------------------------------------
# Per-operator rules: one function per operator family, looked up in OP_RULES (each adds the
# problems it finds with ``add(severity, message)``)


def _rule_topk(gr: _Graph, node: onnx.NodeProto, add, where: str, post: set[str], out: list[Problem]) -> None:
    k_name = node.input[1] if len(node.input) > 1 else ""
    if not k_name:
        add("error", "TopK without a K input")
    elif gr.is_const(k_name):
        k = gr.value(k_name)
        if k is not None and int(np.max(k)) >= TOPK_MAX_K:
            add("error", f"K = {int(np.max(k))}: TensorRT's TopK needs K < {TOPK_MAX_K}")
    else:
        bound = _upper_bound(gr, k_name)
        if bound is None:
            add("warning", f"K is computed at run time with no visible bound: TensorRT's TopK fails for "
                           f"K >= {TOPK_MAX_K} (and TensorRT 8.x parsers need K as an initializer)")
        elif bound >= TOPK_MAX_K:
            add("error", f"K is computed at run time and may reach {bound}: TensorRT's TopK needs "
                         f"K < {TOPK_MAX_K}")
    if int(_attr(node, "sorted", 1)) != 1:
        add("error", "sorted must be 1")


def _rule_nms(gr: _Graph, node: onnx.NodeProto, add, where: str, post: set[str], out: list[Problem]) -> None:
    for idx, what in ((2, "max_output_boxes_per_class"), (3, "iou_threshold"), (4, "score_threshold")):
        if len(node.input) > idx and node.input[idx] and not gr.is_const(node.input[idx]):
            add("error", f"{what} must be a constant (initializer)")
    boxes = gr.shapes.get(node.input[0])
    if boxes and len(boxes) == 3 and isinstance(boxes[1], int) and boxes[1] > NMS_TOPK_BOX_LIMIT:
        add("warning", f"{boxes[1]} boxes per image: TensorRT's NMS layer considers at most "
                       f"{NMS_TOPK_BOX_LIMIT} (lower pre_nms_topk)")


def _rule_qdq(gr: _Graph, node: onnx.NodeProto, add, where: str, post: set[str], out: list[Problem]) -> None:
    _check_qdq(gr, node, where, post, out)


def _rule_resize(gr: _Graph, node: onnx.NodeProto, add, where: str, post: set[str], out: list[Problem]) -> None:
    mode = _attr(node, "mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode not in RESIZE_MODES:
        add("error", f"mode {mode!r}: TensorRT supports nearest and linear")
    coord = _attr(node, "coordinate_transformation_mode", b"half_pixel")
    coord = coord.decode() if isinstance(coord, bytes) else coord
    if coord not in RESIZE_COORD:
        add("error", f"coordinate_transformation_mode {coord!r} is not supported")
    if mode == "nearest":
        nm = _attr(node, "nearest_mode", b"round_prefer_floor")
        nm = nm.decode() if isinstance(nm, bytes) else nm
        if nm not in RESIZE_NEAREST:
            add("error", f"nearest_mode {nm!r} is not supported")
    if int(_attr(node, "antialias", 0)):
        add("error", "antialiasing is not supported")
    policy = _attr(node, "keep_aspect_ratio_policy", b"stretch")
    if (policy.decode() if isinstance(policy, bytes) else policy) != "stretch":
        add("error", "keep_aspect_ratio_policy must be stretch")


def _rule_scatternd(gr: _Graph, node: onnx.NodeProto, add, where: str, post: set[str], out: list[Problem]) -> None:
    red = _attr(node, "reduction", b"none")
    if (red.decode() if isinstance(red, bytes) else red) != "none":
        add("error", "reduction other than none is not supported")


def _rule_pool(gr: _Graph, node: onnx.NodeProto, add, where: str, post: set[str], out: list[Problem]) -> None:
    op = node.op_type
    k = _attr(node, "kernel_shape", [])
    if len(k) not in (2, 3):
        add("error", f"{len(k)}-D pooling: TensorRT pools in 2-D or 3-D only")
    dil = _attr(node, "dilations", None)
    if dil and any(d != 1 for d in dil):
        add("error", "dilations must be empty or all ones")
    if op == "MaxPool" and len(node.output) > 1 and node.output[1]:
        add("error", "the Indices output is not supported")


def _rule_dropout(gr: _Graph, node: onnx.NodeProto, add, where: str, post: set[str], out: list[Problem]) -> None:
    if len(node.input) > 2 and node.input[2]:
        v = gr.value(node.input[2])
        if v is None or bool(np.any(v)):
            add("error", "is_training must be a constant False")


def _rule_cast(gr: _Graph, node: onnx.NodeProto, add, where: str, post: set[str], out: list[Problem]) -> None:
    to = int(_attr(node, "to", 0))
    if to == TensorProto.DOUBLE:
        add("warning", "cast to DOUBLE: TensorRT computes in FLOAT")
    elif to not in CAST_TARGETS:
        add("error", f"cast to {TensorProto.DataType.Name(to)} is not supported")


def _rule_lstm(gr: _Graph, node: onnx.NodeProto, add, where: str, post: set[str], out: list[Problem]) -> None:
    if int(_attr(node, "input_forget", 0)) or int(_attr(node, "layout", 0)):
        add("error", "input_forget and layout must be 0")


OP_RULES = {  # op type -> its rule (operators without one only need to be supported)
    "TopK": _rule_topk,
    "NonMaxSuppression": _rule_nms,
    "QuantizeLinear": _rule_qdq,
    "DequantizeLinear": _rule_qdq,
    "Resize": _rule_resize,
    "ScatterND": _rule_scatternd,
    "MaxPool": _rule_pool,
    "AveragePool": _rule_pool,
    "LpPool": _rule_pool,
    "Dropout": _rule_dropout,
    "Cast": _rule_cast,
    "LSTM": _rule_lstm,
}


def _check_node(gr: _Graph, node: onnx.NodeProto, where: str, post: set[str], out: list[Problem]) -> None:
    op = node.op_type
    add = lambda sev, msg: out.append(Problem(sev, where, op, msg))  # noqa: E731
    domain = node.domain or ""
    if domain not in ("", "ai.onnx"):
        if domain == "com.microsoft":
            add("error", "ONNX Runtime contrib operator (com.microsoft): not parsed by TensorRT")
        elif op == "EfficientNMS_TRT":
            _check_efficient_nms(gr, node, where, out)
        elif op in KNOWN_PLUGINS:
            add("warning", f"TensorRT plugin from domain {domain!r}: needs TensorRT's plugin library")
        else:
            add("warning", f"custom operator from domain {domain!r}: TensorRT needs a plugin named {op}")
        return
    if op in UNSUPPORTED_OPS:
        add("error", "not supported by TensorRT's ONNX parser")
        return
    if op not in SUPPORTED_OPS:
        if op == "EfficientNMS_TRT":  # found by the parser's plugin fallback in any domain
            _check_efficient_nms(gr, node, where, out)
            return
        if op in KNOWN_PLUGINS:
            add("warning", "TensorRT plugin: needs TensorRT's plugin library")
            return
        add("error", "not in TensorRT's ONNX operator support matrix")
        return
    if op in RECENT_OPS:
        add("warning", "supported only by recent TensorRT 10.x parsers")

    rule = OP_RULES.get(op)
    if rule is not None:
        rule(gr, node, add, where, post, out)
    if op in AXES_FROM_INPUT:
        idx = AXES_FROM_INPUT[op]
        if len(node.input) > idx and node.input[idx] and not gr.is_const(node.input[idx]):
            add("warning", "axes (or axis/depth) computed at run time; TensorRT needs a build-time constant")


def _check_types(gr: _Graph, out: list[Problem]) -> None:
    quantized_ok = set()
    for n in gr.g.node:
        if n.op_type == "QuantizeLinear":
            quantized_ok.update(o for o in n.output)
        if n.op_type == "DequantizeLinear":
            quantized_ok.update(i for i in n.input[:1])
            if len(n.input) > 2:
                quantized_ok.add(n.input[2])
        if n.op_type == "QuantizeLinear" and len(n.input) > 2:
            quantized_ok.add(n.input[2])
    for name, t in sorted(gr.types.items()):
        if t in UNSUPPORTED_TYPES:
            out.append(Problem("error", name, "", f"tensor of type {UNSUPPORTED_TYPES[t]}: not supported"))
        elif t == TensorProto.INT8 and name not in quantized_ok:
            out.append(Problem("error", name, "", "INT8 tensor outside a Q/DQ pair: TensorRT has INT8 only "
                                                  "as a quantized type"))
        elif t == TensorProto.DOUBLE:
            out.append(Problem("warning", name, "", "DOUBLE tensor: TensorRT casts it to FLOAT"))
    int32 = np.iinfo(np.int32)
    for name, init in gr.inits.items():
        if init.data_type != TensorProto.INT64:
            continue
        v = numpy_helper.to_array(init)
        if v.size and (v.min() < int32.min or v.max() > int32.max):
            consumers = gr.consumers.get(name, [])
            if consumers and all(c.op_type == "Slice" and i in (1, 2) for c, i in consumers):
                continue  # Slice starts/ends of INT64_MAX mean "to the end"; clamping is harmless
            out.append(Problem("warning", name, "", "INT64 constant outside the INT32 range: TensorRT "
                                                    "clamps it where it needs INT32"))


def _check_io(gr: _Graph, out: list[Problem]) -> None:
    for v in gr.g.input:
        if v.name in gr.inits:
            continue
        t = v.type.tensor_type
        if not t.HasField("shape"):
            out.append(Problem("error", v.name, "input", "unknown rank: TensorRT needs static ranks"))
            continue
        for axis, d in enumerate(t.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                continue
            if axis != 0:
                out.append(Problem("error", v.name, "input", f"dynamic dimension {axis} "
                                   f"({d.dim_param or '?'}): only the batch axis (0) may be dynamic"))
        if t.elem_type == TensorProto.INT64:
            out.append(Problem("warning", v.name, "input", "INT64 input: use INT32 or FLOAT for portability"))
    for v in gr.g.output:
        t = v.type.tensor_type
        if t.HasField("shape"):
            dyn = [a for a, d in enumerate(t.shape.dim) if a != 0 and not (d.HasField("dim_value") and d.dim_value > 0)]
            if dyn:
                out.append(Problem("warning", v.name, "output", f"data-dependent dimension(s) {dyn}: "
                                   "the caller must size its buffers at run time"))


def check_tensorrt_compat(model: onnx.ModelProto | str | Path) -> list[Problem]:
    """Static TensorRT 10 compatibility check of an ONNX model (path or proto); returns the
    problems, errors first."""
    model = load_onnx(model)
    problems: list[Problem] = []
    opset = default_opset(model)
    if opset is None:
        problems.append(Problem("error", "model", "", "no default-domain opset import"))
    elif opset < OPSET_MIN:
        problems.append(Problem("error", "model", "", f"opset {opset}: TensorRT 10 parses opsets {OPSET_MIN}+"))
    elif opset > OPSET_MAX:
        problems.append(Problem("error", "model", "", f"opset {opset}: TensorRT 10 parses opsets up to {OPSET_MAX}"))
    elif opset > OPSET_MAX_10_0:
        problems.append(Problem("warning", "model", "", f"opset {opset}: needs a TensorRT 10.x newer than "
                                                        f"10.0 (which parses up to {OPSET_MAX_10_0})"))
    if len(model.functions):
        try:
            model = onnx.inliner.inline_local_functions(model)
        except Exception:  # noqa: BLE001 - checking the outer graph still helps
            problems.append(Problem("warning", "model", "", "local functions could not be inlined for checking"))
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - a graph shape inference cannot type is still checked
        pass
    gr = _Graph(model)
    post = _post_region(gr)
    for i, node in enumerate(model.graph.node):
        _check_node(gr, node, _name(node, i), post, problems)
        for a in node.attribute:  # If / Loop / Scan bodies
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                sub_model = onnx.helper.make_model(sub, opset_imports=model.opset_import)
                for j, sn in enumerate(sub.node):
                    _check_node(_Graph(sub_model), sn, f"{_name(node, i)}/{_name(sn, j)}", set(), problems)
    _check_types(gr, problems)
    _check_io(gr, problems)
    problems.sort(key=lambda p: p.severity != "error")
    return problems


def has_errors(problems: list[Problem]) -> bool:
    return any(p.severity == "error" for p in problems)


def format_problems(problems: list[Problem]) -> str:
    """One readable list: a count line, then one line per problem (errors first)."""
    if not problems:
        return "TensorRT static check: no problems"
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    lines = [f"TensorRT static check: {errors} error(s), {warnings} warning(s)"]
    lines += [f"  {p}" for p in problems]
    return "\n".join(lines)
