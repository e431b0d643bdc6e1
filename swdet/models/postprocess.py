"""Torch post-processing with the exact semantics of the exported graphs.

Per image and FPN level: the ``pre_nms_topk`` best (anchor, class) pairs by logit and their
sigmoid scores, the score threshold (``score > θ``), box decoding and clipping to the input canvas; then,
over all levels, class-aware NMS (``IoU > nms_iou`` suppresses) and the ``max_det`` best
survivors. The output follows the EfficientNMS convention of docs/design.md: ``num_dets [B, 1]``
int32, ``det_boxes [B, K, 4]``, ``det_scores [B, K]``, ``det_classes [B, K]`` int32; rows past
``num_dets`` are zero padding.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from swdet.boxes import BoxCoder, clip_boxes


def select_candidates(cls_logits: list[Tensor], bbox_deltas: list[Tensor], anchors: list[Tensor],
                      box_coder: BoxCoder, pre_nms_topk: int, imgsz: int):
    """Top-k (anchor, class) pairs per level, decoded: ``boxes [B, N, 4], scores [B, N],
    classes [B, N]`` with N = Σ_l min(pre_nms_topk, H_l·W_l·A·C)."""
    all_boxes, all_scores, all_classes = [], [], []
    for logits, deltas, anc in zip(cls_logits, bbox_deltas, anchors):
        b, n, c = logits.shape
        k = min(pre_nms_topk, n * c)
        top_logits, top_idx = logits.float().reshape(b, n * c).topk(k, dim=1)
        top_scores = torch.sigmoid(top_logits)  # the sigmoid is monotonic: only the kept pairs
        anchor_idx = torch.div(top_idx, c, rounding_mode="floor")
        classes = top_idx - anchor_idx * c
        d = torch.gather(deltas.float(), 1, anchor_idx[..., None].expand(b, k, 4))
        boxes = clip_boxes(box_coder.decode(anc[anchor_idx], d), imgsz, imgsz)
        all_boxes.append(boxes)
        all_scores.append(top_scores)
        all_classes.append(classes)
    return torch.cat(all_boxes, 1), torch.cat(all_scores, 1), torch.cat(all_classes, 1)


def nms_and_pad(boxes: Tensor, scores: Tensor, classes: Tensor, *, score_threshold: float,
                nms_iou: float, max_det: int) -> dict[str, Tensor]:
    """Class-aware NMS per image, then the ``max_det`` best, padded (EfficientNMS layout)."""
    b, n = scores.shape
    valid = scores > score_threshold
    flat = valid.reshape(-1).nonzero().squeeze(1)
    img = torch.div(flat, n, rounding_mode="floor")
    groups = img * (int(classes.max()) + 1 if classes.numel() else 1) + classes.reshape(-1)[flat]
    kept = flat[batched_nms(boxes.reshape(-1, 4)[flat], scores.reshape(-1)[flat], groups, nms_iou)]
    keep = torch.zeros(b * n, dtype=torch.bool, device=scores.device)
    keep[kept] = True
    keep = keep.view(b, n)
    k = min(max_det, n)
    ranked, order = torch.where(keep, scores, torch.full_like(scores, -1.0)).topk(k, dim=1)
    num = keep.sum(1, keepdim=True).clamp(max=k)
    rows = torch.arange(k, device=scores.device)[None] < num
    det_boxes = torch.gather(boxes, 1, order[..., None].expand(b, k, 4)) * rows[..., None]
    det_scores = ranked.clamp(min=0) * rows
    det_classes = torch.gather(classes, 1, order) * rows
    if k < max_det:  # fewer candidates than max_det: pad to the fixed K
        pad = max_det - k
        det_boxes = torch.nn.functional.pad(det_boxes, (0, 0, 0, pad))
        det_scores = torch.nn.functional.pad(det_scores, (0, pad))
        det_classes = torch.nn.functional.pad(det_classes, (0, pad))
    return {
        "num_dets": num.to(torch.int32),
        "det_boxes": det_boxes,
        "det_scores": det_scores,
        "det_classes": det_classes.to(torch.int32),
    }


def retinanet_postprocess(outputs: dict[str, list[Tensor]], anchors: list[Tensor], box_coder: BoxCoder, *,
                          imgsz: int, score_threshold: float, nms_iou: float, pre_nms_topk: int,
                          max_det: int) -> dict[str, Tensor]:
    boxes, scores, classes = select_candidates(outputs["cls_logits"], outputs["bbox_deltas"], anchors,
                                               box_coder, pre_nms_topk, imgsz)
    return nms_and_pad(boxes, scores, classes, score_threshold=score_threshold, nms_iou=nms_iou,
                       max_det=max_det)
