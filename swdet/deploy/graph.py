"""ONNX graph helpers that export and calib both need (and serve, triton and the TensorRT
static check read graphs with): loading with one-line errors, the default-domain opset, static
dimensions, consumers, the lossless clean-up and the checker with strict shape inference.
Imports onnx (not torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from swdet.errors import SwdetError

__all__ = ["load_onnx", "default_opset", "static_dims", "consumers", "has_plugin", "tidy_graph",
           "static_reshapes", "check_and_infer", "check_model"]


def load_onnx(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    """A proto as is, or the ``.onnx`` file (external data not loaded); an unreadable file is a
    one-line :class:`SwdetError` naming it."""
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise SwdetError(f"{path}: no such file")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf DecodeError and friends
        raise SwdetError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None


def default_opset(model: onnx.ModelProto, domain: str = "") -> int | None:
    """The opset version imported for ``domain`` (``""`` = the default domain, also spelled
    ``ai.onnx``), or None."""
    for o in model.opset_import:
        if o.domain == domain or (domain == "" and o.domain == "ai.onnx"):
            return int(o.version)
    return None


def static_dims(value_info: onnx.ValueInfoProto) -> list[int | None]:
    """The dimensions of a tensor's type, None where not a positive constant."""
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in value_info.type.tensor_type.shape.dim]


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it."""
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            if i:
                out.setdefault(i, []).append(n)
    return out


def has_plugin(model: onnx.ModelProto) -> bool:
    """Whether a node is outside the ONNX domains (e.g. a TensorRT plugin: no schema)."""
    return any(n.domain not in ("", "ai.onnx") for n in model.graph.node)


# ----------------------------------------------------------------------------------------------
# Lossless clean-up


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove the initializers no node of ``graph`` reads (in place)."""
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def tidy_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constants to initializers, Identity chains removed, dead nodes and initializers dropped.
    Tensor values are untouched (lossless)."""
    g = model.graph
    keep_names = {o.name for o in g.output}
    nodes = []
    for n in g.node:
        if (n.op_type == "Constant" and n.domain in ("", "ai.onnx") and len(n.attribute) == 1
                and n.attribute[0].name == "value"):
            t = TensorProto()
            t.CopyFrom(n.attribute[0].t)
            t.name = n.output[0]
            g.initializer.append(t)
        else:
            nodes.append(n)
    alias: dict[str, str] = {}
    kept = []
    for n in nodes:
        if n.op_type == "Identity" and n.domain in ("", "ai.onnx") and n.output[0] not in keep_names:
            alias[n.output[0]] = n.input[0]
        else:
            kept.append(n)

    def resolve(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    for n in kept:
        for i, name in enumerate(n.input):
            if name in alias:
                n.input[i] = resolve(name)
    # an Identity that only renames a node's output to a graph output: let the producer write it
    consumers: dict[str, int] = {}
    for n in kept:
        for name in n.input:
            consumers[name] = consumers.get(name, 0) + 1
    producer = {o: n for n in kept for o in n.output}
    graph_inputs = {i.name for i in g.input}
    folded = []
    for n in kept:
        if (n.op_type == "Identity" and n.domain in ("", "ai.onnx") and n.input[0] in producer
                and consumers.get(n.input[0]) == 1 and n.input[0] not in keep_names
                and n.input[0] not in graph_inputs):
            src = producer[n.input[0]]
            src.output[list(src.output).index(n.input[0])] = n.output[0]
        else:
            folded.append(n)
    kept = folded
    # dead-code elimination, from the graph outputs backwards
    needed = set(keep_names)
    live = []
    for n in reversed(kept):
        if any(o in needed for o in n.output):
            live.append(n)
            needed.update(i for i in n.input if i)
    live.reverse()
    del g.node[:]
    g.node.extend(live)
    inits = [t for t in g.initializer if t.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)
    del g.value_info[:]  # recomputed by shape inference
    return model


def static_reshapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace computed ``Reshape`` targets (``Shape -> Gather -> Concat`` chains, traced from
    ``x.view(b, ...)``) by constants when shape inference knows every output dim but one: the
    unknown one (the batch) becomes -1, which Reshape recomputes to the same value. Lossless;
    the dead shape arithmetic is then removed by :func:`tidy_graph`."""
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    inits = {t.name for t in model.graph.initializer}
    changed = False
    for n in model.graph.node:
        if n.op_type != "Reshape" or len(n.input) < 2 or n.input[1] in inits:
            continue
        if any(a.name == "allowzero" and a.i for a in n.attribute):
            continue
        dims = shapes.get(n.output[0])
        if not dims or sum(d is None for d in dims) != 1 or any(d == 0 for d in dims):
            continue
        target = np.array([-1 if d is None else d for d in dims], dtype=np.int64)
        name = f"{n.output[0]}/static_shape"
        model.graph.initializer.append(onnx.numpy_helper.from_array(target, name))
        inits.add(name)
        n.input[1] = name
        changed = True
    return tidy_graph(model) if changed else model


# ----------------------------------------------------------------------------------------------
# Checks


def check_model(model: onnx.ModelProto, what: str = "the graph") -> None:
    """``onnx.checker`` (full check unless a plugin node has no schema); a RuntimeError naming
    ``what`` otherwise (a bug in swdet, not a user error)."""
    try:
        onnx.checker.check_model(model, full_check=not has_plugin(model))
    except onnx.checker.ValidationError as e:
        raise RuntimeError(f"{what} does not pass the ONNX checker: {str(e).splitlines()[0]}") from e


def check_and_infer(proto: onnx.ModelProto, extra_value_info=()) -> onnx.ModelProto:
    """``onnx.checker`` (full check) and strict shape inference; ``extra_value_info`` types the
    outputs of nodes without a schema (TensorRT plugins)."""
    try:
        if has_plugin(proto):
            proto.graph.value_info.extend(extra_value_info)
            onnx.checker.check_model(proto, full_check=False)
            inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=False, data_prop=True)
        else:
            onnx.checker.check_model(proto, full_check=True)
            inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise RuntimeError(f"the exported graph does not pass the ONNX checker: {str(e).splitlines()[0]}") from e
    return inferred
