"""Per-layer quantization sensitivity (``swdet calib --report``).

For each layer ``l`` (a Conv, with the ReLU right after it, or an Add of two activations) a model
is built in which only ``l`` is quantized -- with exactly the ranges and settings of the real
calibration -- and run on a few calibration images. Its head outputs (the ``net/*`` boundary
tensors: class logits ``y_cls`` and box deltas ``y_box``) are compared with the float32 ones::

    SNR_g(l) = 10 · log10( Σ y_g² / Σ (ŷ_g(l) - y_g)² )   [dB],  g ∈ {cls, box}

Low SNR = the layer hurts. The table is sorted worst first (by ``min(SNR_cls, SNR_box)``); a last
row gives the fully quantized network. Layers found to hurt can be kept float with
``--exclude NAME``. Cost: one quantization and one ONNX Runtime session per layer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from swdet.errors import SwdetError


def _run(model: onnx.ModelProto, images: np.ndarray, names: list[str]) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    x = images.astype(np.float32)
    return sess.run(names, {sess.get_inputs()[0].name: x})


def snr_db(ref: list[np.ndarray], test: list[np.ndarray]) -> float:
    """``10·log10(Σ ref² / Σ (test - ref)²)`` over all the given tensors (inf when equal)."""
    sig = sum(float(np.sum(np.square(r.astype(np.float64)))) for r in ref)
    err = sum(float(np.sum(np.square(t.astype(np.float64) - r))) for r, t in zip(ref, test))
    if err == 0.0:
        return float("inf")
    if sig == 0.0:
        return float("-inf")
    return 10.0 * np.log10(sig / err)


def _groups(boundary: list[str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {"cls": [], "box": []}
    for i, b in enumerate(boundary):
        groups["cls" if "cls" in b else "box"].append(i)
    return {k: v for k, v in groups.items() if v}


def layers(network: onnx.ModelProto, exclude=()) -> list[tuple[str, list[str]]]:
    """``(layer name, node names to quantize together)``: each Conv with a ReLU that is its only
    consumer, each Add of two activations; excluded nodes left out."""
    from swdet.calib.quantize import quantizable_nodes
    from swdet.deploy.graph import consumers

    cons = consumers(network.graph)
    excluded = set(exclude)
    out = []
    for n in quantizable_nodes(network):
        if n.name in excluded or n.op_type == "Relu":
            continue
        group = [n.name]
        nxt = cons.get(n.output[0], [])
        if len(nxt) == 1 and nxt[0].op_type == "Relu" and nxt[0].name not in excluded:
            group.append(nxt[0].name)
        out.append((n.name, group))
    return out


def sensitivity(network: onnx.ModelProto, boundary: list[str], amax: dict[str, float], images: np.ndarray, *,
                per_channel: bool = True, exclude=(), float_outputs=(), progress: bool = False) -> list[dict]:
    """The per-layer table (module docstring): rows ``{"layer", "op", "snr_cls_db", "snr_box_db",
    "snr_db"}`` sorted worst first, then the ``"(all layers)"`` row."""
    from swdet.calib.quantize import quantize_network
    from tqdm import tqdm

    if len(images) == 0:
        raise SwdetError("--report: no images to measure the sensitivity on")
    ops = {n.name: n.op_type for n in network.graph.node}
    ref = _run(network, images, boundary)
    groups = _groups(boundary)

    def row(name: str, op: str, outs: list[np.ndarray]) -> dict:
        r = {"layer": name, "op": op}
        for g, idx in groups.items():
            r[f"snr_{g}_db"] = round(snr_db([ref[i] for i in idx], [outs[i] for i in idx]), 2)
        r["snr_db"] = min(r[f"snr_{g}_db"] for g in groups)
        return r

    rows = []
    for name, group in tqdm(layers(network, exclude), desc="report", unit="layer", disable=not progress,
                            leave=False):
        q = quantize_network(network, amax, per_channel=per_channel, exclude=exclude, nodes_to_quantize=group,
                             float_outputs=[f for f in float_outputs if f in group])
        rows.append(row(name, ops.get(name, "?"), _run(q, images, boundary)))
    rows.sort(key=lambda r: r["snr_db"])
    full = quantize_network(network, amax, per_channel=per_channel, exclude=exclude, float_outputs=float_outputs)
    rows.append(row("(all layers)", "-", _run(full, images, boundary)))
    return rows


def write_report(path: str | Path, rows: list[dict], **info) -> Path:
    from swdet.artifact import atomic_write_json

    path = Path(path)
    atomic_write_json(path, {**info, "metric": "SNR of the head outputs vs float32, dB (higher is better)",
                             "layers": rows})
    return path


def format_report(rows: list[dict], limit: int | None = 15) -> str:
    """The table the CLI prints: the ``limit`` worst layers and the full-network row."""
    from swdet.table import format_table

    body = [r for r in rows if r["layer"] != "(all layers)"]
    full = [r for r in rows if r["layer"] == "(all layers)"]
    shown = body[:limit] if limit else body
    cols = [k for k in ("snr_cls_db", "snr_box_db", "snr_db") if any(k in r for r in rows)]
    table = [[r["layer"], r["op"], *[r.get(k) for k in cols]] for r in shown + full]
    title = f"per-layer sensitivity (only that layer int8; SNR of the head outputs, worst first; {len(body)} layers)"
    return format_table(table, headers=["layer", "op", *[c.replace("_db", " dB") for c in cols]], title=title)


__all__ = ["format_report", "layers", "sensitivity", "snr_db", "write_report"]
