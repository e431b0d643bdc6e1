"""RetinaNet post-processing as explicit ONNX nodes (no exporter tracing of NMS).

The nodes reproduce :mod:`swdet.models.postprocess` operation by operation, in float32:

1. per FPN level ``l`` (static ``n_l = H_l·W_l·A`` anchors, ``C`` classes): the logits flattened
   to ``[B, n_l·C]`` (anchor-major, class-minor), ``TopK`` on the logits (the sigmoid is monotonic)
   and ``s = sigmoid`` of the ``K_l`` kept only; ``anchor = idx div C``, ``class = idx - anchor·C``;
   the anchor's deltas (``GatherND``, batch_dims 1) and the anchor's centre/size (``Gather`` from
   constants computed once from :func:`swdet.models.anchors.generate_anchors`).
   ``K_l``: with ``--nms onnx`` and a threshold ``θ > 0`` the threshold acts *before* the top-k
   (Sampling-Free's point: an adaptive θ makes post-processing cheaper):
   ``K_l = max(1, min(k_l, max_b #{logit > logit(θ) - 0.01}))`` with ``k_l = min(pre_nms_topk,
   n_l·C)``, so a level where few pairs pass θ sorts, decodes and suppresses only those. Every
   pair with ``sigmoid > θ`` is among them (the 0.01 margin covers float32 rounding; the exact
   ``score > θ`` test comes in step 3), so the detections are those of the static ``K_l = k_l``.
   The sorts see only what passes θ: the best groups of consecutive anchors (levels of at
   least :data:`GROUP_MIN_ANCHORS` anchors; one max over each group's ``G·C`` logits), then the
   best anchors of those groups, then the best pairs of those anchors, each count capped by what
   passes θ in the batch's fullest image (:func:`_grouped_threshold_topk`), and ``K_l`` is
   counted on the gathered pairs, not on all ``n_l·C``.
   The data-dependent K is a run-time TopK input, which TensorRT 10's ONNX parser accepts
   (operator matrix: "K input must be less than 3840"; 8.x required an initializer).
   ``θ = 0`` and ``--nms efficient`` keep the static ``K_l = k_l``;
2. over the concatenated candidates ``[B, N]`` (N = Σ k_l), box decoding with the
   :class:`swdet.boxes.BoxCoder` parameterization
   ``c = d_xy / w_xy · size + ctr``, ``wh = exp(min(d_wh / w_wh, clip)) · size``,
   ``box = (c - wh/2, c + wh/2)`` and clipping to ``[0, S]``;
3. the score threshold ``score > θ`` applied explicitly (``Greater`` and ``Where`` to -1 on
   ``[B, N]``, before the class rows) so the semantics do not depend on how an NMS
   implementation compares;
4. ``--nms onnx``: class-aware NMS with the standard ``NonMaxSuppression`` op. Each candidate is one
   (anchor, class) pair, so the scores go in as ``[B, C, N]`` with the candidate's score in its own
   class row and -1 elsewhere: one NMS call handles every image and class, each class
   independently (what torchvision's ``batched_nms`` emulates with coordinate offsets, without
   the offsets' float32 rounding on large coordinates). ``max_output_boxes_per_class = max_det``
   is exact: a class's (max_det+1)-th survivor can never be among an image's best ``max_det``.
   The selected ``(batch, class, box)`` triples become a dense ``[B, N]`` score map (``ScatterND``
   into -1), ``TopK`` keeps the ``K = min(max_det, N)`` best per image, rows that hold no
   detection are zeroed and everything is padded to ``max_det``: no loops, static output shapes;
5. ``--nms efficient``: the same candidates go to TensorRT's ``EfficientNMS_TRT`` plugin as
   decoded boxes ``[B, N, 4]`` and one-hot scores ``[B, N, C]`` (the candidate's score in its class
   column, 0 elsewhere); its outputs are masked again with ``score > θ``
   (see :data:`EFFICIENT_NMS_DIFFERENCES`).

ONNX Runtime's CPU ``NonMaxSuppression`` (non_max_suppression.cc / non_max_suppression_helper.h)
keeps a box when ``score > score_threshold`` and suppresses when ``IoU > iou_threshold``, the same
strict comparisons as torch (``scores > θ``) and torchvision's NMS (``IoU > iou``); TensorRT's NMS
layer documents the same ("score above a threshold", kept while "IoU less than or equal").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

TRT_DOMAIN = "TRT"
EFFICIENT_NMS_OP = "EfficientNMS_TRT"
OUTPUT_NAMES = ("num_dets", "det_boxes", "det_scores", "det_classes")

EFFICIENT_NMS_DIFFERENCES = """\
EfficientNMS_TRT versus the torch/ONNX post-processing (same candidates, same threshold):
- the plugin keeps score >= threshold; the graph pre-masks score > θ and masks its outputs
  again, so the threshold semantics are those of torch (score > θ);
- the plugin suppresses a box when IoU >= iou_threshold (torch and NonMaxSuppression: IoU > iou);
  only pairs with an IoU of exactly the threshold differ;
- the plugin sorts at most the 4096 best (candidate, class) scores per image before NMS; the
  onnx path sees all N candidates. Only matters when more than 4096 candidates pass θ and one
  beyond the 4096th would have been among the best max_det survivors;
- score ties may be ordered differently (unspecified in both);
- runs only in TensorRT (the plugin is not an ONNX Runtime op)."""


@dataclass(frozen=True)
class LevelSpec:
    """One FPN level of the network's outputs: ``cls [B, n, C]`` and ``box [B, n, 4]``."""

    cls_name: str
    box_name: str
    num_anchors: int  # n = H·W·A
    topk: int  # k = min(pre_nms_topk, n·C)


class GraphBuilder:
    """Appends nodes and initializers with unique names under a prefix."""

    def __init__(self, prefix: str = "post", opset: int = 17):
        self.prefix = prefix
        self.opset = int(opset)  # ReduceMax takes ``axes`` as an input from opset 18
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}/{hint}_{self._count}"

    def const(self, value, dtype=None, hint: str = "const") -> str:
        arr = np.asarray(value, dtype=dtype)
        name = self._name(hint)
        self.initializers.append(numpy_helper.from_array(arr, name))
        return name

    def i64(self, values, hint: str = "i64") -> str:
        return self.const(np.asarray(values, dtype=np.int64), hint=hint)

    def f32(self, values, hint: str = "f32") -> str:
        return self.const(np.asarray(values, dtype=np.float32), hint=hint)

    def reduce_max(self, x: str, axes: list[int], keepdims: int, hint: str) -> str:
        if self.opset >= 18:
            return self.op("ReduceMax", [x, self.i64(axes)], hint=hint, keepdims=keepdims)
        return self.op("ReduceMax", [x], hint=hint, axes=axes, keepdims=keepdims)

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, hint: str | None = None,
           domain: str = "", **attrs):
        name = self._name(hint or op_type.lower())
        outs = outputs if isinstance(outputs, list) else [f"{name}:{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, domain=domain or None, **attrs))
        return outs[0] if len(outs) == 1 else outs


def anchor_constants(anchors_xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ctr [n, 2], size [n, 2])`` float32 exactly as :meth:`BoxCoder.decode` computes them:
    ``aw = x2 - x1``, ``ah = y2 - y1``, ``ax = x1 + 0.5·aw``, ``ay = y1 + 0.5·ah``."""
    a = np.asarray(anchors_xyxy, dtype=np.float32)
    aw = a[:, 2] - a[:, 0]
    ah = a[:, 3] - a[:, 1]
    ax = a[:, 0] + np.float32(0.5) * aw
    ay = a[:, 1] + np.float32(0.5) * ah
    return np.stack([ax, ay], 1).astype(np.float32), np.stack([aw, ah], 1).astype(np.float32)


LOGIT_MARGIN = 0.01  # threshold-first top-k counts logits above logit(θ) - margin (module docstring)


def logit_cut(score_threshold: float) -> float:
    """``logit(θ) - LOGIT_MARGIN``: every logit whose float32 sigmoid exceeds θ is above it."""
    t = min(max(float(score_threshold), 1e-30), 1.0 - 1e-7)
    return float(np.log(t) - np.log1p(-t)) - LOGIT_MARGIN


def _capped_count(g: GraphBuilder, values: str, cut: float, cap: str, hint: str) -> str:
    """``[max(1, min(cap, max_b #{values[b] > cut}))]`` int64 for ``values [B, m]``: a run-time
    K (module docstring, step 1)."""
    above = g.op("Cast", [g.op("Greater", [values, g.f32(cut, "logit_cut")], hint=f"{hint}_above")],
                 hint=f"{hint}_above_f", to=TensorProto.FLOAT)  # float sums are exact below 2^24 and fast
    count = g.op("ReduceMax", [g.op("ReduceSum", [above, g.i64([1])], hint=f"{hint}_count", keepdims=0)],
                 hint=f"{hint}_max_count", keepdims=1)  # [1]
    count = g.op("Cast", [count], hint=f"{hint}_count_i64", to=TensorProto.INT64)
    return g.op("Max", [g.op("Min", [count, cap], hint=f"{hint}_min"), g.i64([1], "one")], hint=f"{hint}_k")


GROUP_MIN_ANCHORS = 2000  # levels with fewer anchors sort them directly
GROUP_SIZES = (9, 8, 12, 6, 4)  # consecutive anchors per group: 9 = a cell's anchors in the tiny presets


def _anchor_group(n: int) -> int:
    """Anchors per group for the threshold-first anchor stage of a level of ``n`` anchors; 1:
    no grouping."""
    if n < GROUP_MIN_ANCHORS:
        return 1
    return next((s for s in GROUP_SIZES if n % s == 0), 1)


def _grouped_threshold_topk(g: GraphBuilder, logits: str, k: str, n: int, c: int, c_i64: str, group: int,
                            cut: float) -> tuple[str, str, str]:
    """:func:`_two_stage_topk` with a threshold, in three sorts that see only what passes it:
    the ``K_g = max(1, min(k, n/G, max_b #{groups whose best logit > cut}))`` best groups of
    ``G = group`` consecutive anchors (the maxima of ``logits`` viewed as ``[B, n/G, G·C]``:
    no per-anchor pass over all ``n``), then the ``K'`` best anchors of those groups (``K'``
    counted there), then the ``K`` best pairs of those anchors (``K`` counted there). Exact
    (ties aside): an image's anchors among its best ``K'`` lie in at most ``K'`` groups, which
    rank above every other group, and all its passing anchors lie in its passing groups; an
    image with more than ``K_g`` passing groups gets ``k`` (or all ``n/G``) groups, hence at
    least ``k`` passing anchors and pairs (``K' = K = k``, as counted on all ``n``)."""
    groups = n // group
    by_group = g.op("Reshape", [logits, g.i64([0, groups, group * c], "group_shape")], hint="pair_groups")
    gbest = g.reduce_max(by_group, [2], 0, "group_best")  # [B, n/G]
    kg = _capped_count(g, gbest, cut, g.op("Min", [k, g.i64([groups], "num_groups")], hint="k_groups_cap"),
                       "groups")
    _, gidx = g.op("TopK", [gbest, kg], 2, hint="group_topk", axis=1, largest=1, sorted=1)  # [B, K_g]
    sub = g.op("GatherND", [by_group, g.op("Unsqueeze", [gidx, g.i64([-1])])], hint="gather_groups",
               batch_dims=1)  # [B, K_g, G·C]
    sub = g.op("Reshape", [sub, g.i64([0, -1, c], "group_anchor_shape")], hint="group_anchors")  # [B, K_g·G, C]
    best = g.reduce_max(sub, [2], 0, "anchor_best")  # [B, K_g·G]
    k1 = _capped_count(g, best, cut, g.op("Min", [k, g.i64([n], "num_anchors")], hint="k_anchors_cap"),
                       "anchors")  # K'
    _, pos = g.op("TopK", [best, k1], 2, hint="anchor_topk", axis=1, largest=1, sorted=1)  # [B, K']
    pairs = g.op("GatherND", [sub, g.op("Unsqueeze", [pos, g.i64([-1])])], hint="gather_pairs",
                 batch_dims=1)  # [B, K', C]
    g_i64 = g.i64(group, "group_size")
    slot = g.op("Div", [pos, g_i64], hint="group_slot")
    within = g.op("Sub", [pos, g.op("Mul", [slot, g_i64])], hint="within_group")
    first = g.op("Mul", [g.op("GatherElements", [gidx, slot], hint="group_of", axis=1), g_i64], hint="group_first")
    anchors = g.op("Add", [first, within], hint="anchor_of")  # [B, K'] anchor indices
    return _pairs_topk(g, pairs, anchors, k, c_i64, cut)


def _two_stage_topk(g: GraphBuilder, logits: str, k: str, n: int, c: int, c_i64: str,
                    cut: float | None) -> tuple[str, str, str]:
    """The ``K`` best (anchor, class) logits of ``logits [B, n, C]`` in two smaller sorts: the
    ``K' = min(K, n)`` anchors with the best class logit, then the ``K`` best of their ``K'·C``
    pairs. Exact: a pair among the best ``K`` has at most ``K-1`` better pairs, hence at most
    ``K-1`` anchors whose best logit beats it, so its anchor is among the best ``K'`` (ties
    aside); it spares ``TopK`` the ``n·C`` scan with a large K (ONNX Runtime's CPU TopK is
    ~5x slower at K = 1000 than at K = 100). With a threshold (``cut``), ``K' = max(1,
    min(k, n, max_b #{anchors whose best logit > cut}))`` (every passing pair's anchor is one)
    and ``K`` is counted on the ``K'·C`` gathered pairs instead of all ``n·C``: the same ``K``
    (module docstring, step 1), since an image with at most ``K'`` passing anchors has all its
    passing pairs among them, and one with more has ``K' = k`` (or ``n``) passing anchors
    there, hence at least ``k`` passing pairs. Returns ``(logits [B,K], anchor [B,K],
    class [B,K])``."""
    group = _anchor_group(n) if cut is not None else 1
    if group > 1:
        return _grouped_threshold_topk(g, logits, k, n, c, c_i64, group, cut)
    best = g.reduce_max(logits, [2], 0, "anchor_best")  # [B, n]
    k1 = g.op("Min", [k, g.i64([n], "num_anchors")], hint="k_anchors")
    if cut is not None:
        k1 = _capped_count(g, best, cut, k1, "anchors")
    _, anchors = g.op("TopK", [best, k1], 2, hint="anchor_topk", axis=1, largest=1, sorted=1)  # [B, K']
    sub = g.op("GatherND", [logits, g.op("Unsqueeze", [anchors, g.i64([-1])])], hint="gather_pairs",
               batch_dims=1)  # [B, K', C]
    return _pairs_topk(g, sub, anchors, k, c_i64, cut)


def _pairs_topk(g: GraphBuilder, sub: str, anchors: str, k: str, c_i64: str, cut: float | None):
    """The ``K`` best pairs of the gathered ``sub [B, K', C]`` (of anchors ``[B, K']``);
    with a threshold ``K`` is counted on these ``K'·C`` pairs, not on all ``n·C`` (see
    :func:`_two_stage_topk`)."""
    pairs = g.op("Reshape", [sub, g.i64([0, -1], "pairs_shape")], hint="pairs")  # [B, K'·C]
    if cut is not None:
        k = _capped_count(g, pairs, cut, k, "pairs")
    top_logit, j = g.op("TopK", [pairs, k], 2, hint="level_topk", axis=1, largest=1, sorted=1)
    local = g.op("Div", [j, c_i64], hint="local_anchor")
    cls = g.op("Sub", [j, g.op("Mul", [local, c_i64])], hint="class_idx")
    anchor_idx = g.op("GatherElements", [anchors, local], hint="anchor_idx", axis=1)
    return top_logit, anchor_idx, cls


def build_candidates(g: GraphBuilder, levels: list[LevelSpec], anchors: list[np.ndarray], *,
                     num_classes: int, imgsz: int, box_weights=(1.0, 1.0, 1.0, 1.0),
                     box_clip: float, threshold_first: float | None = None) -> tuple[str, str, str]:
    """Per-level top-k and decoding; returns ``(boxes [B,N,4] f32, scores [B,N] f32,
    classes [B,N] int64)``. ``threshold_first = θ > 0``: the run-time ``K_l`` of the module
    docstring (N is then data dependent); ``None``: the static ``K_l = k_l``."""
    c = num_classes
    c_i64 = g.i64(c, "num_classes")
    dynamic = threshold_first is not None and float(threshold_first) > 0.0
    cut = logit_cut(threshold_first) if dynamic else None
    deltas, ctrs, sizes, scores, classes = [], [], [], [], []
    for lvl, anc in zip(levels, anchors):
        n, k = lvl.num_anchors, lvl.topk
        ctr, size = anchor_constants(anc)
        flat = g.op("Reshape", [lvl.cls_name, g.i64([-1, n * c], "flat_shape")], hint="flatten")
        k_in = g.i64([k], "pre_nms_topk")
        if dynamic and c == 1:
            k_in = _capped_count(g, flat, cut, k_in, "pairs")
        if c > 1 and (dynamic or k < n * c):
            top_logit, anchor_idx, cls = _two_stage_topk(g, lvl.cls_name, k_in, n, c, c_i64, cut)
        else:
            top_logit, top_i = g.op("TopK", [flat, k_in], 2, hint="level_topk", axis=1, largest=1, sorted=1)
            anchor_idx = g.op("Div", [top_i, c_i64], hint="anchor_idx")  # non-negative: floor division
            cls = g.op("Sub", [top_i, g.op("Mul", [anchor_idx, c_i64])], hint="class_idx")
        top_s = g.op("Sigmoid", [top_logit], hint="sigmoid")
        d = g.op("GatherND", [lvl.box_name, g.op("Unsqueeze", [anchor_idx, g.i64([-1])])],
                 hint="gather_deltas", batch_dims=1)
        deltas.append(d)
        ctrs.append(g.op("Gather", [g.f32(ctr, "anchor_ctr"), anchor_idx], hint="gather_ctr", axis=0))
        sizes.append(g.op("Gather", [g.f32(size, "anchor_size"), anchor_idx], hint="gather_size", axis=0))
        scores.append(top_s)
        classes.append(cls)

    def cat(xs, hint):
        return xs[0] if len(xs) == 1 else g.op("Concat", xs, hint=hint, axis=1)

    d, ctr, size = cat(deltas, "deltas"), cat(ctrs, "ctr"), cat(sizes, "size")
    score, cls = cat(scores, "scores"), cat(classes, "classes")
    wx, wy, ww, wh = (float(w) for w in box_weights)
    d_xy = g.op("Slice", [d, g.i64([0]), g.i64([2]), g.i64([2])], hint="d_xy")
    d_wh = g.op("Slice", [d, g.i64([2]), g.i64([4]), g.i64([2])], hint="d_wh")
    if (wx, wy) != (1.0, 1.0):
        d_xy = g.op("Div", [d_xy, g.f32([wx, wy])])
    if (ww, wh) != (1.0, 1.0):
        d_wh = g.op("Div", [d_wh, g.f32([ww, wh])])
    centre = g.op("Add", [g.op("Mul", [d_xy, size]), ctr], hint="centre")  # dx·aw + ax
    d_wh = g.op("Min", [d_wh, g.f32(box_clip, "box_clip")], hint="clamp_dwh")
    extent = g.op("Mul", [g.op("Exp", [d_wh]), size], hint="wh")  # exp(dw)·aw
    half = g.op("Mul", [extent, g.f32(0.5, "half")], hint="half_wh")
    boxes = g.op("Concat", [g.op("Sub", [centre, half]), g.op("Add", [centre, half])], hint="decoded", axis=2)
    boxes = g.op("Clip", [boxes, g.f32(0.0, "zero"), g.f32(float(imgsz), "imgsz")], hint="clip_boxes")
    return boxes, score, cls


def _finish(g: GraphBuilder, num_f: str, boxes: str, scores: str, classes_i32: str, k: int,
            max_det: int) -> None:
    """Name the four contract outputs, padding ``[B, k]`` rows to ``[B, max_det]``."""
    pad = max_det - k
    if pad > 0:
        zero_f, zero_i = g.f32(0.0), g.const(np.int32(0))
        boxes = g.op("Pad", [boxes, g.i64([0, 0, 0, 0, pad, 0]), zero_f], hint="pad_boxes", mode="constant")
        scores = g.op("Pad", [scores, g.i64([0, 0, 0, pad]), zero_f], hint="pad_scores", mode="constant")
        classes_i32 = g.op("Pad", [classes_i32, g.i64([0, 0, 0, pad]), zero_i], hint="pad_classes",
                           mode="constant")
    g.op("Cast", [num_f], ["num_dets"], hint="num_dets", to=TensorProto.INT32)
    g.op("Identity", [boxes], ["det_boxes"], hint="det_boxes")
    g.op("Identity", [scores], ["det_scores"], hint="det_scores")
    g.op("Identity", [classes_i32], ["det_classes"], hint="det_classes")


def build_onnx_nms(g: GraphBuilder, boxes: str, scores: str, classes: str, *, num_candidates: int | None,
                   num_classes: int, score_threshold: float, nms_iou: float, max_det: int) -> None:
    """Threshold, class-aware ``NonMaxSuppression``, best ``max_det``, padding (module docstring,
    step 4). ``num_candidates=None`` (a run-time N): ``max_det`` blank candidates (score -1,
    never above θ) are appended first so the final ``TopK`` has a static ``K = max_det``."""
    if num_candidates is None:
        scores = g.op("Pad", [scores, g.i64([0, 0, 0, max_det]), g.f32(-1.0)], hint="blank_scores", mode="constant")
        boxes = g.op("Pad", [boxes, g.i64([0, 0, 0, 0, max_det, 0]), g.f32(0.0)], hint="blank_boxes",
                     mode="constant")
        classes = g.op("Pad", [classes, g.i64([0, 0, 0, max_det]), g.i64(0)], hint="blank_classes", mode="constant")
        num_candidates = max_det
    thr = g.f32([score_threshold], "score_threshold")
    valid = g.op("Greater", [scores, thr], hint="above_threshold")  # score > θ
    cls_row = g.op("Unsqueeze", [classes, g.i64([1])], hint="classes_b1n")  # [B, 1, N]
    onehot = g.op("Equal", [cls_row, g.i64(np.arange(num_classes).reshape(1, -1, 1), "class_ids")],
                  hint="class_onehot")  # [B, C, N]
    minus_one_f = g.f32(-1.0, "minus_one")
    masked = g.op("Where", [valid, scores, minus_one_f], hint="scores_above")  # [B, N]: θ applied once
    nms_scores = g.op("Where", [onehot, g.op("Unsqueeze", [masked, g.i64([1])]), minus_one_f],
                      hint="nms_scores")  # [B, C, N]
    selected = g.op("NonMaxSuppression",
                    [boxes, nms_scores, g.i64([max_det], "max_per_class"), g.f32([nms_iou], "iou_threshold"), thr],
                    hint="nms", center_point_box=0)  # [M, 3] = (batch, class, box)
    batch_box = g.op("Gather", [selected, g.i64([0, 2], "batch_box_cols")], hint="batch_box", axis=1)  # [M, 2]
    kept = g.op("GatherND", [scores, batch_box], hint="kept_scores")  # [M]
    minus_one = g.op("ConstantOfShape", [g.op("Shape", [scores])], hint="fill_minus_one",
                     value=numpy_helper.from_array(np.array([-1.0], dtype=np.float32)))
    dense = g.op("ScatterND", [minus_one, batch_box, kept], hint="kept_dense")  # [B, N], -1 = not kept
    k = min(max_det, num_candidates)
    top_s, order = g.op("TopK", [dense, g.i64([k], "max_det")], 2, hint="final_topk", axis=1, largest=1, sorted=1)
    rows = g.op("Greater", [top_s, g.f32(-0.5)], hint="rows")  # a kept row (scores are > θ >= 0)
    rows_f = g.op("Cast", [rows], hint="rows_f", to=TensorProto.FLOAT)
    num = g.op("ReduceSum", [rows_f, g.i64([1])], hint="num", keepdims=1)  # = min(#kept, k)
    det_scores = g.op("Mul", [g.op("Max", [top_s, g.f32(0.0)]), rows_f], hint="scores_out")
    det_boxes = g.op("Mul", [g.op("GatherND", [boxes, g.op("Unsqueeze", [order, g.i64([-1])])], batch_dims=1),
                             g.op("Unsqueeze", [rows_f, g.i64([-1])])], hint="boxes_out")
    cls = g.op("GatherElements", [classes, order], hint="gather_classes", axis=1)
    cls = g.op("Where", [rows, cls, g.i64(0)], hint="classes_masked")
    det_classes = g.op("Cast", [cls], hint="classes_out", to=TensorProto.INT32)
    _finish(g, num, det_boxes, det_scores, det_classes, k, max_det)


def efficient_nms_attributes(*, score_threshold: float, nms_iou: float, max_det: int) -> dict:
    """Attributes of the ``EfficientNMS_TRT`` node (TensorRT plugin README and its
    PluginConfig.yaml, plugin version "1")."""
    return {
        "background_class": -1,  # no background class: every column is a real class
        "box_coding": 0,  # BoxCorner (x1, y1, x2, y2)
        "score_activation": 0,  # scores are probabilities already
        "class_agnostic": 0,  # class-aware NMS
        "max_output_boxes": int(max_det),
        "iou_threshold": float(nms_iou),
        "score_threshold": float(score_threshold),
        "plugin_version": "1",
        "plugin_namespace": "",
    }


def build_efficient_nms(g: GraphBuilder, boxes: str, scores: str, classes: str, *, num_classes: int,
                        score_threshold: float, nms_iou: float, max_det: int) -> tuple[str, str, str, str]:
    """One-hot scores into ``EfficientNMS_TRT``, outputs re-masked with ``score > θ`` (module
    docstring, step 5); returns the plugin's output names."""
    thr = g.f32(score_threshold, "score_threshold")
    valid = g.op("Greater", [scores, thr], hint="above_threshold")
    onehot = g.op("Equal", [g.op("Unsqueeze", [classes, g.i64([2])]),
                            g.i64(np.arange(num_classes).reshape(1, 1, -1), "class_ids")], hint="class_onehot")
    keep_in = g.op("And", [onehot, g.op("Unsqueeze", [valid, g.i64([2])])])
    class_scores = g.op("Where", [keep_in, g.op("Unsqueeze", [scores, g.i64([2])]), g.f32(0.0)],
                        hint="class_scores")  # [B, N, C]
    num_raw, boxes_raw, scores_raw, classes_raw = g.op(
        EFFICIENT_NMS_OP, [boxes, class_scores], 4, hint="efficient_nms", domain=TRT_DOMAIN,
        **efficient_nms_attributes(score_threshold=score_threshold, nms_iou=nms_iou, max_det=max_det))
    rank = g.const(np.arange(max_det, dtype=np.int32).reshape(1, -1), hint="rank")
    rows = g.op("And", [g.op("Less", [rank, num_raw]), g.op("Greater", [scores_raw, thr])], hint="rows")
    rows_f = g.op("Cast", [rows], hint="rows_f", to=TensorProto.FLOAT)
    num = g.op("ReduceSum", [rows_f, g.i64([1])], hint="num", keepdims=1)
    det_boxes = g.op("Mul", [boxes_raw, g.op("Unsqueeze", [rows_f, g.i64([-1])])], hint="boxes_out")
    det_scores = g.op("Mul", [scores_raw, rows_f], hint="scores_out")
    det_classes = g.op("Where", [rows, classes_raw, g.const(np.int32(0))], hint="classes_out")
    _finish(g, num, det_boxes, det_scores, det_classes, max_det, max_det)
    return num_raw, boxes_raw, scores_raw, classes_raw


def build_nms(g: GraphBuilder, boxes: str, scores: str, classes: str, *, nms: str, num_candidates: int | None,
              num_classes: int, score_threshold: float, nms_iou: float, max_det: int,
              batch: int | str) -> list[onnx.ValueInfoProto]:
    """The contract outputs from candidates with ``nms`` ``"onnx"`` (:func:`build_onnx_nms`) or
    ``"efficient"`` (:func:`build_efficient_nms`); returns the value infos the graph must declare
    for the plugin's outputs (none for ``"onnx"``)."""
    common = {"num_classes": num_classes, "score_threshold": score_threshold, "nms_iou": nms_iou, "max_det": max_det}
    if nms == "onnx":
        build_onnx_nms(g, boxes, scores, classes, num_candidates=num_candidates, **common)
        return []
    raw = build_efficient_nms(g, boxes, scores, classes, **common)
    return efficient_nms_value_infos(raw, batch, max_det)


def output_value_infos(batch: int | str, max_det: int) -> list[onnx.ValueInfoProto]:
    """The contract outputs (docs/design.md, "ONNX contract")."""
    return [
        helper.make_tensor_value_info("num_dets", TensorProto.INT32, [batch, 1]),
        helper.make_tensor_value_info("det_boxes", TensorProto.FLOAT, [batch, max_det, 4]),
        helper.make_tensor_value_info("det_scores", TensorProto.FLOAT, [batch, max_det]),
        helper.make_tensor_value_info("det_classes", TensorProto.INT32, [batch, max_det]),
    ]


def efficient_nms_value_infos(names, batch: int | str, max_det: int) -> list[onnx.ValueInfoProto]:
    """Types and shapes of the plugin's outputs (ONNX shape inference knows nothing of it)."""
    num, boxes, scores, classes = names
    return [
        helper.make_tensor_value_info(num, TensorProto.INT32, [batch, 1]),
        helper.make_tensor_value_info(boxes, TensorProto.FLOAT, [batch, max_det, 4]),
        helper.make_tensor_value_info(scores, TensorProto.FLOAT, [batch, max_det]),
        helper.make_tensor_value_info(classes, TensorProto.INT32, [batch, max_det]),
    ]
