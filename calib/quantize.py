"""INT8 post-training quantization of an swdet ONNX export to an explicitly quantized (Q/DQ)
model, following TensorRT's rules for explicit quantization.

TensorRT 11 builds INT8 engines only from Q/DQ graphs (no implicit calibrators), so calibration is
a stage of its own that runs anywhere ONNX Runtime does. The mechanics are ONNX Runtime's static
quantization tooling (``onnxruntime.quantization``): ``quant_pre_process`` for the graph clean-up,
its histogram collectors for the statistics (:mod:`swdet.calib.stats`), and ``QDQQuantizer`` (the
quantizer behind ``quantize_static``) to insert the Q/DQ nodes. swdet adds what is specific to a
detector with baked-in post-processing:

1. **Split.** The export names the network/post-processing boundary tensors ``net/cls_logits_p*``
   and ``net/bbox_deltas_p*``. The network is every node those tensors depend on; everything
   else (sigmoid, top-k, decoding, threshold, NMS) is post-processing. Only the network goes
   through ORT's tools; the post-processing nodes are put back untouched afterwards, so decoding,
   threshold and NMS stay float32 by construction (and an ``EfficientNMS_TRT`` export, which ONNX
   Runtime cannot run, can still be calibrated).
2. **Pre-process** the network with ``quant_pre_process`` (ONNX shape inference and ORT's basic,
   hardware-independent optimizations): e.g. frozen batch-norm ``Mul``/``Add`` after a ``Conv``
   are folded into its weights, so the quantized weights are the ones that run.
3. **Calibrate**: one pass over the images for every candidate tensor (cached, see
   :mod:`swdet.calib.stats`); per-method thresholds ``amax``.
4. **Quantize** with ``QDQQuantizer``. Settings and why:

   * ``activation_type = weight_type = QInt8``, ``ActivationSymmetric`` and ``WeightSymmetric``:
     signed INT8 with every zero point 0, the only INT8 scheme TensorRT implements;
     ``scale = amax / 127``.
   * ``per_channel`` (default) with the Conv weight axis 0 (output channels), as TensorRT
     requires; ``--per-tensor`` gives one weight scale per tensor. Activations are per tensor.
   * ``QuantizeBias = False``: biases stay float (TensorRT quantizes nothing but Q/DQ-marked
     tensors and fuses the bias itself; ORT re-quantizes it to int32 at load time).
   * op types ``Conv``, ``Relu`` and ``Add``: Q/DQ on the inputs of every convolution (weights
     through a DequantizeLinear of int8 initializers), on both inputs of the residual and FPN
     additions (``Add`` of two activations, which TensorRT fuses into the preceding convolution;
     an ``Add`` with a constant, e.g. a GroupNorm affine, stays float) and on convolution outputs.
     With ``Relu`` quantized the convolution output before a ReLU gets the ReLU output's range,
     so pre-activation negatives do not cost resolution. Normalizations, resizes, reshapes and
     everything in float between two quantized tensors keep float32.
   * ``DedicatedQDQPair``: one Q/DQ pair per consumer, each with its own scale and zero-point
     initializers (so ONNX Runtime's common-subexpression elimination cannot merge them back);
     with ``rewrite`` (default) also one pair per reader of a DequantizeLinear the quantizer
     shared with a non-quantized node (e.g. an FPN sum read by a convolution and by the next
     ``Resize``). TensorRT treats the copies as one.
   * the head's prediction convolutions (the last Conv before each ``net/`` tensor) have int8
     inputs and weights; their output gets a Q/DQ pair too (``head_outputs="int8"``, default:
     an int8 convolution whose output is dequantized before the post-processing) or stays
     float32 (``"float"``: the logits and box deltas are never rounded to int8; TensorRT: an
     INT8 convolution with an FP32 output; ONNX Runtime: a float convolution).
   * the image stem (every convolution with at most 4 input channels, :func:`stem_convs`) stays
     float32 (``stem="float"``, default; ``"int8"`` quantizes it). With 3 input channels a 3x3
     convolution's int8 GEMM has a reduction depth of 27, too shallow for the int8 kernels: on
     the 2-core AVX-512 development machine ONNX Runtime ran retinanet_tiny's stem convolution
     in 2.8 ms as int8 against 1.8 ms as float32 (batch 8, 320 px). Its output is quantized
     for the next convolution as before.

   Why the rewrite (2b, :mod:`swdet.calib.fusion`): ONNX Runtime's CPU provider turns
   ``DQ -> Conv -> Q`` into an int8 ``QLinearConv`` only when the convolution's output has that
   single Q as its reader (its x86 kernels take uint8 activations and its ``QDQS8ToU8`` pass
   converts a signed pair only where the Q feeds one DQ). Before quantization, the FP32 network
   is rewritten exactly so that every convolution output has one reader: the head towers' first
   convolutions are merged into one (output channels concatenated, then a ``Split``), and a
   convolution still read twice (the top FPN lateral; ``P6``) is duplicated.
   :func:`swdet.calib.fusion.ort_conv_counts` counts what ORT runs as float vs int8
   (retinanet_tiny: 13 float of 45 before, 0 of 42 after).
5. **Stitch** the post-processing back, store the swdet metadata (``export.precision = "int8"``
   and a ``calibration`` section), check with the ONNX checker and
   :func:`swdet.deploy.trt_rules.check_tensorrt_compat`, write atomically.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import hashlib
import io
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from swdet.deploy.graph import check_model, consumers, default_opset, drop_unused_initializers
from swdet.errors import SwdetError

BOUNDARY_PREFIX = "net/"
QUANT_OPS = ("QuantizeLinear", "DequantizeLinear")
QUANTIZED_OPS = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QLinearAdd", "QGemm",
                 "DynamicQuantizeLinear", "QLinearMul", "QLinearConcat"}
OP_TYPES = ["Conv", "Relu", "Add"]
SHAPE_OPS = {"Reshape", "Transpose", "Cast", "Identity", "Flatten", "Squeeze", "Unsqueeze"}
DEFAULT_NUM_IMAGES = 128
# percentile: on the trained retinanet_tiny it lost the least AP of the three methods
# (benchmarks/results/int8.md)
DEFAULT_METHOD = "percentile"
DEFAULT_PERCENTILE = 99.99
# the prediction convolutions' outputs: int8 (Q/DQ, ONNX Runtime runs them as int8) or float
HEAD_OUTPUTS = ("int8", "float")
DEFAULT_HEAD_OUTPUTS = "int8"
STEMS = ("float", "int8")
DEFAULT_STEM = "float"
STEM_MAX_CHANNELS = 4


@dataclass
class CalibResult:
    """What :func:`calibrate` did."""

    out: Path
    cache: Path
    cache_hit: bool
    method: str
    percentile: float | None
    per_channel: bool
    num_images: int
    skipped_images: list[tuple[str, str]]
    quantized: list[str]  # node names with quantized inputs
    excluded: list[str]
    size_mb: float
    fp32_size_mb: float
    seconds: float
    report: list[dict] | None = None
    report_path: Path | None = None
    warnings: list[str] = field(default_factory=list)
    ort_convs: dict | None = None  # {"int8", "float", "total"}: what ONNX Runtime runs (verify only)


# ----------------------------------------------------------------------------------------------
# Input model


def load_fp32_model(path: str | Path) -> tuple[onnx.ModelProto, dict, bytes]:
    """Read and validate the model to calibrate: an swdet fp32 ONNX export. Returns
    ``(model, metadata, file bytes)``; anything else is a one-line :class:`SwdetError`."""
    from swdet.deploy.onnx_meta import read_onnx_metadata

    p = Path(path)
    if not p.exists():
        raise SwdetError(f"{p}: no such file")
    if not p.is_file():
        raise SwdetError(f"{p}: not a file (expected an .onnx model from 'swdet export')")
    data = p.read_bytes()
    if not data:
        raise SwdetError(f"{p}: empty file, not an ONNX model")
    try:
        model = onnx.load_from_string(data)
    except Exception:  # noqa: BLE001 - protobuf raises its own types
        raise SwdetError(f"{p}: not a readable ONNX model (protobuf parsing failed)") from None
    if not len(model.graph.node):
        raise SwdetError(f"{p}: not a readable ONNX model (empty graph)")
    if any(n.op_type in QUANT_OPS or n.op_type in QUANTIZED_OPS for n in model.graph.node):
        raise SwdetError(f"{p}: already quantized (it has QuantizeLinear/DequantizeLinear nodes); calibrate the "
                         "fp32 export instead")
    meta = read_onnx_metadata(model, str(p))
    if meta is None or meta.get("format") != "swdet-model":
        raise SwdetError(f"{p}: not an swdet model (no swdet metadata); export it with 'swdet export RUN "
                         "--format onnx'")
    precision = str((meta.get("export") or {}).get("precision", "fp32"))
    if precision == "int8" or "calibration" in meta:
        raise SwdetError(f"{p}: already quantized (metadata precision {precision}); calibrate the fp32 export")
    if precision != "fp32":
        raise SwdetError(f"{p}: a {precision} export; calibrate the fp32 export (--precision fp32)")
    if not any(o.startswith(BOUNDARY_PREFIX) for n in model.graph.node for o in n.output):
        raise SwdetError(f"{p}: no network/post-processing boundary (net/* tensors); re-export it with this "
                         "swdet's 'swdet export'")
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1:
        raise SwdetError(f"{p}: expected one input 'images', found {len(inputs)}")
    return model, meta, data


def input_size(model: onnx.ModelProto) -> int:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    size = dims[2].dim_value if len(dims) == 4 else 0
    if size <= 0 or dims[3].dim_value != size:
        raise SwdetError("the model input must be [B, 3, S, S] with a static S")
    return int(size)


# ----------------------------------------------------------------------------------------------
# Network / post-processing split


@dataclass
class Split:
    """The network (a model of its own whose outputs are the boundary tensors) and the
    post-processing nodes, initializers and outputs to put back after quantization."""

    network: onnx.ModelProto
    boundary: list[str]
    post_nodes: list[onnx.NodeProto]
    post_initializers: list[onnx.TensorProto]
    outputs: list[onnx.ValueInfoProto]
    value_info: list[onnx.ValueInfoProto]


def split_network(model: onnx.ModelProto) -> Split:
    """Network nodes = every node the ``net/*`` boundary tensors depend on; the rest is
    post-processing (it reads only the boundary tensors and its own constants)."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    boundary = sorted(o for n in g.node for o in n.output if o.startswith(BOUNDARY_PREFIX))
    net_ids: set[int] = set()
    stack = list(boundary)
    while stack:
        n = producer.get(stack.pop())
        if n is None or id(n) in net_ids:
            continue
        net_ids.add(id(n))
        stack.extend(i for i in n.input if i)
    net_nodes = [n for n in g.node if id(n) in net_ids]
    post_nodes = [n for n in g.node if id(n) not in net_ids]
    inits = {t.name: t for t in g.initializer}
    used_net = {i for n in net_nodes for i in n.input}
    used_post = {i for n in post_nodes for i in n.input}
    net_tensors = {o for n in net_nodes for o in n.output}
    leaked = sorted(t for t in used_post if t in net_tensors and t not in boundary)
    if leaked:
        raise SwdetError(f"the post-processing reads network tensor {leaked[0]!r} besides the net/* boundary; "
                         "re-export the model with this swdet")
    types = {v.name: v for v in list(g.value_info) + list(g.output)}
    outs = []
    for b in boundary:
        vi = copy.deepcopy(types[b]) if b in types else helper.make_tensor_value_info(b, TensorProto.FLOAT, None)
        outs.append(vi)
    graph = helper.make_graph(copy.deepcopy(net_nodes), "swdet_network", [copy.deepcopy(i) for i in g.input],
                              outs, [copy.deepcopy(inits[i]) for i in sorted(used_net) if i in inits])
    network = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return Split(network, boundary, [copy.deepcopy(n) for n in post_nodes],
                 [copy.deepcopy(inits[i]) for i in sorted(used_post) if i in inits],
                 [copy.deepcopy(o) for o in g.output],
                 [copy.deepcopy(v) for v in g.value_info if v.name not in net_tensors or v.name in boundary])


@contextlib.contextmanager
def _quiet():
    """ORT's quantization tools print and log warnings (e.g. "please run pre-processing")."""
    level = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(level)


def preprocess_network(network: onnx.ModelProto, workdir: Path) -> onnx.ModelProto:
    """``quant_pre_process`` (ORT basic optimizations + ONNX shape inference) on the network
    model. Symbolic shape inference is skipped: ONNX's own inference types every tensor of the
    export, and the symbolic one gives up on the dynamic batch."""
    from onnxruntime.quantization import quant_pre_process

    src, dst = workdir / "network.onnx", workdir / "network.pre.onnx"
    onnx.save(network, str(src))
    with _quiet():
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True, skip_optimization=False,
                          skip_onnx_shape=False)
    out = onnx.load(str(dst))
    keep = [p for p in out.metadata_props if p.key != "onnx.quant.pre_process"]
    del out.metadata_props[:]
    out.metadata_props.extend(keep)
    return out


# ----------------------------------------------------------------------------------------------
# Which nodes and tensors


def quantizable_nodes(network: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes whose inputs get Q/DQ: every Conv, every ReLU, and every Add of two activations."""
    inits = {t.name for t in network.graph.initializer}
    out = []
    for n in network.graph.node:
        if n.op_type in ("Conv", "Relu") or n.op_type == "Add" and len(n.input) == 2 and not any(i in inits for i in n.input):
            out.append(n)
    return out


def candidate_tensors(network: onnx.ModelProto) -> list[str]:
    """Activation tensors a quantization may need a range for: inputs and outputs of the
    quantizable nodes (weights and biases excluded)."""
    inits = {t.name for t in network.graph.initializer}
    names: list[str] = []
    seen = set()
    for n in quantizable_nodes(network):
        ins = n.input[:1] if n.op_type == "Conv" else n.input
        for t in list(ins) + list(n.output):
            if t and t not in inits and t not in seen:
                seen.add(t)
                names.append(t)
    return names


def prediction_convs(network: onnx.ModelProto, boundary: list[str]) -> list[str]:
    """The Conv feeding each boundary tensor through shape-only ops (the head's cls_logits and
    bbox_pred convolutions)."""
    producer = {o: n for n in network.graph.node for o in n.output}
    found = []
    for b in boundary:
        n = producer.get(b)
        while n is not None and n.op_type in SHAPE_OPS:
            n = producer.get(n.input[0])
        if n is not None and n.op_type == "Conv" and n.name not in found:
            found.append(n.name)
    return found


def stem_convs(network: onnx.ModelProto) -> list[str]:
    """Convolutions with at most :data:`STEM_MAX_CHANNELS` input channels (the image stem),
    ungrouped, with their weights an initializer."""
    inits = {t.name: t for t in network.graph.initializer}
    out = []
    for n in network.graph.node:
        w = inits.get(n.input[1]) if n.op_type == "Conv" and len(n.input) > 1 else None
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        if w is not None and len(w.dims) == 4 and group == 1 and w.dims[1] <= STEM_MAX_CHANNELS:
            out.append(n.name)
    return out


def resolve_excludes(network: onnx.ModelProto, patterns) -> list[str]:
    """Node names matching any ``fnmatch`` pattern (``*`` and ``?``; a pattern without wildcards
    also matches as a substring). A pattern that matches no quantizable node is an error."""
    names = [n.name for n in quantizable_nodes(network)]
    excluded: list[str] = []
    for pat in patterns or ():
        pat = str(pat).strip()
        if not pat:
            continue
        hits = [n for n in names if fnmatch.fnmatchcase(n, pat) or (not any(c in pat for c in "*?[") and pat in n)]
        if not hits:
            raise SwdetError(f"--exclude {pat!r}: matches no quantizable layer (names look like "
                             f"{names[0] if names else '?'}; see --report for the list)")
        excluded.extend(h for h in hits if h not in excluded)
    return excluded


# ----------------------------------------------------------------------------------------------
# Quantization


def tensors_data(amax: dict[str, float]):
    """ORT ``TensorsData`` of symmetric ranges ``[-amax, amax]``."""
    from onnxruntime.quantization import CalibrationMethod, TensorData, TensorsData

    return TensorsData(CalibrationMethod.MinMax,
                       {k: TensorData(lowest=np.float32(-v), highest=np.float32(v)) for k, v in amax.items()})


def quantize_network(network: onnx.ModelProto, amax: dict[str, float], *, per_channel: bool = True,
                     exclude: list[str] = (), nodes_to_quantize: list[str] | None = None,
                     float_outputs: list[str] = (), one_reader: bool = False) -> onnx.ModelProto:
    """Insert Q/DQ into the (pre-processed) network model with ORT's ``QDQQuantizer``.

    ``exclude``: node names kept float. ``nodes_to_quantize``: when given, only these nodes
    (the per-layer sensitivity). ``float_outputs``: Conv node names whose output Q/DQ is removed
    (int8 inputs, float32 output). ``one_reader``: every activation DequantizeLinear gets a
    single reader (:func:`_one_reader_per_dq`)."""
    from onnxruntime.quantization import QDQQuantizer, QuantType

    quantizable = {n.name for n in quantizable_nodes(network)}
    exclude_set = set(exclude)
    extra = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "QuantizeBias": False,
        "DedicatedQDQPair": True,
        "QDQKeepRemovableActivations": True,
        "QDQOpTypePerChannelSupportToAxis": {"Conv": 0},
    }
    model = copy.deepcopy(network)
    # ORT quantizes every node of the given op types; narrow it to the ones swdet quantizes.
    others = [n.name for n in model.graph.node if n.op_type in OP_TYPES and n.name not in quantizable]
    with _quiet():
        q = QDQQuantizer(model, per_channel, False, QuantType.QInt8, QuantType.QInt8, tensors_data(amax),
                         list(nodes_to_quantize or []), sorted(exclude_set | set(others)), list(OP_TYPES), extra)
        q.quantize_model()
        q.model.topological_sort()  # what quantize_static does before saving
        out = q.model.model
    if float_outputs:
        _drop_output_qdq(out, set(float_outputs))
    if one_reader:
        _one_reader_per_dq(out)
    _unshare_qparams(out)
    return out


def _lookup_relus(model: onnx.ModelProto) -> int:
    """``DQ -> Relu -> Q`` (one activation DequantizeLinear in, one QuantizeLinear as the only
    reader) becomes ``DQ -> LeakyRelu(alpha=0) -> Q``: the same function, ``max(x, 0)``, which
    ONNX Runtime's CPU provider fuses into an int8 ``QLinearLeakyRelu`` (a 256-entry lookup table
    from the input's scale to the output's) where a ``Relu`` runs as DequantizeLinear, float ReLU
    and QuantizeLinear (its ReLU fusion needs the zero point at the bottom of the range, never the
    case with TensorRT's signed zero-point-0 scheme). TensorRT runs ``LeakyRelu`` as an activation
    layer like ``Relu``; the graph stays a valid explicit-quantization model. Returns the count."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    cons = consumers(g)
    outputs = {o.name for o in g.output}
    count = 0
    for n in g.node:
        if n.op_type != "Relu" or n.output[0] in outputs:
            continue
        src, readers = producer.get(n.input[0]), cons.get(n.output[0], [])
        if (src is None or src.op_type != "DequantizeLinear" or src.input[0] in inits
                or len(readers) != 1 or readers[0].op_type != "QuantizeLinear"):
            continue
        n.op_type = "LeakyRelu"
        del n.attribute[:]
        n.attribute.append(helper.make_attribute("alpha", 0.0))
        count += 1
    return count


def _int8_forks(model: onnx.ModelProto) -> int:
    """A ReLU between an activation DequantizeLinear and ``k >= 2`` QuantizeLinear readers with
    one scale (a ResNet block's output, read by the next block's first convolution and by its
    residual addition) becomes an int8 fork::

        DQ -> Relu -> {Q_1, ..., Q_k}
        DQ -> LeakyRelu(0) -> Q -> DQ -> Tile(k x batch) -> Q -> DQ -> Split(k, batch) -> Q_i

    with every new pair at the readers' scale. Why: ONNX Runtime converts a signed Q/DQ pair to
    the uint8 its x86 kernels take only where the QuantizeLinear has one reader, so a tensor read
    twice can only fork in float (dequantize the whole map, ReLU, quantize once per reader: on
    retinanet_r50_fpn at 320 px, batch 8, about 80 ms of its 420). With the fork every Q has one
    reader: ONNX Runtime runs the ReLU as an int8 lookup and the ``Tile`` and ``Split`` on int8
    data (a copy of 1 byte per value instead of float passes of 4). Exact: the new pairs
    quantize values that are already on the readers' grid, so the outputs equal those of the
    graph before (test). TensorRT-valid (``Tile``, ``Split``, zero points 0), but TensorRT would
    rather see the plain fork (``--no-rewrite``). Returns the count of forks."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    cons = consumers(g)
    outputs = {o.name for o in g.output}
    opset = default_opset(model) or 13
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in list(g.value_info) + list(g.input)
             if v.type.tensor_type.HasField("shape")}
    after: dict[int, list[onnx.NodeProto]] = {}
    new_inits: list[onnx.TensorProto] = []
    count = 0
    for n in g.node:
        if n.op_type != "Relu" or n.output[0] in outputs:
            continue
        src, readers = producer.get(n.input[0]), cons.get(n.output[0], [])
        if (src is None or src.op_type != "DequantizeLinear" or src.input[0] in inits or len(readers) < 2
                or len({id(r) for r in readers}) != len(readers)
                or any(r.op_type != "QuantizeLinear" or len(r.input) < 3 or r.input[1] not in inits
                       or r.input[2] not in inits for r in readers)):
            continue
        scales = [numpy_helper.to_array(inits[r.input[1]]) for r in readers]
        zps = [numpy_helper.to_array(inits[r.input[2]]) for r in readers]
        rank = ranks.get(n.input[0]) or ranks.get(n.output[0])
        if (rank is None or rank < 1 or any(x.shape != () for x in scales)
                or any(not np.array_equal(scales[0], x) or not np.array_equal(zps[0], z) for x, z in zip(scales, zps))):
            continue
        k, p = len(readers), f"{n.name or n.output[0]}/fork"
        pairs = []
        for tag in ("relu", "tile"):
            sc, zp = onnx.TensorProto(), onnx.TensorProto()
            sc.CopyFrom(inits[readers[0].input[1]])
            zp.CopyFrom(inits[readers[0].input[2]])
            sc.name, zp.name = f"{p}/{tag}_scale", f"{p}/{tag}_zero_point"
            new_inits += [sc, zp]
            pairs.append((sc.name, zp.name))
        new_inits.append(numpy_helper.from_array(np.array([k] + [1] * (rank - 1), np.int64), f"{p}/repeats"))
        (rs, rz), (ts, tz) = pairs
        parts = [f"{p}/part{i}" for i in range(k)]
        split_kw = {"num_outputs": k} if opset >= 18 else {}
        after[id(n)] = [
            helper.make_node("QuantizeLinear", [n.output[0], rs, rz], [f"{p}/relu_q"], name=f"{p}/relu_q"),
            helper.make_node("DequantizeLinear", [f"{p}/relu_q", rs, rz], [f"{p}/relu_dq"], name=f"{p}/relu_dq"),
            helper.make_node("Tile", [f"{p}/relu_dq", f"{p}/repeats"], [f"{p}/tile"], name=f"{p}/tile"),
            helper.make_node("QuantizeLinear", [f"{p}/tile", ts, tz], [f"{p}/tile_q"], name=f"{p}/tile_q"),
            helper.make_node("DequantizeLinear", [f"{p}/tile_q", ts, tz], [f"{p}/tile_dq"], name=f"{p}/tile_dq"),
            helper.make_node("Split", [f"{p}/tile_dq"], parts, name=f"{p}/split", axis=0, **split_kw)]
        for r, part in zip(readers, parts):
            r.input[0] = part
        n.op_type = "LeakyRelu"  # between one DQ and one Q now: an int8 lookup (_lookup_relus)
        del n.attribute[:]
        n.attribute.append(helper.make_attribute("alpha", 0.0))
        count += 1
    if count:
        nodes: list[onnx.NodeProto] = []
        for n in g.node:
            nodes.append(n)
            nodes.extend(after.get(id(n), []))
        del g.node[:]
        g.node.extend(nodes)
        g.initializer.extend(new_inits)
    return count


def _int8_splits(model: onnx.ModelProto) -> int:
    """``DQ -> Split -> Q`` on every part (the merged head convolutions' outputs, split back into
    the two towers): each part's QuantizeLinear (and its DequantizeLinears) gets the scale of the
    DequantizeLinear before the ``Split``. That requantization is exact (the parts' values are on
    that grid already, and its range covers them), and ONNX Runtime then runs the ``Split`` on the
    int8 tensor where otherwise it dequantizes the whole map, splits it in float and quantizes
    each part again (retinanet_r50_fpn at 320 px, batch 8: about 7 ms of float work per batch).
    TensorRT sees the same scale on both sides of the ``Split``. Returns the count of Splits."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    cons = consumers(g)
    count = 0
    for sp in g.node:
        dq = producer.get(sp.input[0]) if sp.op_type == "Split" and sp.input else None
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in inits or dq.input[1] not in inits:
            continue
        scale = inits[dq.input[1]]
        if len(scale.dims) or len(cons.get(dq.output[0], [])) != 1:
            continue
        qs = [cons.get(o, []) for o in sp.output]
        if not all(len(r) == 1 and r[0].op_type == "QuantizeLinear" and r[0].input[1] in inits for r in qs):
            continue
        if all(np.array_equal(numpy_helper.to_array(inits[q.input[1]]), numpy_helper.to_array(scale)) for (q,) in qs):
            continue  # already one scale (an _int8_forks Split)
        for (q,) in qs:
            users = cons.get(q.input[1], [])
            if any(u is not q and not (u.op_type == "DequantizeLinear" and u.input[0] == q.output[0]) for u in users):
                break  # the scale initializer is shared beyond this pair: leave the Split float
        else:
            for (q,) in qs:
                t = inits[q.input[1]]
                t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale).copy(), t.name))
            count += 1
    return count


def _one_reader_per_dq(model: onnx.ModelProto) -> None:
    """An activation Q -> DQ pair whose DequantizeLinear output has several readers (e.g. a
    quantized FPN sum read by a convolution and by the next ``Resize``) becomes one Q -> DQ pair
    per reader, each with the same scale and zero point (exact; TensorRT treats them as one).
    ONNX Runtime otherwise gives each reader its own DQ after one shared Q, a Q it then cannot
    convert to uint8, so the convolution reading it stays float."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    cons = consumers(g)
    outputs = {o.name for o in g.output}
    nodes: list[onnx.NodeProto] = []
    for n in g.node:
        nodes.append(n)
        if n.op_type != "QuantizeLinear" or n.input[0] in inits:
            continue
        dqs = [d for d in cons.get(n.output[0], []) if d.op_type == "DequantizeLinear"]
        if len(dqs) != 1 or len(cons.get(n.output[0], [])) != 1 or dqs[0].output[0] in outputs:
            continue
        dq = dqs[0]
        readers = list({id(r): r for r in cons.get(dq.output[0], [])}.values())
        for k, reader in enumerate(readers[1:], start=1):
            q2, dq2 = copy.deepcopy(n), copy.deepcopy(dq)
            q2.name, dq2.name = f"{n.name}/reader{k}", f"{dq.name}/reader{k}"
            q2.output[0] = f"{n.output[0]}/reader{k}"
            dq2.input[0], dq2.output[0] = q2.output[0], f"{dq.output[0]}/reader{k}"
            for i, name in enumerate(reader.input):
                if name == dq.output[0]:
                    reader.input[i] = dq2.output[0]
            nodes.extend([q2, dq2])  # right after the Q: they read only its input and constants
    del g.node[:]
    g.node.extend(nodes)


def _drop_output_qdq(model: onnx.ModelProto, convs: set[str]) -> None:
    """Remove the Q -> DQ pairs on the outputs of ``convs``: consumers read the float output."""
    g = model.graph
    cons = consumers(g)
    drop: set[int] = set()
    rename: dict[str, str] = {}
    for n in g.node:
        if n.name not in convs:
            continue
        y = n.output[0]
        for q in cons.get(y, []):
            if q.op_type != "QuantizeLinear":
                continue
            for dq in cons.get(q.output[0], []):
                if dq.op_type == "DequantizeLinear":
                    rename[dq.output[0]] = y
                    drop.add(id(dq))
            drop.add(id(q))
    for n in g.node:
        for i, name in enumerate(n.input):
            if name in rename:
                n.input[i] = rename[name]
    for o in g.output:
        if o.name in rename:  # a DQ that wrote a graph output: let the conv's tensor be it
            raise RuntimeError(f"cannot drop the Q/DQ pair that writes graph output {o.name}")
    keep = [n for n in g.node if id(n) not in drop]
    del g.node[:]
    g.node.extend(keep)
    drop_unused_initializers(g)


def _unshare_qparams(model: onnx.ModelProto) -> None:
    """Give every activation Q/DQ pair its own scale and zero-point initializers (same values),
    so ONNX Runtime cannot merge dedicated pairs back into shared ones (module docstring)."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    cons = consumers(g)
    uses: dict[str, int] = {}
    new: list[onnx.TensorProto] = []
    for n in g.node:
        if n.op_type != "QuantizeLinear" or n.input[0] in inits:
            continue
        for k in (1, 2):
            if len(n.input) <= k or n.input[k] not in inits:
                continue
            name = n.input[k]
            uses[name] = uses.get(name, 0) + 1
            if uses[name] == 1:
                continue  # the first pair keeps the original initializer
            t = onnx.TensorProto()
            t.CopyFrom(inits[name])
            t.name = f"{name}/pair{uses[name]}"
            new.append(t)
            n.input[k] = t.name
            for dq in cons.get(n.output[0], []):
                if dq.op_type == "DequantizeLinear" and len(dq.input) > k and dq.input[k] == name:
                    dq.input[k] = t.name
    g.initializer.extend(new)


def stitch(quantized: onnx.ModelProto, split: Split, original: onnx.ModelProto, meta: dict) -> onnx.ModelProto:
    """Quantized network + the original post-processing, outputs, opsets and metadata."""
    from swdet.deploy.onnx_meta import set_onnx_metadata

    net = quantized.graph
    have = {t.name for t in net.initializer}
    inits = list(net.initializer) + [t for t in split.post_initializers if t.name not in have]
    net_vi = {v.name for v in net.value_info}
    value_info = list(net.value_info) + [v for v in split.value_info if v.name not in net_vi]
    graph = helper.make_graph(list(net.node) + split.post_nodes, original.graph.name or "swdet", list(net.input),
                              split.outputs, inits, value_info=value_info)
    domains = {n.domain or "" for n in graph.node} | {""}
    opsets = [o for o in original.opset_import if (o.domain or "") in domains or o.domain == "ai.onnx"]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=original.ir_version)
    model.producer_name = original.producer_name
    model.producer_version = original.producer_version
    model.doc_string = original.doc_string
    set_onnx_metadata(model, meta)
    return model


def _check(model: onnx.ModelProto) -> None:
    from swdet.deploy.trt_rules import check_tensorrt_compat, has_errors

    check_model(model, "the quantized graph")
    problems = check_tensorrt_compat(model)
    if has_errors(problems):
        raise RuntimeError("the quantized graph fails the TensorRT static check: "
                           + "; ".join(str(p) for p in problems if p.severity == "error")[:500])


def zero_points(model: onnx.ModelProto) -> list[tuple[str, int, np.ndarray]]:
    """``(name, elem_type, values)`` of every Q/DQ zero point (a test and report helper)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    out, seen = [], set()
    for n in model.graph.node:
        if n.op_type in QUANT_OPS and len(n.input) > 2 and n.input[2] not in seen:
            seen.add(n.input[2])
            t = inits[n.input[2]]
            out.append((t.name, t.data_type, numpy_helper.to_array(t)))
    return out


def quantized_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that read a DequantizeLinear output (the int8 layers)."""
    dq_out = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return [n.name for n in model.graph.node if n.op_type not in QUANT_OPS and any(i in dq_out for i in n.input)]


# ----------------------------------------------------------------------------------------------
# The stage


def default_cache_path(model_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.calib.npz`` beside the model being calibrated."""
    p = Path(model_path)
    return p.with_name(p.stem + ".calib.npz")


def _augmented(network: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """The network with ``tensors`` as extra graph outputs (what the statistics pass reads)."""
    m = copy.deepcopy(network)
    have = {o.name for o in m.graph.output}
    types = {v.name: v.type.tensor_type.elem_type for v in list(m.graph.value_info) + list(m.graph.input)}
    for t in tensors:
        if t not in have:
            m.graph.output.append(helper.make_tensor_value_info(t, types.get(t, TensorProto.FLOAT), None))
    return m


def _check_options(method: str, percentile: float, num_images, batch_size, out: Path, src: Path) -> str:
    """One-line errors for the options :func:`calibrate` takes; returns the method name."""
    from swdet.calib.stats import METHODS, method_key

    method = str(method).lower()
    if method not in METHODS:
        raise SwdetError(f"--method {method!r}: choose {', '.join(METHODS)}")
    method_key(method, percentile)
    if method == "percentile" and not (0.0 < float(percentile) <= 100.0):
        raise SwdetError(f"--percentile {percentile}: must be in (0, 100]")
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise SwdetError(f"--num-images {num_images!r}: must be a positive integer")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SwdetError(f"--batch-size {batch_size!r}: must be a positive integer")
    if out.suffix.lower() != ".onnx":
        raise SwdetError(f"--out {out}: must be an .onnx file")
    if out.resolve() == src.resolve():
        raise SwdetError(f"--out {out}: would overwrite the fp32 model being calibrated")
    return method


@dataclass
class _Statistics:
    """What step 3 of the module docstring produced."""

    stats: object  # swdet.calib.stats.CalibrationStats
    cache_path: Path
    cache_hit: bool
    candidates: list[Path]
    selection: object | None  # the images read (None on a cache hit)


def _statistics(network: onnx.ModelProto, tensors: list[str], data: bytes, images, *, cache, use_cache: bool,
                src: Path, num_images: int, imgsz: int, seed: int, batch_size: int, work: Path, progress: bool,
                say, warnings: list[str]) -> _Statistics:
    """The activation statistics of ``tensors``: from the cache when it was made from the same
    model and images, else one pass of the network over the selected images."""
    from swdet.calib.stats import cache_key, candidate_files, collect_statistics, load_cache, select_images

    cache_path = Path(cache) if cache is not None else default_cache_path(src)
    candidates = candidate_files(images, seed)
    key = cache_key(hashlib.sha256(data).hexdigest(), candidates, num_images, imgsz, seed)
    stats = load_cache(cache_path, key) if use_cache else None
    if stats is not None and not set(tensors) <= set(stats.tensors):
        stats = None  # another ORT version pre-processed the graph differently
    if stats is not None:
        say(f"calibration: statistics of {stats.num_images} images from the cache {cache_path}")
        return _Statistics(stats, cache_path, True, candidates, None)
    selection = select_images(images, num_images, imgsz, seed=seed, candidates=candidates)
    if selection.skipped:
        warnings.append(f"{len(selection.skipped)} unreadable image(s) skipped (e.g. {selection.skipped[0][1]})")
    if len(selection.files) < num_images:
        warnings.append(f"{images}: only {len(selection.files)} readable image(s), fewer than "
                        f"--num-images {num_images}; calibrating with {len(selection.files)}")
    for w in warnings:
        say(f"warning: {w}")
    say(f"calibration: {len(selection.files)} images from {images} ({imgsz}x{imgsz}), {len(tensors)} tensors")
    aug = work / "augmented.onnx"
    onnx.save(_augmented(network, tensors), str(aug))
    stats = collect_statistics(aug, tensors, selection.images, key=key, batch_size=batch_size, progress=progress)
    return _Statistics(stats, cache_path, False, candidates, selection)


def _calibration_metadata(meta: dict, *, method: str, percentile: float, num_images: int, images, seed: int,
                          per_channel: bool, excluded: list[str], float_convs: list[str], cache_path: Path,
                          head_outputs: str = "float", rewrite: dict | None = None,
                          lookup_relus: int = 0, stem: str = "int8", int8_splits: int = 0,
                          int8_forks: int = 0) -> dict:
    """The model's metadata with ``export.precision = "int8"`` and a ``calibration`` section."""
    import onnxruntime

    new_meta = copy.deepcopy(meta)
    new_meta.setdefault("export", {})["precision"] = "int8"
    new_meta["calibration"] = {
        "method": method,
        "percentile": float(percentile) if method == "percentile" else None,
        "num_images": int(num_images),
        "images": str(images),
        "seed": int(seed),
        "per_channel": bool(per_channel),
        "excluded": excluded,
        "float_output_convs": float_convs,
        "head_outputs": head_outputs,
        "stem": stem,
        "rewrite": rewrite,
        "lookup_relus": int(lookup_relus),
        "int8_splits": int(int8_splits),
        "int8_forks": int(int8_forks),
        "symmetric": True,
        "op_types": list(OP_TYPES),
        "tool": f"onnxruntime.quantization {onnxruntime.__version__}",
        "cache": cache_path.name,
    }
    return new_meta


def calibrate(model_path: str | Path, images: str | Path, out: str | Path, *,
              num_images: int = DEFAULT_NUM_IMAGES, method: str = DEFAULT_METHOD,
              percentile: float = DEFAULT_PERCENTILE, per_channel: bool = True, exclude=(),
              cache: str | Path | None = None, use_cache: bool = True, report: bool = False,
              report_images: int = 4, batch_size: int = 4, seed: int = 0, verify: bool = True,
              rewrite: bool = True, head_outputs: str = DEFAULT_HEAD_OUTPUTS, stem: str = DEFAULT_STEM,
              progress: bool = False,
              log=None) -> CalibResult:
    """Calibrate and quantize an swdet fp32 ONNX export to a Q/DQ INT8 model (module docstring).

    Args:
        model_path: the fp32 ``.onnx`` from ``swdet export``.
        images: a folder of calibration images (searched recursively), e.g. a COCO split's image
            folder; ``num_images`` of them in a seeded random order, unreadable ones skipped.
        out: the ``.onnx`` to write.
        method: ``percentile`` (default; of ``|x|``, at ``percentile``), ``entropy``
            (TensorRT's KL-divergence calibrator on the ``|x|`` histogram) or ``minmax``.
        per_channel: per-output-channel weight scales (default) or one per tensor.
        exclude: ``fnmatch`` patterns of node names kept float (see the ``--report`` table).
        cache: the statistics file (default ``<model>.calib.npz`` beside the input model);
            ``use_cache=False`` ignores an existing one (it is rewritten).
        report: also compute the per-layer sensitivity on ``report_images`` images
            (:mod:`swdet.calib.report`) and write it to ``<out>.report.json``.
        verify: load the result in ONNX Runtime and run it at batch 1 and 8.
        rewrite: apply the FP32 rewrites of :mod:`swdet.calib.fusion` first (sibling
            convolutions merged, shared convolution outputs duplicated, GroupNorms written
            channels-last) so that ONNX Runtime runs every quantized convolution as int8 and
            keeps its NHWC layout through the GroupNorms.
        head_outputs: ``int8`` (default): the prediction convolutions' outputs get a Q/DQ pair
            too (an int8 convolution, dequantized before the post-processing); ``float``: they
            keep a float32 output (TensorRT: an INT8 convolution with an FP32 output; ONNX
            Runtime then runs them as float convolutions).
        stem: ``float`` (default): the convolutions reading at most 4 channels (the image stem,
            :func:`stem_convs`) stay float32; ``int8``: quantized like the others.
        log: a callable taking one line (progress messages), or None.
    """
    from swdet.artifact import atomic_write_bytes
    from swdet.calib.stats import save_cache, select_images

    t0 = time.perf_counter()
    say = log or (lambda _msg: None)
    out, src = Path(out), Path(model_path)
    method = _check_options(method, percentile, num_images, batch_size, out, src)
    if head_outputs not in HEAD_OUTPUTS:
        raise SwdetError(f"--head-outputs {head_outputs!r}: choose {' or '.join(HEAD_OUTPUTS)}")
    if stem not in STEMS:
        raise SwdetError(f"--stem {stem!r}: choose {' or '.join(STEMS)}")
    model, meta, data = load_fp32_model(src)  # 1. the input, validated
    imgsz = input_size(model)
    warnings: list[str] = []

    with tempfile.TemporaryDirectory(prefix="swdet-calib-") as tmp:
        work = Path(tmp)
        split = split_network(model)  # 1. network / post-processing
        network = preprocess_network(split.network, work)  # 2.
        heads = prediction_convs(network, split.boundary)
        rewritten = None
        if rewrite:  # 2b. exact FP32 rewrites (swdet.calib.fusion)
            from swdet.calib.fusion import rewrite_for_int8

            network, rewritten = rewrite_for_int8(network, keep=heads)
        excluded = resolve_excludes(network, exclude)
        if stem == "float":
            excluded += [n for n in stem_convs(network) if n not in excluded]
        tensors = candidate_tensors(network)
        float_convs = [h for h in heads if h not in excluded] if head_outputs == "float" else []

        st = _statistics(network, tensors, data, images, cache=cache, use_cache=use_cache, src=src,  # 3.
                         num_images=num_images, imgsz=imgsz, seed=seed, batch_size=batch_size, work=work,
                         progress=progress, say=say, warnings=warnings)
        say(f"ranges: {method}" + (f" ({percentile})" if method == "percentile" else ""))
        amax = st.stats.amax(method, percentile, tensors)
        try:
            save_cache(st.cache_path, st.stats)  # new statistics and newly computed ranges
        except SwdetError as e:  # an unwritable folder only loses the cache
            warnings.append(f"calibration cache not written: {e}")
            say(f"warning: {warnings[-1]}")

        quantized = quantize_network(network, amax, per_channel=per_channel, exclude=excluded,  # 4.
                                     float_outputs=float_convs, one_reader=rewrite)
        forks = _int8_forks(quantized) if rewrite else 0  # tensors read by several Qs (ORT)
        lookups = _lookup_relus(quantized) + forks if rewrite else 0  # ReLUs -> int8 lookups (ORT)
        int8_splits = _int8_splits(quantized) if rewrite else 0  # Splits on int8 (ORT)
        new_meta = _calibration_metadata(meta, method=method, percentile=percentile,
                                         num_images=st.stats.num_images, images=images, seed=seed,
                                         per_channel=per_channel, excluded=excluded, float_convs=float_convs,
                                         cache_path=st.cache_path, head_outputs=head_outputs, stem=stem,
                                         rewrite=rewritten.as_dict() if rewritten is not None else None,
                                         lookup_relus=lookups, int8_splits=int8_splits, int8_forks=forks)
        final = stitch(quantized, split, model, new_meta)  # 5.
        _check(final)
        blob = final.SerializeToString()
        atomic_write_bytes(out, blob)

        report_rows = report_path = None
        selection = st.selection
        if report:
            from swdet.calib.report import sensitivity, write_report

            if selection is None:
                selection = select_images(images, min(report_images, num_images), imgsz, seed=seed,
                                          candidates=st.candidates)
            n = min(report_images, len(selection.images))
            say(f"report: per-layer sensitivity on {n} images")
            report_rows = sensitivity(network, split.boundary, amax, selection.images[:report_images],
                                      per_channel=per_channel, exclude=excluded, float_outputs=float_convs,
                                      progress=progress)
            report_path = write_report(out.with_name(out.stem + ".report.json"), report_rows, method=method,
                                       num_images=n)

    ort_convs = None
    if verify:
        from swdet.calib.fusion import ort_conv_counts

        verify_runs(out)
        if not any(n.domain not in ("", "ai.onnx") for n in final.graph.node):  # ORT cannot load plugins
            ort_convs = {k: v for k, v in ort_conv_counts(out).items() if k in ("int8", "float", "total")}
    return CalibResult(out=out, cache=st.cache_path, cache_hit=st.cache_hit, method=method,
                       percentile=float(percentile) if method == "percentile" else None, per_channel=per_channel,
                       num_images=int(st.stats.num_images),
                       skipped_images=list(selection.skipped) if selection is not None else [],
                       quantized=quantized_nodes(final), excluded=excluded, size_mb=len(blob) / 2**20,
                       fp32_size_mb=len(data) / 2**20, seconds=time.perf_counter() - t0, report=report_rows,
                       report_path=report_path, warnings=warnings, ort_convs=ort_convs)


def verify_runs(path: str | Path, batch_sizes=(1, 8)) -> None:
    """Load the model in ONNX Runtime (CPU) and run it at each batch size (dynamic-batch models;
    a fixed batch runs at its own size). Skipped for graphs with TensorRT plugins."""
    import onnxruntime as ort

    model = onnx.load(str(path), load_external_data=False)
    if any(n.domain not in ("", "ai.onnx") for n in model.graph.node):
        return
    dims = model.graph.input[0].type.tensor_type.shape.dim
    size = dims[2].dim_value
    fixed = dims[0].dim_value if dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        for b in ([fixed] if fixed else batch_sizes):
            x = np.full((b, 3, size, size), 114.0, dtype=np.float32)
            outs = sess.run(None, {model.graph.input[0].name: x})
            if outs[0].shape[0] != b:
                raise RuntimeError(f"batch {b} gave outputs of batch {outs[0].shape[0]}")
    except Exception as e:
        raise RuntimeError(f"{path}: the quantized model does not run in ONNX Runtime: "
                           f"{' '.join(str(e).split())[:300]}") from e


def summary_row(result: CalibResult) -> dict:
    """One row for the CLI's closing table."""
    return {"file": str(result.out), "method": result.method + (f" {result.percentile:g}" if result.percentile else ""),
            "images": result.num_images, "per_channel": "yes" if result.per_channel else "no",
            "int8 layers": len(result.quantized), "excluded": len(result.excluded),
            "size_mb": f"{result.size_mb:.2f}", "fp32_mb": f"{result.fp32_size_mb:.2f}",
            "ort convs int8/float": (f"{result.ort_convs['int8']}/{result.ort_convs['float']}"
                                     if result.ort_convs else "-"),
            "cache": "hit" if result.cache_hit else "new", "time_s": f"{result.seconds:.1f}"}


def asdict_result(result: CalibResult) -> dict:
    d = asdict(result)
    d["out"], d["cache"] = str(result.out), str(result.cache)
    d["report_path"] = str(result.report_path) if result.report_path else None
    return d


__all__ = [
    "CalibResult",
    "calibrate",
    "candidate_tensors",
    "default_cache_path",
    "load_fp32_model",
    "prediction_convs",
    "preprocess_network",
    "quantizable_nodes",
    "quantize_network",
    "quantized_nodes",
    "resolve_excludes",
    "split_network",
    "summary_row",
    "verify_runs",
    "zero_points",
]
