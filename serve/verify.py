"""``swdet verify``: does the candidate cost exactly what the baseline costs at test time, and
did export keep each model's accuracy?

Both models are exported ONNX files (the CLI exports run directories first). The checks:

**Cost identity** (any difference fails): the graph's op histogram (``op_type -> count``, nested
subgraphs included), the initializers' names and shapes (weight *values* are ignored: training
changes them, not the cost), the input size, the parameter count, and the export settings that
shape the graph: precision, NMS mode, fixed/dynamic batch, ``pre_nms_topk`` and ``max_det``
(these set the sizes of the top-k and the padded outputs). Two graphs equal on all of these
run the same kernels on the same shapes.

**Data-dependent post-processing settings**: ``score_threshold`` and ``nms_iou`` only change how
many candidates reach and survive NMS, i.e. the work inside the same graph. They legitimately
differ between methods (Sampling-Free derives θ = N_f/N; focal uses 0.05), so a difference is a
*warning* row, and the measured latency decides.

**Latency**: one interleaved A/B benchmark (:func:`swdet.serve.bench.interleaved_latency`):
ratio ``r = median_rounds(B/A)`` with a 95 % bootstrap band. Rule: *same cost* when the band
contains 1 (no detectable difference) **or** ``|r - 1| <= latency_tolerance`` (default 5 %).
The second arm exists because with many rounds a band can become narrow enough to exclude 1 for
differences that are real but immaterial (cache placement, a different but equally fast NMS
path, clock drift not fully cancelled by ABBA ordering); 5 % is below what a deployment would
notice and above the run-to-run spread of a quiet machine. How the latency counts:

- identity differs: not ok whatever the latency says;
- identity holds and the thresholds are equal: the cost is identical by construction; a
  latency outside the rule is reported as a warning (measurement noise), not a failure;
- identity holds and the thresholds differ: the latency decides (outside the rule: not ok;
  not measured, ``rounds=0``: undecided, not ok).

**Accuracy** (with ``ann`` and ``images``): the COCO AP of each ONNX model, and, when its
PyTorch source (run directory / artifact) is given, the AP of that source run by PyTorch at the
threshold baked into the ONNX graph: ``|AP_onnx - AP_torch| <= tolerance`` (AP as a fraction,
default 0.002 = 0.2 points). The baseline-vs-candidate AP difference is reported, not judged
(the methods exist to change it).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from swdet.errors import SwdetError

__all__ = ["VerifyRow", "VerifyReport", "OnnxSummary", "summarize_onnx", "verify", "format_verify_report",
           "same_cost"]

#: Row statuses. ``differs`` and ``undecided`` make the report fail.
STATUSES = ("same", "differs", "warn", "info", "undecided", "skipped")


@dataclass
class VerifyRow:
    check: str
    baseline: Any
    candidate: Any
    status: str
    note: str = ""


@dataclass
class VerifyReport:
    baseline: str
    candidate: str
    rows: list[VerifyRow] = field(default_factory=list)
    latency: dict | None = None
    accuracy: dict | None = None
    rule: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(r.status in ("differs", "undecided") for r in self.rows)

    @property
    def failures(self) -> list[VerifyRow]:
        return [r for r in self.rows if r.status in ("differs", "undecided")]

    def to_dict(self) -> dict:
        return {"ok": self.ok, "baseline": self.baseline, "candidate": self.candidate,
                "rows": [asdict(r) for r in self.rows], "latency": self.latency, "accuracy": self.accuracy,
                "rule": self.rule}


# ----------------------------------------------------------------------------------------------
# Graph summaries


@dataclass
class OnnxSummary:
    path: str
    meta: dict
    ops: Counter
    initializers: dict[str, tuple[int, ...]]
    input_shape: list
    initializer_elements: int
    opset: int | None

    @property
    def export(self) -> dict:
        return dict(self.meta.get("export") or {})

    @property
    def post(self) -> dict:
        return dict(self.meta.get("postprocess") or {})


def _walk_graph(graph, ops: Counter, inits: dict) -> None:
    from onnx import AttributeProto

    for t in graph.initializer:
        inits[t.name if t.name not in inits else f"{graph.name}/{t.name}"] = tuple(int(d) for d in t.dims)
    for node in graph.node:
        ops[node.op_type if not node.domain or node.domain == "ai.onnx" else f"{node.domain}::{node.op_type}"] += 1
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                _walk_graph(attr.g, ops, inits)
            elif attr.type == AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _walk_graph(g, ops, inits)


def summarize_onnx(path: str | os.PathLike) -> OnnxSummary:
    """Structure of an exported model (weights' values are not loaded beyond their headers)."""
    import numpy as np
    import onnx

    from swdet.deploy.graph import default_opset
    from swdet.deploy.onnx_meta import metadata_text, parse_metadata

    p = Path(path)
    if not p.is_file():
        raise SwdetError(f"{p}: no such file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf DecodeError and friends
        raise SwdetError(f"{p}: not a valid ONNX model (truncated or corrupt file: {type(e).__name__})") from None
    meta = parse_metadata(metadata_text(model), str(p))
    ops: Counter = Counter()
    inits: dict[str, tuple[int, ...]] = {}
    _walk_graph(model.graph, ops, inits)
    if not model.graph.input:
        raise SwdetError(f"{p}: the graph has no input")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
    opset = default_opset(model)
    elements = int(sum(int(np.prod(s)) if s else 1 for s in inits.values()))
    return OnnxSummary(str(p), meta, ops, inits, shape, elements, opset)


def same_cost(latency: dict, tolerance: float = 0.05) -> bool:
    """The latency rule: the band contains 1, or the ratio is within ``±tolerance`` of 1."""
    lo, hi = latency["band"]
    return (lo <= 1.0 <= hi) or abs(latency["ratio"] - 1.0) <= tolerance


def _fmt_shape(shape) -> str:
    return "x".join(str(d) for d in shape)


def _ops_diff(a: Counter, b: Counter, limit: int = 4) -> str:
    """The op types whose counts differ, largest difference first."""
    keys = [k for k in set(a) | set(b) if a.get(k, 0) != b.get(k, 0)]
    keys.sort(key=lambda k: (-abs(a.get(k, 0) - b.get(k, 0)), k))
    diffs = [f"{k} {a.get(k, 0)}->{b.get(k, 0)}" for k in keys]
    more = f" (+{len(diffs) - limit} more)" if len(diffs) > limit else ""
    return ", ".join(diffs[:limit]) + more


def _init_diff(a: dict, b: dict) -> tuple[str, str]:
    """``(status, note)`` of the initializer comparison."""
    if a == b:
        return "same", ""
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    reshaped = sorted(k for k in set(a) & set(b) if a[k] != b[k])
    if sorted(a.values()) == sorted(b.values()):
        return "warn", f"same shapes, {len(only_a)} names differ (e.g. {only_a[:1] + only_b[:1]})"
    parts = []
    if reshaped:
        k = reshaped[0]
        parts.append(f"{len(reshaped)} reshaped (e.g. {k}: {_fmt_shape(a[k])}->{_fmt_shape(b[k])})")
    if only_a:
        parts.append(f"{len(only_a)} only in baseline (e.g. {only_a[0]})")
    if only_b:
        parts.append(f"{len(only_b)} only in candidate (e.g. {only_b[0]})")
    return "differs", "; ".join(parts)


def _structure_rows(a: OnnxSummary, b: OnnxSummary) -> list[VerifyRow]:
    from swdet.artifact import input_size

    rows = []
    n_a, n_b = sum(a.ops.values()), sum(b.ops.values())
    rows.append(VerifyRow("graph ops", f"{n_a} nodes, {len(a.ops)} types", f"{n_b} nodes, {len(b.ops)} types",
                          "same" if a.ops == b.ops else "differs", _ops_diff(a.ops, b.ops)))
    status, note = _init_diff(a.initializers, b.initializers)
    rows.append(VerifyRow("initializers (names, shapes)", len(a.initializers), len(b.initializers), status, note))
    rows.append(VerifyRow("initializer elements", a.initializer_elements, b.initializer_elements,
                          "same" if a.initializer_elements == b.initializer_elements else "differs"))
    pa, pb = a.meta.get("num_parameters"), b.meta.get("num_parameters")
    rows.append(VerifyRow("parameters (model.json)", pa, pb,
                          "skipped" if pa is None or pb is None else ("same" if pa == pb else "differs"),
                          "" if pa is not None and pb is not None else "not recorded"))
    size_a = (_fmt_shape(a.input_shape), input_size(a.meta))
    size_b = (_fmt_shape(b.input_shape), input_size(b.meta))
    rows.append(VerifyRow("input", size_a[0], size_b[0], "same" if size_a == size_b else "differs"))
    ea, eb = a.export, b.export
    for key, label in (("precision", "precision"), ("nms", "nms mode"), ("batch", "batch")):
        va, vb = ea.get(key, "fp32" if key == "precision" else None), eb.get(key, "fp32" if key == "precision" else None)
        rows.append(VerifyRow(label, va, vb, "same" if va == vb else "differs"))
    for key in ("pre_nms_topk", "max_det"):
        va, vb = a.post.get(key), b.post.get(key)
        rows.append(VerifyRow(key, va, vb, "same" if va == vb else "differs"))
    rows.append(VerifyRow("opset", a.opset, b.opset, "same" if a.opset == b.opset else "warn",
                          "" if a.opset == b.opset else "same ops can lower differently"))
    return rows


def _threshold_rows(a: OnnxSummary, b: OnnxSummary) -> list[VerifyRow]:
    from swdet.deploy.onnx_meta import baked_score_threshold

    rows = []
    ta, tb = baked_score_threshold(a.meta), baked_score_threshold(b.meta)
    src_a = (a.meta.get("threshold") or {}).get("source")
    src_b = (b.meta.get("threshold") or {}).get("source")
    same_t = ta is not None and tb is not None and abs(ta - tb) <= 1e-12
    rows.append(VerifyRow("score_threshold", ta, tb, "same" if same_t else "warn",
                          "" if same_t else f"data-dependent NMS work; latency decides ({src_a} vs {src_b})"))
    ia, ib = a.post.get("nms_iou"), b.post.get("nms_iou")
    rows.append(VerifyRow("nms_iou", ia, ib, "same" if ia == ib else "warn",
                          "" if ia == ib else "data-dependent NMS work; latency decides"))
    return rows


# ----------------------------------------------------------------------------------------------
# Accuracy


def _coco_ap(runtime, ann, images, batch_size: int, progress: bool) -> float:
    """COCO AP of ``runtime`` on the dataset (:func:`swdet.inference.evaluate_runtime`: category
    check, prediction, evaluation over the readable images)."""
    from swdet.inference import evaluate_runtime

    ev = evaluate_runtime(runtime, ann, images, batch_size=batch_size, progress=progress,
                          desc=Path(str(runtime.source)).name, warn=False)
    return float(ev.result.stats["AP"])


def _accuracy(label: str, onnx_rt, source, ann, images, batch_size, tolerance, device, progress) -> tuple[dict, VerifyRow]:
    from swdet.deploy.onnx_meta import baked_score_threshold
    from swdet.serve.runtimes.torch_runtime import TorchRuntime

    ap_onnx = _coco_ap(onnx_rt, ann, images, batch_size, progress)
    res: dict[str, Any] = {"onnx_AP": ap_onnx}
    if source is None:
        return res, VerifyRow(f"{label} AP: onnx vs torch", None, None, "skipped",
                              f"onnx AP {ap_onnx:.4f}; pass the run directory to compare with PyTorch")
    torch_rt = TorchRuntime(source, device=device, score_threshold=baked_score_threshold(onnx_rt.meta))
    ap_torch = _coco_ap(torch_rt, ann, images, batch_size, progress)
    delta = ap_onnx - ap_torch
    res.update({"torch_AP": ap_torch, "delta": delta, "ok": abs(delta) <= tolerance})
    return res, VerifyRow(f"{label} AP: torch -> onnx", round(ap_torch, 4), round(ap_onnx, 4),
                          "same" if abs(delta) <= tolerance else "differs",
                          f"delta {delta:+.4f} (tolerance {tolerance:g})")


# ----------------------------------------------------------------------------------------------


def verify(baseline, candidate, *, baseline_source=None, candidate_source=None, ann=None, images=None,
           batch_size: int = 8, rounds: int = 20, iters: int = 5, warmup: int = 3, tolerance: float = 0.002,
           latency_tolerance: float = 0.05, device: str = "cpu", latency_images=None,
           progress: bool = False) -> VerifyReport:
    """Compare two exported ONNX models (see the module docstring for every rule).

    Args:
        baseline, candidate: ``.onnx`` paths.
        baseline_source, candidate_source: the run directories / artifacts they were exported
            from (optional; enable the torch-vs-onnx accuracy check).
        ann, images: COCO annotation file and image folder (optional; enable accuracy checks).
        batch_size: batch of the latency benchmark and of evaluation.
        rounds, iters, warmup: of the interleaved latency benchmark (``rounds=0`` skips it).
        tolerance: allowed ``|AP_onnx - AP_torch|`` (fraction; 0.002 = 0.2 AP points).
        latency_tolerance: the ``±`` band around ratio 1 accepted as the same cost.
        device: where ONNX Runtime (and the torch reference) run.
        latency_images: folder of images for the latency benchmark (default: synthetic).
    """
    from swdet.serve.runtimes.onnxruntime_runtime import OnnxRuntime

    if (ann is None) != (images is None):
        raise SwdetError("--ann and --images go together (both enable the accuracy check)")
    if tolerance < 0 or latency_tolerance < 0:
        raise SwdetError("tolerances must be >= 0")
    for src in (baseline, candidate):
        if Path(src).suffix.lower() != ".onnx":
            raise SwdetError(f"{src}: verify compares exported .onnx models (export run directories first)")
    sa, sb = summarize_onnx(baseline), summarize_onnx(candidate)
    report = VerifyReport(str(baseline), str(candidate),
                          rule={"identity": "ops, initializer names+shapes, parameters, input size, precision, "
                                            "nms mode, batch, pre_nms_topk, max_det must match",
                                "latency_same_cost": f"95% band contains 1 or |ratio-1| <= {latency_tolerance:g}",
                                "accuracy": f"|AP_onnx - AP_torch| <= {tolerance:g}"})
    report.rows.extend(_structure_rows(sa, sb))
    identity_ok = not any(r.status == "differs" for r in report.rows)
    thr_rows = _threshold_rows(sa, sb)
    report.rows.extend(thr_rows)
    thresholds_differ = any(r.status == "warn" for r in thr_rows)

    rt_a = OnnxRuntime(baseline, device=device)
    rt_b = OnnxRuntime(candidate, device=device)
    try:
        if rounds > 0:
            bs = batch_size
            limits = [m for m in (rt_a.max_batch, rt_b.max_batch) if m]
            if limits:
                bs = min(bs, *limits)
            lat = interleaved(rt_a, rt_b, bs, rounds, iters, warmup, latency_images)
            same = same_cost(lat, latency_tolerance)
            lat["same_cost"] = same
            report.latency = lat
            note = f"ratio {lat['ratio']:.3f}, 95% band [{lat['band'][0]:.3f}, {lat['band'][1]:.3f}], batch {bs}"
            if same:
                status = "same"
            elif identity_ok and not thresholds_differ:
                status, note = "warn", note + "; identical graphs and settings: measurement noise"
            else:
                status = "differs"
            report.rows.append(VerifyRow("latency (ms, median)", lat["a_ms"]["median"], lat["b_ms"]["median"],
                                         status, note))
        else:
            status = "undecided" if identity_ok and thresholds_differ else "skipped"
            report.rows.append(VerifyRow("latency (ms, median)", None, None, status,
                                         "not measured" + ("; needed to decide the threshold difference"
                                                           if status == "undecided" else "")))
        if ann is not None:
            acc_a, row_a = _accuracy("baseline", rt_a, baseline_source, ann, images, batch_size, tolerance, device,
                                     progress)
            acc_b, row_b = _accuracy("candidate", rt_b, candidate_source, ann, images, batch_size, tolerance,
                                     device, progress)
            report.accuracy = {"baseline": acc_a, "candidate": acc_b,
                               "candidate_minus_baseline": acc_b["onnx_AP"] - acc_a["onnx_AP"]}
            report.rows.extend([row_a, row_b])
            report.rows.append(VerifyRow("AP (onnx)", round(acc_a["onnx_AP"], 4), round(acc_b["onnx_AP"], 4), "info",
                                         f"candidate {acc_b['onnx_AP'] - acc_a['onnx_AP']:+.4f}"))
    finally:
        rt_a.close()
        rt_b.close()
    return report


def interleaved(rt_a, rt_b, batch_size, rounds, iters, warmup, images):
    from swdet.serve.bench import interleaved_latency

    return interleaved_latency(rt_a, rt_b, batch_size=batch_size, rounds=rounds, iters=iters, warmup=warmup,
                               images=images)


def format_verify_report(report: VerifyReport) -> str:
    """The report as a table plus a verdict line."""
    from swdet.table import format_table

    def cell(v):
        if v is None:
            return "-"
        return v if isinstance(v, str) else json.dumps(v) if isinstance(v, (list, dict)) else v

    rows = [[r.check, cell(r.baseline), cell(r.candidate), r.status, r.note] for r in report.rows]
    table = format_table(rows, headers=["check", "baseline", "candidate", "status", "note"],
                         title=f"verify: {report.baseline} (baseline) vs {report.candidate} (candidate)")
    if report.ok:
        verdict = "OK: same test-time cost" + (" and accuracy kept through export" if report.accuracy else "")
    else:
        verdict = "FAILED: " + "; ".join(f"{r.check} {r.status}" for r in report.failures)
    return table + "\n" + verdict
