"""Faster R-CNN to ONNX: the same I/O contract as RetinaNet (docs/design.md, "ONNX contract").

The graph is three parts joined by explicit ONNX nodes, each reproducing the torch code of
:mod:`swdet.models.faster_rcnn` operation by operation, in float32:

1. **Network** (``torch.onnx.export`` of the dense stage): ``images -> net/rpn_logits_p<l>
   [B, n_l]``, ``net/rpn_deltas_p<l> [B, n_l, 4]`` for every level and ``net/features_p<l>
   [B, C, H_l, W_l]`` for the RoI levels.
2. **Proposals** (nodes ``post/rpn/*``): per level ``TopK`` of the objectness logits
   (``k_l = min(rpn_pre_nms_topk, n_l)``), the anchors' deltas (``GatherND``) and centres/sizes
   (constants), decoding with unit weights, clipping to ``[0, S]``, boxes thinner than
   ``MIN_SIZE`` masked; one ``NonMaxSuppression`` with the *levels* as classes (a constant
   level one-hot, logits in their level's row, -inf elsewhere; ``max_output_boxes_per_class =
   rpn_post_nms_topk`` is exact), the kept logits scattered into a dense ``[B, N]`` map, and
   ``TopK`` of ``R = min(rpn_post_nms_topk, N)``: ``proposals [B, R, 4]`` and their validity.
3. **RoIAlign** (``post/rpn/*``): every proposal pooled from every RoI level with ``RoiAlign``
   (opset 16, ``coordinate_transformation_mode="half_pixel"`` = torchvision's ``aligned=True``,
   the model's fixed ``sampling_ratio``, ``mode="avg"``), the FPN Eq. 1 level selected with a 0/1
   mask and summed; batch indices from ``CumSum`` of ones (no ``Range`` on a shape).
4. **Box head** (``torch.onnx.export`` of the two fully connected layers and the predictors, its
   tensors prefixed ``box/``): ``[B·R, C·S·S] -> box/net/cls [B·R, C+1]``, ``box/net/box
   [B·R, 4·C]``.
5. **Detections** (``post/det/*``): ``Softmax``, the foreground columns times the proposal
   validity, ``TopK`` of ``k = min(pre_nms_topk, R·C)`` (proposal, class) pairs, their
   class-specific deltas and proposals (``GatherND``), decoding with weights (10, 10, 5, 5),
   clipping, then the RetinaNet tail of :mod:`swdet.export.onnx_postprocess`
   (``NonMaxSuppression`` or ``EfficientNMS_TRT``, ``max_det`` best, padding).

Every shape except the batch is static; there are no loops. RoIAlign over all RoI levels costs
``L`` RoIAligns instead of one (the torch model does the same on CUDA). ``--nms efficient``
replaces only the final NMS; the proposal NMS is always ``NonMaxSuppression`` (TensorRT's NMS
layer; at most ``Σ_l k_l`` boxes per image, 5 x 1000 for ResNet-50-FPN, within its 5000).

For INT8 (``swdet calib``) the network is the part the ``net/*`` tensors depend on (the dense
stage); the box head, behind the proposal NMS, stays float like the rest of the post-processing.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import torch
from onnx import TensorProto, numpy_helper
from torch import nn

from swdet.deploy.graph import static_reshapes, tidy_graph
from swdet.errors import SwdetError
from swdet.export.network import ExportSettings, as_float32, export_dense, export_module, finish_graph, network_copy
from swdet.export.onnx_postprocess import GraphBuilder, anchor_constants, build_nms

MIN_RCNN_OPSET = 16  # RoiAlign's coordinate_transformation_mode (half_pixel = aligned=True)
BOX_PREFIX = "box/"
LOWEST = float(np.finfo(np.float32).min)


class DenseStage(nn.Module):
    """``images -> (rpn logits [B, n_l] per level..., rpn deltas [B, n_l, 4]..., RoI-level
    features...)``, float32."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, images):
        out = self.net(images)
        return (tuple(as_float32(t[..., 0]) for t in out["rpn_logits"]) + tuple(as_float32(t) for t in out["rpn_deltas"])
                + tuple(as_float32(t) for t in out["features"]))


class BoxStage(nn.Module):
    """``pooled [N, C, S, S] float32 -> (cls [N, C+1], box [N, 4·C])``, float32."""

    def __init__(self, net: nn.Module, precision: str):
        super().__init__()
        self.head = net.box_head
        self.dtype = torch.float16 if precision == "fp16" else torch.float32

    def forward(self, pooled):
        cls, box = self.head(pooled.to(self.dtype))
        return cls.float(), box.float()


def _decode(g: GraphBuilder, d: str, ctr: str, size: str, weights, clip: float, imgsz: int) -> str:
    """:meth:`swdet.boxes.BoxCoder.decode` then clipping, in its op order (as
    :func:`swdet.export.onnx_postprocess.build_candidates`)."""
    wx, wy, ww, wh = (float(w) for w in weights)
    d_xy = g.op("Slice", [d, g.i64([0]), g.i64([2]), g.i64([-1])], hint="d_xy")
    d_wh = g.op("Slice", [d, g.i64([2]), g.i64([4]), g.i64([-1])], hint="d_wh")
    if (wx, wy) != (1.0, 1.0):
        d_xy = g.op("Div", [d_xy, g.f32([wx, wy])])
    if (ww, wh) != (1.0, 1.0):
        d_wh = g.op("Div", [d_wh, g.f32([ww, wh])])
    centre = g.op("Add", [g.op("Mul", [d_xy, size]), ctr], hint="centre")
    d_wh = g.op("Min", [d_wh, g.f32(clip, "box_clip")], hint="clamp_dwh")
    extent = g.op("Mul", [g.op("Exp", [d_wh]), size], hint="wh")
    half = g.op("Mul", [extent, g.f32(0.5, "half")], hint="half_wh")
    boxes = g.op("Concat", [g.op("Sub", [centre, half]), g.op("Add", [centre, half])], hint="decoded", axis=-1)
    return g.op("Clip", [boxes, g.f32(0.0, "zero"), g.f32(float(imgsz), "imgsz")], hint="clip_boxes")


def _box_ctr_size(g: GraphBuilder, boxes: str) -> tuple[str, str]:
    """``(ctr, size)`` of ``[..., 4]`` boxes as the box coder computes them:
    ``size = (x2, y2) - (x1, y1)``, ``ctr = (x1, y1) + 0.5·size``."""
    lo = g.op("Slice", [boxes, g.i64([0]), g.i64([2]), g.i64([-1])], hint="xy1")
    hi = g.op("Slice", [boxes, g.i64([2]), g.i64([4]), g.i64([-1])], hint="xy2")
    size = g.op("Sub", [hi, lo], hint="box_size")
    return g.op("Add", [lo, g.op("Mul", [size, g.f32(0.5)])], hint="box_ctr"), size


def build_proposals(g: GraphBuilder, cfg, logits: list[str], deltas: list[str], anchors: list[np.ndarray],
                    imgsz: int) -> tuple[str, str, int]:
    """Module docstring, part 2: ``(proposals [B, R, 4], valid_f [B, R] float 0/1, R)``."""
    from swdet.boxes import BBOX_XFORM_CLIP
    from swdet.models.faster_rcnn import MIN_SIZE, RPN_BOX_WEIGHTS

    pre, post = cfg.rpn_pre_nms_topk, cfg.rpn_post_nms_topk
    ds, ctrs, sizes, scores, level_ids = [], [], [], [], []
    for i, (lg, dl, anc) in enumerate(zip(logits, deltas, anchors)):
        n = anc.shape[0]
        k = min(pre, n)
        ctr, size = anchor_constants(anc)
        top_s, top_i = g.op("TopK", [lg, g.i64([k], "pre_nms_topk")], 2, hint="level_topk", axis=1, largest=1,
                            sorted=1)
        ds.append(g.op("GatherND", [dl, g.op("Unsqueeze", [top_i, g.i64([-1])])], hint="gather_deltas", batch_dims=1))
        ctrs.append(g.op("Gather", [g.f32(ctr, "anchor_ctr"), top_i], hint="gather_ctr", axis=0))
        sizes.append(g.op("Gather", [g.f32(size, "anchor_size"), top_i], hint="gather_size", axis=0))
        scores.append(top_s)
        level_ids.append(np.full(k, i, dtype=np.int64))

    def cat(xs, hint):
        return xs[0] if len(xs) == 1 else g.op("Concat", xs, hint=hint, axis=1)

    boxes = _decode(g, cat(ds, "deltas"), cat(ctrs, "ctr"), cat(sizes, "size"), RPN_BOX_WEIGHTS, BBOX_XFORM_CLIP,
                    imgsz)
    score = cat(scores, "scores")  # [B, N] logits
    level = np.concatenate(level_ids)
    n_all, num_levels = level.shape[0], len(anchors)
    lo = g.op("Slice", [boxes, g.i64([0]), g.i64([2]), g.i64([-1])], hint="xy1")
    hi = g.op("Slice", [boxes, g.i64([2]), g.i64([4]), g.i64([-1])], hint="xy2")
    thick = g.op("GreaterOrEqual", [g.op("Sub", [hi, lo]), g.f32(MIN_SIZE, "min_size")], hint="thick")  # [B, N, 2]
    valid = g.op("And", [g.op("Slice", [thick, g.i64([0]), g.i64([1]), g.i64([2])]),
                         g.op("Slice", [thick, g.i64([1]), g.i64([2]), g.i64([2])])])
    valid = g.op("Squeeze", [valid, g.i64([2])], hint="valid")  # [B, N]: w >= min and h >= min
    onehot = (np.arange(num_levels)[:, None] == level[None, :])[None]  # [1, L, N]
    keep_in = g.op("And", [g.const(onehot, hint="level_onehot"), g.op("Unsqueeze", [valid, g.i64([1])])])
    minus_inf = g.f32(-math.inf, "minus_inf")
    nms_scores = g.op("Where", [keep_in, g.op("Unsqueeze", [score, g.i64([1])]), minus_inf], hint="nms_scores")
    selected = g.op("NonMaxSuppression", [boxes, nms_scores, g.i64([post], "max_per_level"),
                                          g.f32([cfg.rpn_nms_iou], "rpn_nms_iou"), g.f32([LOWEST], "lowest")],
                    hint="rpn_nms", center_point_box=0)
    batch_box = g.op("Gather", [selected, g.i64([0, 2], "batch_box_cols")], hint="batch_box", axis=1)
    kept = g.op("GatherND", [score, batch_box], hint="kept_scores")
    fill = g.op("ConstantOfShape", [g.op("Shape", [score])], hint="fill_minus_inf",
                value=numpy_helper.from_array(np.array([-math.inf], dtype=np.float32)))
    dense = g.op("ScatterND", [fill, batch_box, kept], hint="kept_dense")
    r = min(post, n_all)
    top_s, order = g.op("TopK", [dense, g.i64([r], "post_nms_topk")], 2, hint="proposal_topk", axis=1, largest=1,
                        sorted=1)
    valid_f = g.op("Cast", [g.op("Greater", [top_s, g.f32(LOWEST)])], hint="proposal_valid", to=TensorProto.FLOAT)
    props = g.op("GatherND", [boxes, g.op("Unsqueeze", [order, g.i64([-1])])], hint="gather_proposals", batch_dims=1)
    props = g.op("Mul", [props, g.op("Unsqueeze", [valid_f, g.i64([-1])])], hint="proposals")
    return props, valid_f, r


def build_roi_align(g: GraphBuilder, cfg, features: list[str], levels: list[int], proposals: str, valid_f: str,
                    out_name: str) -> None:
    """Module docstring, part 3: pooled ``[B·R, C, S, S]`` written to ``out_name``."""
    from swdet.models.faster_rcnn import CANONICAL_LEVEL, CANONICAL_SIZE, LEVEL_EPS, LN2

    rois = g.op("Reshape", [proposals, g.i64([-1, 4])], hint="rois")  # [B·R, 4]
    ones = g.op("ConstantOfShape", [g.op("Shape", [valid_f])], hint="ones",
                value=numpy_helper.from_array(np.array([1.0], dtype=np.float32)))  # [B, R]
    rows = g.op("Sub", [g.op("CumSum", [ones, g.i64(0, "axis0")]), g.f32(1.0)], hint="batch_rows")  # b in row b
    bidx = g.op("Cast", [g.op("Reshape", [rows, g.i64([-1])])], hint="batch_indices", to=TensorProto.INT64)
    lo = g.op("Slice", [rois, g.i64([0]), g.i64([2]), g.i64([1])])
    hi = g.op("Slice", [rois, g.i64([2]), g.i64([4]), g.i64([1])])
    wh = g.op("Sub", [hi, lo], hint="roi_wh")
    area = g.op("Mul", [g.op("Slice", [wh, g.i64([0]), g.i64([1]), g.i64([1])]),
                        g.op("Slice", [wh, g.i64([1]), g.i64([2]), g.i64([1])])], hint="roi_area")  # [B·R, 1]
    s = g.op("Add", [g.op("Div", [g.op("Sqrt", [area]), g.f32(CANONICAL_SIZE)]), g.f32(LEVEL_EPS)])
    k = g.op("Floor", [g.op("Add", [g.op("Div", [g.op("Log", [s]), g.f32(LN2)]), g.f32(float(CANONICAL_LEVEL))])])
    k = g.op("Clip", [k, g.f32(float(levels[0])), g.f32(float(levels[-1]))], hint="roi_level")
    k4 = g.op("Reshape", [k, g.i64([-1, 1, 1, 1])])
    pooled = None
    for i, (feat, level) in enumerate(zip(features, levels)):
        out = g.op("RoiAlign", [feat, rois, bidx], hint=f"roi_align_p{level}", mode="avg",
                   output_height=cfg.roi_size, output_width=cfg.roi_size, sampling_ratio=cfg.roi_sampling_ratio,
                   spatial_scale=1.0 / 2 ** level, coordinate_transformation_mode="half_pixel")
        mask = g.op("Cast", [g.op("Equal", [k4, g.f32(float(level))])], to=TensorProto.FLOAT, hint="level_mask")
        last = i == len(levels) - 1
        if pooled is None:
            pooled = g.op("Mul", [out, mask], [out_name] if last else 1, hint="masked")
        else:
            pooled = g.op("Add", [pooled, g.op("Mul", [out, mask], hint="masked")], [out_name] if last else 1,
                          hint="pooled")


def build_detections(g: GraphBuilder, cls: str, box: str, proposals: str, valid_f: str, *, r: int,
                     num_classes: int, imgsz: int, pre_nms_topk: int) -> tuple[str, str, str, int]:
    """Module docstring, part 5 up to the NMS: ``(boxes [B, k, 4], scores [B, k], classes [B, k],
    k)``."""
    from swdet.boxes import BBOX_XFORM_CLIP
    from swdet.models.faster_rcnn import ROI_BOX_WEIGHTS

    c = num_classes
    probs = g.op("Softmax", [cls], hint="softmax", axis=1)  # [B·R, C+1]
    fg = g.op("Slice", [probs, g.i64([0]), g.i64([c]), g.i64([1])], hint="foreground")
    fg = g.op("Mul", [fg, g.op("Reshape", [valid_f, g.i64([-1, 1])])], hint="valid_scores")
    flat = g.op("Reshape", [fg, g.i64([-1, r * c])], hint="pairs")  # [B, R·C]
    k = min(pre_nms_topk, r * c)
    top_s, top_i = g.op("TopK", [flat, g.i64([k], "pre_nms_topk")], 2, hint="pair_topk", axis=1, largest=1, sorted=1)
    c_i64 = g.i64(c, "num_classes")
    prop_idx = g.op("Div", [top_i, c_i64], hint="proposal_idx")
    classes = g.op("Sub", [top_i, g.op("Mul", [prop_idx, c_i64])], hint="class_idx")
    d = g.op("GatherND", [g.op("Reshape", [box, g.i64([-1, r * c, 4])]), g.op("Unsqueeze", [top_i, g.i64([-1])])],
             hint="gather_deltas", batch_dims=1)
    p = g.op("GatherND", [proposals, g.op("Unsqueeze", [prop_idx, g.i64([-1])])], hint="gather_props", batch_dims=1)
    ctr, size = _box_ctr_size(g, p)
    boxes = _decode(g, d, ctr, size, ROI_BOX_WEIGHTS, BBOX_XFORM_CLIP, imgsz)
    return boxes, top_s, classes, k


def build_rcnn_onnx(model: nn.Module, meta: dict, settings: ExportSettings, exporter: str = "auto") -> onnx.ModelProto:
    """The complete, checked Faster R-CNN graph (network + post-processing + metadata)."""
    from swdet.artifact import model_config_from_meta
    from swdet.models.anchors import generate_anchors
    from swdet.models.faster_rcnn import roi_levels

    if settings.opset < MIN_RCNN_OPSET:
        raise SwdetError(f"--opset {settings.opset}: Faster R-CNN needs opset {MIN_RCNN_OPSET}+ (RoiAlign with "
                         "half_pixel coordinates)")
    cfg = model_config_from_meta(meta)
    cfg.imgsz = settings.imgsz
    levels = list(range(cfg.min_level, cfg.max_level + 1))
    rlevels = roi_levels(cfg)
    names_logit = [f"net/rpn_logits_p{lv}" for lv in levels]
    names_delta = [f"net/rpn_deltas_p{lv}" for lv in levels]
    names_feat = [f"net/features_p{lv}" for lv in rlevels]
    net = network_copy(model, settings.precision)
    proto = export_dense(DenseStage(net), settings, names_logit + names_delta + names_feat, exporter)

    pooled_example = torch.rand(3, cfg.fpn_channels, cfg.roi_size, cfg.roi_size)
    box_proto, _ = export_module(BoxStage(net, settings.precision), pooled_example, ["net/cls", "net/box"], True,
                                 settings.opset, settings.exporter)
    box_proto = static_reshapes(tidy_graph(box_proto))
    box_proto = onnx.compose.add_prefix(box_proto, BOX_PREFIX)
    box_in = box_proto.graph.input[0].name
    box_cls, box_box = (o.name for o in box_proto.graph.output)

    anchors = [a.numpy() for a in generate_anchors(cfg, settings.imgsz)]
    g1 = GraphBuilder("post/rpn")
    proposals, valid_f, r = build_proposals(g1, cfg, names_logit, names_delta, anchors, settings.imgsz)
    build_roi_align(g1, cfg, names_feat, rlevels, proposals, valid_f, box_in)
    g2 = GraphBuilder("post/det")
    boxes, scores, classes, k = build_detections(g2, box_cls, box_box, proposals, valid_f, r=r,
                                                 num_classes=cfg.num_classes, imgsz=settings.imgsz,
                                                 pre_nms_topk=settings.pre_nms_topk)
    extra_vi = build_nms(g2, boxes, scores, classes, nms=settings.nms, num_candidates=k,
                         num_classes=cfg.num_classes, score_threshold=settings.score_threshold,
                         nms_iou=settings.nms_iou, max_det=settings.max_det, batch=settings.batch_dim)

    parts = [(g1.nodes, g1.initializers), (box_proto.graph.node, box_proto.graph.initializer),
             (g2.nodes, g2.initializers)]
    return finish_graph(proto, parts, meta, settings, extra_vi,
                        doc="swdet detector (Faster R-CNN): images [B,3,S,S] RGB 0-255 -> num_dets, det_boxes, "
                            "det_scores, det_classes")
