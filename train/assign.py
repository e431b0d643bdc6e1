"""Anchor-to-GT assignment, done on the host while batches are collated.

Assignment depends only on the anchors and the GT boxes, never on the network's output, so it
runs in the data-loader workers: the training step receives the positives' indices with a size
already known on the host and never synchronizes to select them.

Two rules:
- ``max_iou`` (RetinaNet, Lin et al. 2017): an anchor whose best IoU is ``>= fg_iou`` is positive
  for that GT, ``< bg_iou`` negative, in between ignored; with ``allow_low_quality`` every GT also
  claims the anchors that reach its own highest IoU (torchvision's low-quality matches).
- ``topn`` (noisy anchors, Li et al. 2020, "A_pos"): each GT's ``n`` best anchors by IoU before
  refinement (:func:`swdet.train.weighting.topn_positives`), everything else negative.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from swdet.boxes import BoxCoder, box_iou

IGNORE = -2
NEGATIVE = -1


@dataclass
class Assignment:
    """Targets of one batch, flattened over images and levels (``N = B·A`` samples).

    ``labels [B, A]``: class index for positives, -1 negative, -2 ignored.
    ``pos_idx [P]``: flat indices (into ``B·A``) of the positives, sorted.
    ``pos_gt [P]``: index into the batch's concatenated GTs (a batch-unique GT id).
    ``pos_labels [P]``, ``target_deltas [P, 4]``, ``gt_boxes [P, 4]``, ``iou_before [P]``.
    ``gt_boxes_all [G, 4]``, ``gt_labels_all [G]``, ``gt_image [G]``: every GT of the batch.
    """

    labels: Tensor
    pos_idx: Tensor
    pos_gt: Tensor
    pos_labels: Tensor
    target_deltas: Tensor
    gt_boxes: Tensor
    iou_before: Tensor
    gt_boxes_all: Tensor
    gt_labels_all: Tensor
    gt_image: Tensor

    def to(self, device, non_blocking: bool = True) -> "Assignment":
        return Assignment(**{k: v.to(device, non_blocking=non_blocking) for k, v in self.__dict__.items()})

    def pin_memory(self) -> "Assignment":
        return Assignment(**{k: v.pin_memory() for k, v in self.__dict__.items()})


def max_iou_match(iou: Tensor, fg_iou: float, bg_iou: float, allow_low_quality: bool) -> tuple[Tensor, Tensor]:
    """``iou [A, G]`` -> ``(matched_gt [A] or -1/-2, best_iou [A])``."""
    a = iou.shape[0]
    if iou.shape[1] == 0:
        return torch.full((a,), NEGATIVE, dtype=torch.long), torch.zeros(a)
    best_iou, best_gt = iou.max(dim=1)
    matched = best_gt.clone()
    matched[best_iou < fg_iou] = IGNORE
    matched[best_iou < bg_iou] = NEGATIVE
    if allow_low_quality:
        gt_best = iou.max(dim=0).values  # [G]
        # every (anchor, gt) pair reaching that gt's best IoU (ties included); the anchor keeps
        # its own best GT, as torchvision's Matcher does
        hit = (iou == gt_best[None]) & (gt_best[None] > 0)
        claimed = hit.any(dim=1)
        matched[claimed] = best_gt[claimed]
    return matched, best_iou


def concat_gts(targets: list[dict]) -> tuple[Tensor, Tensor, Tensor]:
    """Every GT of a batch (host side): ``(boxes [G, 4] float, labels [G] long, image index [G])``."""
    boxes = torch.cat([t["boxes"].float().reshape(-1, 4) for t in targets])
    labels = torch.cat([t["labels"].long().reshape(-1) for t in targets])
    image = torch.cat([torch.full((len(t["boxes"]),), i, dtype=torch.long) for i, t in enumerate(targets)])
    return boxes, labels, image


class TargetAssigner:
    """Callable used in ``collate``: ``(images, targets) -> (images, targets, Assignment)``.

    ``anchors`` is the ``[A, 4]`` concatenation of every level's anchors for the model input.
    """

    def __init__(self, anchors: Tensor, box_coder: BoxCoder, *, rule: str = "max_iou", fg_iou: float = 0.5,
                 bg_iou: float = 0.4, allow_low_quality: bool = True, topn: int = 40, collate_fn=None):
        if rule not in ("max_iou", "topn"):
            raise ValueError(f"unknown assignment rule {rule!r}")
        self.anchors = anchors.detach().cpu().float()
        self.box_coder = box_coder
        self.rule = rule
        self.fg_iou, self.bg_iou, self.allow_low_quality, self.topn = fg_iou, bg_iou, allow_low_quality, topn
        self.collate_fn = collate_fn

    def match(self, gt_boxes: Tensor) -> tuple[Tensor, Tensor]:
        """One image: ``(matched_gt [A] (index, -1 negative, -2 ignored), iou_with_match [A])``."""
        iou = box_iou(self.anchors, gt_boxes.float()) if gt_boxes.numel() else torch.zeros(len(self.anchors), 0)
        if self.rule == "max_iou":
            return max_iou_match(iou, self.fg_iou, self.bg_iou, self.allow_low_quality)
        from swdet.train.weighting import topn_positives

        pos, gt_index = topn_positives(iou, self.topn)
        matched = torch.where(pos, gt_index, torch.full_like(gt_index, NEGATIVE))
        best = iou.gather(1, gt_index.clamp(min=0)[:, None]).squeeze(1) if iou.shape[1] else torch.zeros(len(iou))
        return matched, torch.where(pos, best, torch.zeros_like(best))

    def assign(self, targets: list[dict]) -> Assignment:
        a = len(self.anchors)
        labels, pos_idx, pos_gt, ious = [], [], [], []
        gt_offset = 0
        for b, t in enumerate(targets):
            boxes, cls = t["boxes"], t["labels"].long()
            matched, iou = self.match(boxes)
            lab = torch.full((a,), NEGATIVE, dtype=torch.long)
            lab[matched == IGNORE] = IGNORE
            pos = matched >= 0
            lab[pos] = cls[matched[pos]]
            idx = pos.nonzero().squeeze(1)
            labels.append(lab)
            pos_idx.append(idx + b * a)
            pos_gt.append(matched[idx] + gt_offset)
            ious.append(iou[idx])
            gt_offset += len(boxes)
        gt_all, gt_lab, gt_img = concat_gts(targets)
        pos_idx_t = torch.cat(pos_idx)
        pos_gt_t = torch.cat(pos_gt)
        anchors = self.anchors[pos_idx_t % a]
        gt_boxes = gt_all[pos_gt_t]
        return Assignment(
            labels=torch.stack(labels),
            pos_idx=pos_idx_t,
            pos_gt=pos_gt_t,
            pos_labels=gt_lab[pos_gt_t],
            target_deltas=self.box_coder.encode(anchors, gt_boxes),
            gt_boxes=gt_boxes,
            iou_before=torch.cat(ious),
            gt_boxes_all=gt_all,
            gt_labels_all=gt_lab,
            gt_image=gt_img,
        )

    def __call__(self, batch):
        images, targets = self.collate_fn(batch) if self.collate_fn is not None else batch
        return images, targets, self.assign(targets)
