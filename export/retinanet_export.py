"""RetinaNet to ONNX (the ONNX contract of docs/design.md): the network through the shared
network export (:mod:`swdet.export.network`), the post-processing as explicit nodes
(:mod:`swdet.export.onnx_postprocess`), merged and checked by
:func:`swdet.export.network.finish_graph`.

The network part is :class:`ExportNetwork`: ``images -> (cls_l ..., box_l ...)`` per FPN level,
named ``net/cls_logits_p<l>`` and ``net/bbox_deltas_p<l>`` (the boundary ``swdet calib``
quantizes up to).
"""

from __future__ import annotations

import onnx
from torch import nn

from swdet.export.network import ExportSettings, as_float32, export_dense, finish_graph, network_copy
from swdet.export.onnx_postprocess import GraphBuilder, LevelSpec, build_candidates, build_nms


class ExportNetwork(nn.Module):
    """The detector as exported: ``images -> (cls_l ..., box_l ...)`` per level, float32."""

    def __init__(self, model: nn.Module, precision: str = "fp32"):
        super().__init__()
        self.net = network_copy(model, precision)

    def forward(self, images):
        out = self.net(images)
        return tuple(as_float32(t) for t in out["cls_logits"]) + tuple(as_float32(t) for t in out["bbox_deltas"])


def level_specs(cfg, names_cls, names_box, pre_nms_topk: int, imgsz: int) -> list[LevelSpec]:
    from swdet.models.anchors import feature_sizes, num_anchors_per_cell

    a = num_anchors_per_cell(cfg)
    specs = []
    for c, b, n in zip(names_cls, names_box, feature_sizes(cfg, imgsz)):
        num = n * n * a
        specs.append(LevelSpec(c, b, num, min(pre_nms_topk, num * cfg.num_classes)))
    return specs


def build_retinanet_onnx(model: nn.Module, meta: dict, settings: ExportSettings,
                         exporter: str = "auto") -> onnx.ModelProto:
    """The complete, checked RetinaNet graph (network + post-processing + metadata)."""
    from swdet.artifact import model_config_from_meta
    from swdet.boxes import BBOX_XFORM_CLIP
    from swdet.models import RETINANET_BOX_WEIGHTS
    from swdet.models.anchors import generate_anchors

    cfg = model_config_from_meta(meta)
    cfg.imgsz = settings.imgsz
    levels = list(range(cfg.min_level, cfg.max_level + 1))
    names_cls = [f"net/cls_logits_p{l}" for l in levels]
    names_box = [f"net/bbox_deltas_p{l}" for l in levels]
    proto = export_dense(ExportNetwork(model, settings.precision), settings, names_cls + names_box, exporter)

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
    extra_vi = build_nms(g, boxes, scores, classes, nms=settings.nms, num_candidates=num_candidates,
                         num_classes=cfg.num_classes, score_threshold=settings.score_threshold,
                         nms_iou=settings.nms_iou, max_det=settings.max_det, batch=settings.batch_dim)

    return finish_graph(proto, [(g.nodes, g.initializers)], meta, settings, extra_vi,
                        doc="swdet detector: images [B,3,S,S] RGB 0-255 -> num_dets, det_boxes, det_scores, "
                            "det_classes")


