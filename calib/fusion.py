"""Exact FP32 graph rewrites that let ONNX Runtime run a Q/DQ model's convolutions as int8, and
the count of what it actually runs as int8 (its optimized graph).

Why (ONNX Runtime's CPU provider, x86): a ``DequantizeLinear -> Conv -> QuantizeLinear`` group
becomes one int8 ``QLinearConv`` only when the convolution's output is read by that single
QuantizeLinear. Its x86 kernels take uint8 activations, so it first converts each signed Q/DQ
pair to uint8 (exact: zero point + 128), and it does so only where the QuantizeLinear feeds one
DequantizeLinear. A convolution whose output has two readers therefore runs in float32 after a
DequantizeLinear, whichever way its Q/DQ pairs are laid out (one per reader: two Qs on the
output; one shared: a Q with two readers once ORT gives every node group its own DQ).

:func:`rewrite_for_int8` removes those cases from the FP32 network before calibration, with
rewrites that compute the same values:

* **sibling convolutions merged**: convolutions that read the same convolution output with the
  same attributes (the RetinaNet head's classification and box towers' first convolutions on every
  FPN level) become one convolution with their output channels concatenated, followed by a
  ``Split`` that gives each original output back under its own name; a ``Relu`` that follows
  every part moves before the ``Split`` (``relu`` commutes with a channel split). Each FPN
  output then has one reader.
* **shared convolution outputs duplicated**: a convolution whose output still has several
  readers (the top FPN lateral, read by the top-down ``Resize`` and its output convolution;
  ``P6``, read by ``P7``'s ``Relu`` and the head) is copied once per reader, the copies sharing
  the weights. The extra work is that convolution's, once per extra reader (reported).
* **GroupNorms written channels-last** (:func:`channels_last_group_norms`): ORT runs its int8
  convolutions in NHWC and transposes around every NCHW-only op; PyTorch's GroupNorm export
  (``Reshape -> InstanceNormalization``) is one, two full-map transposes per GroupNorm of the
  RetinaNet head. Rewritten with its statistics as reductions of a channels-last tensor, the
  transposes cancel. Equal to float32 rounding (a one-pass variance), not bit-exact.

All keep TensorRT's explicit-quantization rules (the Q/DQ pairs are inserted afterwards by
:func:`swdet.calib.quantize.quantize_network` as before; ``Split`` is an ordinary TensorRT
layer). :func:`ort_conv_counts` reports how many convolutions ONNX Runtime runs as float vs
int8, from the optimized graph it writes (``SessionOptions.optimized_model_filepath``).
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from swdet.deploy.graph import consumers, default_opset, drop_unused_initializers

INT8_CONV_OPS = frozenset({"QLinearConv", "ConvInteger", "NhwcQLinearConv"})
FLOAT_CONV_OPS = frozenset({"Conv", "FusedConv", "NhwcFusedConv"})
CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


@dataclass
class RewriteReport:
    """What :func:`rewrite_for_int8` changed."""

    merged: list[list[str]] = field(default_factory=list)  # groups of original Conv names
    duplicated: dict[str, int] = field(default_factory=dict)  # Conv name -> extra copies
    extra_macs_per_image: int = 0  # multiply-accumulates the copies add (static shapes)
    group_norms: int = 0  # GroupNorms rewritten channels-last

    def as_dict(self) -> dict:
        return {"merged": self.merged, "duplicated": self.duplicated,
                "extra_macs_per_image": int(self.extra_macs_per_image), "group_norms": self.group_norms}


def _attrs(node: onnx.NodeProto) -> tuple:
    got = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    key = []
    for name in CONV_ATTRS:
        v = got.get(name)
        if isinstance(v, bytes):
            v = v.decode()
        key.append((name, tuple(v) if isinstance(v, list) else v))
    return tuple(key)


def _group(node: onnx.NodeProto) -> int:
    return int(next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1))


def _topological(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Kahn's order, stable with respect to the given order."""
    ready = set(available)
    pending = list(nodes)
    out: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for n in pending:
            if all(not i or i in ready for i in n.input):
                out.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise RuntimeError(f"graph rewrite left a cycle or a missing input at {rest[0].name!r}")
        pending = rest
    return out


def _mergeable(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> bool:
    return (node.op_type == "Conv" and node.domain in ("", "ai.onnx") and _group(node) == 1
            and len(node.input) >= 2 and node.input[1] in inits
            and (len(node.input) < 3 or not node.input[2] or node.input[2] in inits))


def merge_sibling_convs(model: onnx.ModelProto, keep: set[str] = frozenset(),
                        report: RewriteReport | None = None) -> onnx.ModelProto:
    """Convolutions reading the same convolution output with the same attributes -> one
    convolution (output channels concatenated) + ``Split`` (module docstring). Only where the
    shared input is a convolution's output (which then gets one reader); elsewhere (e.g. a ResNet
    block's first convolution and its downsampling shortcut) merging would only make the two
    outputs share one int8 scale. ``keep``: Conv names left alone."""
    model = copy.deepcopy(model)
    g = model.graph
    report = report if report is not None else RewriteReport()
    inits = {t.name: t for t in g.initializer}
    outputs = {o.name for o in g.output}
    producer = {o: n for n in g.node for o in n.output}
    groups: dict[tuple, list[onnx.NodeProto]] = {}
    for n in g.node:
        src = producer.get(n.input[0]) if n.input else None
        if (src is not None and src.op_type == "Conv" and _mergeable(n, inits) and n.name not in keep
                and n.output[0] not in outputs):
            groups.setdefault((n.input[0], _attrs(n)), []).append(n)
    replace: dict[int, list[onnx.NodeProto]] = {}
    drop: set[int] = set()
    new_inits: list[onnx.TensorProto] = []
    shared: dict[tuple, tuple[str, str, str]] = {}
    cons = consumers(g)
    for idx, ((src, _), convs) in enumerate(sorted(groups.items(), key=lambda kv: kv[1][0].name)):
        if len(convs) < 2 or len({c.input[1] for c in convs}) < len(convs):
            continue  # nothing to merge, or copies made by duplicate_shared_convs (same weights)
        weights = [numpy_helper.to_array(inits[c.input[1]]) for c in convs]
        if len({w.dtype for w in weights}) != 1 or len({w.shape[1:] for w in weights}) != 1:
            continue
        sizes = [int(w.shape[0]) for w in weights]
        biases = [numpy_helper.to_array(inits[c.input[2]]) if len(c.input) > 2 and c.input[2]
                  else np.zeros(s, weights[0].dtype) for c, s in zip(convs, sizes)]
        first = convs[0]
        base = f"{first.name or first.output[0]}/merged"
        # convolutions sharing weights on every level (a RetinaNet head) share the merged weights too
        key = tuple((c.input[1], c.input[2] if len(c.input) > 2 else "") for c in convs)
        if key not in shared:
            shared[key] = (f"{base}/weight", f"{base}/bias", f"{base}/split")
            w_name, b_name, s_name = shared[key]
            new_inits += [numpy_helper.from_array(np.concatenate(weights, 0), w_name),
                          numpy_helper.from_array(np.concatenate(biases, 0).astype(weights[0].dtype), b_name),
                          numpy_helper.from_array(np.array(sizes, np.int64), s_name)]
        w_name, b_name, s_name = shared[key]
        merged_out = f"{first.output[0]}/merged"
        conv = helper.make_node("Conv", [src, w_name, b_name], [merged_out], name=base)
        conv.attribute.extend(copy.deepcopy(a) for a in first.attribute)
        parts = [c.output[0] for c in convs]
        relus = [cons.get(p, []) for p in parts]
        hoist = all(len(r) == 1 and r[0].op_type == "Relu" and r[0].output[0] not in outputs for r in relus)
        if hoist:  # conv -> relu -> split: each part's relu output keeps its name
            relu = helper.make_node("Relu", [merged_out], [f"{merged_out}/relu"], name=f"{base}/relu")
            split = helper.make_node("Split", [relu.output[0], s_name], [r[0].output[0] for r in relus],
                                     name=f"{base}/split", axis=1)
            new = [conv, relu, split]
            drop.update(id(r[0]) for r in relus)
        else:
            split = helper.make_node("Split", [merged_out, s_name], parts, name=f"{base}/split", axis=1)
            new = [conv, split]
        replace[id(first)] = new
        drop.update(id(c) for c in convs[1:])
        report.merged.append([c.name for c in convs])
    if replace:
        _splice(model, replace, drop, new_inits)
    return model


def duplicate_shared_convs(model: onnx.ModelProto, keep: set[str] = frozenset(),
                           report: RewriteReport | None = None) -> onnx.ModelProto:
    """A convolution whose output has several readers -> one copy per reader (shared weights)."""
    model = copy.deepcopy(model)
    g = model.graph
    report = report if report is not None else RewriteReport()
    outputs = {o.name for o in g.output}
    cons = consumers(g)
    shapes = _shapes(model)
    nodes: list[onnx.NodeProto] = []
    changed = False
    for n in g.node:
        nodes.append(n)
        if n.op_type != "Conv" or n.name in keep or n.output[0] in outputs:
            continue
        readers = list({id(r): r for r in cons.get(n.output[0], [])}.values())  # a node reading it twice: once
        if len(readers) < 2:
            continue
        for k, reader in enumerate(readers[1:], start=1):
            clone = copy.deepcopy(n)
            clone.name = f"{n.name or n.output[0]}/copy{k}"
            clone.output[0] = f"{n.output[0]}/copy{k}"
            for i, name in enumerate(reader.input):
                if name == n.output[0]:
                    reader.input[i] = clone.output[0]
            nodes.append(clone)
        report.duplicated[n.name] = len(readers) - 1
        report.extra_macs_per_image += (len(readers) - 1) * _conv_macs(n, model, shapes)
        changed = True
    if changed:
        _finish(model, nodes, [])
    return model


def _reduce(op: str, x: str, out: str, axes: list[int], opset: int, name: str):
    """A keep-dims reduction node (axes an attribute before opset 18, an input from 18 on) and
    the initializers it needs."""
    if opset >= 18:
        a = f"{name}/axes"
        return [helper.make_node(op, [x, a], [out], name=name, keepdims=1)], [
            numpy_helper.from_array(np.array(axes, np.int64), a)]
    return [helper.make_node(op, [x], [out], name=name, axes=list(axes), keepdims=1)], []


def _const(inits: dict, name: str) -> np.ndarray | None:
    return numpy_helper.to_array(inits[name]) if name in inits else None


def channels_last_group_norms(model: onnx.ModelProto, report: RewriteReport | None = None) -> onnx.ModelProto:
    """Every GroupNorm (PyTorch's export: ``Reshape [B, G, -1] -> InstanceNormalization ->
    Reshape [B, C, H, W] -> Mul gamma -> Add beta``) rewritten to run on a channels-last tensor,
    so that ONNX Runtime keeps its NHWC int8 layout through the normalization.

    Why: ONNX Runtime runs an int8 ``QLinearConv`` in NHWC and puts a ``Transpose`` before and
    after every NCHW-only op; ``Reshape -> InstanceNormalization`` is one, so each GroupNorm of
    the RetinaNet head costs two transposes of a full feature map. Written as::

        t      = Transpose(x, [0, 2, 3, 1])                       # [B, H, W, C]
        mu_c   = mean_{h,w} t            q_c = mean_{h,w} t^2     # [B, 1, 1, C]
        mu_g   = mean_{c in g} mu_c      v_g = max(mean_{c in g} q_c - mu_g^2, 0)
        a_c    = gamma_c / sqrt(v_g + eps)      n_c = mu_g * a_c - beta_c
        y      = Transpose(t * a_c - n_c, [0, 3, 1, 2])           # = GroupNorm(x)

    the transposes cancel against ONNX Runtime's own, and the statistics are reductions over
    the leading spatial axes (its fast path). ``y`` is GroupNorm's
    ``(x - mu_g) / sqrt(v_g + eps) * gamma_c + beta_c`` with the variance in its one-pass form
    ``E[x^2] - E[x]^2`` (float32 rounding: equal to about 1e-6 of the output on the RetinaNet
    head; clamped at 0). Where ``x`` is not a ``Split`` output, a one-part ``Split`` goes first:
    ONNX Runtime's QDQ propagation otherwise moves a DequantizeLinear across the leading
    ``Transpose`` into a signed Q/DQ pair with three readers, which it cannot convert to the
    uint8 its convolutions take (measured: 8 more QuantizeLinear / DequantizeLinear pairs).
    Only the standard ops TensorRT imports (``Transpose``, ``ReduceMean``, ``Split``, ``Reshape``
    and arithmetic). Returns the model; ``report.group_norms`` counts the rewrites."""
    model = copy.deepcopy(model)
    g = model.graph
    report = report if report is not None else RewriteReport()
    opset = default_opset(model) or 13
    inits = {t.name: t for t in g.initializer}
    outputs = {o.name for o in g.output}
    cons = consumers(g)
    producer = {o: n for n in g.node for o in n.output}
    shapes = _shapes(model)

    def only_reader(name: str, op: str):
        r = cons.get(name, [])
        return r[0] if len(r) == 1 and r[0].op_type == op and name not in outputs else None

    replace: dict[int, list[onnx.NodeProto]] = {}
    drop: set[int] = set()
    new_inits: list[onnx.TensorProto] = []
    made: set[str] = set()
    prefixes: set[str] = set()
    for r1 in g.node:
        if r1.op_type != "Reshape" or len(r1.input) < 2:
            continue
        norm = only_reader(r1.output[0], "InstanceNormalization")
        r2 = norm and only_reader(norm.output[0], "Reshape")
        mul = r2 and only_reader(r2.output[0], "Mul")
        add = mul and only_reader(mul.output[0], "Add")
        if add is None:
            continue
        gshape = _const(inits, r1.input[1])
        gamma_name = next((i for i in mul.input if i != r2.output[0]), "")
        beta_name = next((i for i in add.input if i != mul.output[0]), "")
        gamma, beta = _const(inits, gamma_name), _const(inits, beta_name)
        s_in, b_in = (_const(inits, norm.input[k]) if len(norm.input) > k else None for k in (1, 2))
        x = r1.input[0]
        dims = shapes.get(x)
        if (gshape is None or gshape.shape != (3,) or gamma is None or beta is None or s_in is None
                or b_in is None or not np.all(s_in == 1) or not np.all(b_in == 0) or not dims
                or len(dims) != 4 or dims[1] is None):
            continue
        c, groups = int(dims[1]), int(gshape[1])
        if groups <= 0 or c % groups or gamma.size != c or beta.size != c:
            continue
        eps = float(next((helper.get_attribute_value(a) for a in norm.attribute if a.name == "epsilon"), 1e-5))
        cg = c // groups
        # constants shared by every GroupNorm with the same shape (and gamma/beta by every level
        # sharing the original's): the rewrite adds no weights per level
        k = f"gn_nhwc/{groups}x{cg}"
        gk, bk = f"{k}/{gamma_name}", f"{k}/{beta_name}"
        for name, value in ((f"{k}/one_part", np.array([c], np.int64)),
                            (f"{k}/groups", np.array([0, groups, cg], np.int64)),
                            (f"{k}/channels", np.array([0, 1, 1, c], np.int64)),
                            ("gn_nhwc/zero", np.array(0.0, np.float32)), (f"gn_nhwc/eps{eps:g}", np.array(eps, np.float32)),
                            (gk, gamma.reshape(groups, cg).astype(np.float32)),
                            (bk, beta.reshape(groups, cg).astype(np.float32))):
            if name not in made:
                made.add(name)
                new_inits.append(numpy_helper.from_array(value, name))
        base = (r1.name or r1.output[0]).rsplit("/", 1)[0] + "/nhwc"
        p, k2 = base, 1
        while p in prefixes:  # two GroupNorms named in one module: a unique prefix each
            p, k2 = f"{base}{k2}", k2 + 1
        prefixes.add(p)
        mk = helper.make_node
        nodes: list[onnx.NodeProto] = []
        if producer.get(x) is None or producer[x].op_type != "Split":
            nodes.append(mk("Split", [x, f"{k}/one_part"], [f"{p}/x"], name=f"{p}/split", axis=1))
            x = f"{p}/x"
        t = f"{p}/t"
        nodes += [mk("Transpose", [x], [t], name=f"{p}/t", perm=[0, 2, 3, 1]),
                  mk("Mul", [t, t], [f"{p}/t2"], name=f"{p}/t2")]
        for src, stat in ((t, "m"), (f"{p}/t2", "q")):  # mean and mean square: per channel, per group
            nn, ii = _reduce("ReduceMean", src, f"{p}/{stat}c", [1, 2], opset, f"{p}/{stat}c")
            nodes += nn
            nodes.append(mk("Reshape", [f"{p}/{stat}c", f"{k}/groups"], [f"{p}/{stat}cg"], name=f"{p}/{stat}cg"))
            nn2, ii2 = _reduce("ReduceMean", f"{p}/{stat}cg", f"{p}/{stat}g", [2], opset, f"{p}/{stat}g")
            nodes += nn2
            for t_ in ii + ii2:  # axes initializers (opset 18+), shared
                if t_.name not in made:
                    made.add(t_.name)
                    new_inits.append(t_)
        nodes += [
            mk("Mul", [f"{p}/mg", f"{p}/mg"], [f"{p}/m2"], name=f"{p}/m2"),
            mk("Sub", [f"{p}/qg", f"{p}/m2"], [f"{p}/v0"], name=f"{p}/v0"),
            mk("Max", [f"{p}/v0", "gn_nhwc/zero"], [f"{p}/v"], name=f"{p}/v"),
            mk("Add", [f"{p}/v", f"gn_nhwc/eps{eps:g}"], [f"{p}/ve"], name=f"{p}/ve"),
            mk("Sqrt", [f"{p}/ve"], [f"{p}/sd"], name=f"{p}/sd"),
            mk("Div", [gk, f"{p}/sd"], [f"{p}/ag"], name=f"{p}/ag"),  # [B, G, C/G]
            mk("Mul", [f"{p}/mg", f"{p}/ag"], [f"{p}/ma"], name=f"{p}/ma"),
            mk("Sub", [f"{p}/ma", bk], [f"{p}/ng"], name=f"{p}/ng"),
            mk("Reshape", [f"{p}/ag", f"{k}/channels"], [f"{p}/a"], name=f"{p}/a"),
            mk("Reshape", [f"{p}/ng", f"{k}/channels"], [f"{p}/n"], name=f"{p}/n"),
            mk("Mul", [t, f"{p}/a"], [f"{p}/ta"], name=f"{p}/scale"),
            mk("Sub", [f"{p}/ta", f"{p}/n"], [f"{p}/y"], name=f"{p}/shift"),
            mk("Transpose", [f"{p}/y"], [add.output[0]], name=f"{p}/nchw", perm=[0, 3, 1, 2]),
        ]
        replace[id(r1)] = nodes
        drop.update({id(norm), id(r2), id(mul), id(add)})
        report.group_norms += 1
    if replace:
        _splice(model, replace, drop, new_inits)
    return model


def rewrite_for_int8(model: onnx.ModelProto, keep=()) -> tuple[onnx.ModelProto, RewriteReport]:
    """:func:`merge_sibling_convs`, :func:`duplicate_shared_convs`, then
    :func:`channels_last_group_norms` (module docstring). The FP32 network computes the same
    outputs (the last to float32 rounding). ``keep``: Conv names left alone (e.g. the head's
    prediction convolutions). Returns ``(model, report)``."""
    report = RewriteReport()
    keep = set(keep)
    out = merge_sibling_convs(model, keep, report)
    out = duplicate_shared_convs(out, keep, report)
    out = channels_last_group_norms(out, report)
    return out, report


def _splice(model: onnx.ModelProto, replace: dict[int, list[onnx.NodeProto]], drop: set[int],
            new_inits: list[onnx.TensorProto]) -> None:
    """Each node whose ``id`` is in ``replace`` -> its replacement nodes, those in ``drop`` removed,
    then :func:`_finish`."""
    nodes: list[onnx.NodeProto] = []
    for n in model.graph.node:
        if id(n) in replace:
            nodes.extend(replace[id(n)])
        elif id(n) not in drop:
            nodes.append(n)
    _finish(model, nodes, new_inits)


def _finish(model: onnx.ModelProto, nodes: list[onnx.NodeProto], new_inits: list[onnx.TensorProto]) -> None:
    g = model.graph
    g.initializer.extend(new_inits)
    available = {i.name for i in g.input} | {t.name for t in g.initializer}
    ordered = _topological(nodes, available)
    del g.node[:]
    g.node.extend(ordered)
    drop_unused_initializers(g)
    if (default_opset(model) or 13) < 13:
        raise RuntimeError("the int8 rewrite needs opset 13+ (Split with a split input)")
    del g.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(model)
    g.value_info.extend(inferred.graph.value_info)


def _shapes(model: onnx.ModelProto) -> dict[str, list]:
    g = model.graph
    if not len(g.value_info):
        g = onnx.shape_inference.infer_shapes(model).graph
    out = {}
    for v in list(g.input) + list(g.value_info) + list(g.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            out[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return out


def _conv_macs(node: onnx.NodeProto, model: onnx.ModelProto, shapes: dict) -> int:
    """Multiply-accumulates of one image through ``node`` (0 where a shape is unknown)."""
    inits = {t.name: t for t in model.graph.initializer}
    out = shapes.get(node.output[0])
    w = inits.get(node.input[1])
    if not out or w is None or any(d is None for d in out[2:]):
        return 0
    return int(np.prod(w.dims)) * int(np.prod(out[2:]))


# ----------------------------------------------------------------------------------------------
# What ONNX Runtime runs


def ort_optimized_graph(model: onnx.ModelProto | str | Path, *, int8_allowed: bool | None = None,
                        level: str = "all") -> onnx.ModelProto:
    """The graph ONNX Runtime's CPU provider runs for ``model`` (its optimized model file).
    ``int8_allowed``: the session option ``session.qdqisint8allowed`` (None: ORT's default)."""
    import onnxruntime as ort

    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    with tempfile.TemporaryDirectory(prefix="swdet-ortopt-") as tmp:
        src = model
        if isinstance(model, onnx.ModelProto):
            src = Path(tmp) / "in.onnx"
            onnx.save(model, str(src))
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = 1
        opts.graph_optimization_level = levels[level]
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        if int8_allowed is not None:
            opts.add_session_config_entry("session.qdqisint8allowed", "1" if int8_allowed else "0")
        ort.InferenceSession(str(src), sess_options=opts, providers=["CPUExecutionProvider"])
        return onnx.load(opts.optimized_model_filepath)


def ort_conv_counts(model: onnx.ModelProto | str | Path, *, int8_allowed: bool | None = None) -> dict:
    """How many convolutions ONNX Runtime (CPU) runs as int8 vs float for ``model``:
    ``{"int8": n, "float": n, "total": n, "float_convs": [names], "ops": {op: count}}``, read
    from its optimized graph (:func:`ort_optimized_graph`; float ``Conv`` in any domain, e.g.
    the NCHWc one, vs ``QLinearConv`` / ``ConvInteger``)."""
    opt = ort_optimized_graph(model, int8_allowed=int8_allowed)
    ops: dict[str, int] = {}
    floats: list[str] = []
    n_int8 = 0
    for n in opt.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
        if n.op_type in INT8_CONV_OPS:
            n_int8 += 1
        elif n.op_type in FLOAT_CONV_OPS:
            floats.append(n.name)
    return {"int8": n_int8, "float": len(floats), "total": n_int8 + len(floats), "float_convs": floats,
            "ops": dict(sorted(ops.items()))}


__all__ = ["RewriteReport", "channels_last_group_norms", "duplicate_shared_convs", "merge_sibling_convs", "ort_conv_counts",
           "ort_optimized_graph", "rewrite_for_int8"]
