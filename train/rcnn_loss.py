"""Faster R-CNN's training loss: the RPN and the RoI head as two :class:`SampleRecord` streams of
the general weighted loss (the detector-loss protocol of :mod:`swdet.train.retina_loss`).

Which samples each head trains on (docs/design.md, "The weighting core"):

============================  =====================================  ===================================
methods                       RPN (anchors)                          RoI head (proposals + GT boxes)
============================  =====================================  ===================================
``random`` (the baseline),    256 per image, at most half positive   512 per image, at most 1/4
``pisa``, ``swn``             (random)                               foreground (random)
``ohem``                      as ``random``                          the hardest 512 at most 1/4 fg
                                                                     (by cls loss, mmdetection's
                                                                     OHEMSampler; or the paper's
                                                                     NMS 0.7 + top 512 by cls + box)
``sampling_free``             every anchor                           every proposal
``noisy_anchors``             every anchor, top-N positives, soft    as ``random``
                              labels and re-weighting (focal)
============================  =====================================  ===================================

A method only ever sees the records of the heads it names in ``Method.heads`` (PISA and SWN: the
RoI head; noisy anchors: the RPN; Sampling-Free: both, with guided-scaling factor 1 in the RPN
and 2 in the RoI head, and its bias initialization in the RPN only). The RPN's base loss is the
method set's (BCE by default), the RoI head's a softmax cross-entropy over ``C + 1`` classes.
Sampled heads are normalized by the number of sampled samples (the standard Faster R-CNN loss:
mean cross-entropy, box loss summed over positives / samples); unsampled heads by the positives
(RetinaNet's normalizer; for Sampling-Free ``methods.sampling_free.{rpn,roi}_pos_norm`` times
them, 8 and 4: the authors' per-coordinate mean box loss, halved in the RPN).

Host-device synchronization: RPN anchors are matched and sampled on the host in the loader
workers (:class:`RPNAssigner`), like RetinaNet's. The RoI head's samples depend on the proposals,
so they are matched and sampled on the device with fixed-size tensors (proposals padded to R per
image, GT boxes padded to the batch's largest count G, random sampling by random keys + top-k,
OHEM by loss + top-k, validity masks throughout). One synchronization per step remains: the
number of positive RoIs (``nonzero`` over the sampled RoIs), because the weighting functions work
on 1-D tensors of positives.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
from swdet.train import losses as L
from swdet.train.assign import IGNORE, NEGATIVE, Assignment, TargetAssigner, concat_gts
from swdet.train.criterion import ClassificationLoss, WeightedLoss, build_record
from swdet.train.diagnostics import Diagnostics
from swdet.train.methods.base import SampleRecord
from swdet.train.retina_loss import anchor_levels, classification_loss
from torch import Tensor

from swdet.boxes import BoxCoder, batched_box_iou, elementwise_iou
from swdet.models.anchors import generate_anchors
from swdet.models.faster_rcnn import ROI_BOX_WEIGHTS, RPN_BOX_WEIGHTS

# ----------------------------------------------------------------------------------------------
# Host side: RPN anchors (loader workers)


@dataclass
class RCNNAssignment:
    """What the loader hands the step for a Faster R-CNN batch.

    ``rpn``: the RPN anchors' :class:`~swdet.train.assign.Assignment` (after sampling: unsampled
    anchors are ignored). ``rpn_count``: the RPN loss's normalizer count, a 0-d float tensor
    counted on the host (sampled anchors when sampling, else positives), so the step reads no
    number back from the device to normalize.
    ``gt_boxes [B, G, 4]``, ``gt_labels [B, G]``, ``gt_valid [B, G]``: the GT boxes padded to the
    batch's largest count (G >= 1) for the device-side RoI matching.
    """

    rpn: Assignment
    rpn_count: Tensor
    gt_boxes: Tensor
    gt_labels: Tensor
    gt_valid: Tensor

    def to(self, device, non_blocking: bool = True) -> RCNNAssignment:
        return RCNNAssignment(self.rpn.to(device, non_blocking), self.rpn_count.to(device, non_blocking=non_blocking),
                              self.gt_boxes.to(device, non_blocking=non_blocking),
                              self.gt_labels.to(device, non_blocking=non_blocking),
                              self.gt_valid.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> RCNNAssignment:
        return RCNNAssignment(self.rpn.pin_memory(), self.rpn_count.pin_memory(), self.gt_boxes.pin_memory(),
                              self.gt_labels.pin_memory(), self.gt_valid.pin_memory())


def sample_labels(labels: Tensor, batch: int, pos_fraction: float, generator: torch.Generator) -> Tensor:
    """Random sampling of one image's anchors (Faster R-CNN's mini-batch biased sampling).

    ``labels [A]`` (class >= 0, -1 negative, -2 ignored) -> labels where at most
    ``floor(batch · pos_fraction)`` positives and ``batch - #sampled positives`` negatives, drawn
    uniformly without replacement, keep their label; every other anchor becomes ignored.
    """
    out = torch.full_like(labels, IGNORE)
    pos = (labels >= 0).nonzero().squeeze(1)
    neg = (labels == NEGATIVE).nonzero().squeeze(1)
    num_pos = min(int(batch * pos_fraction), pos.numel())
    pos = pos[torch.randperm(pos.numel(), generator=generator)[:num_pos]]
    neg = neg[torch.randperm(neg.numel(), generator=generator)[:min(batch - num_pos, neg.numel())]]
    out[pos] = labels[pos]
    out[neg] = NEGATIVE
    return out


class RPNAssigner:
    """Callable used in ``collate``: ``(images, targets) -> (images, targets, RCNNAssignment)``.

    Matches the RPN anchors with ``matcher`` (a :class:`~swdet.train.assign.TargetAssigner`) and,
    when ``batch`` is set, samples ``batch`` anchors per image at most ``pos_fraction`` positive.
    The sampling generator of each image is seeded from ``seed``, its image id and its (augmented)
    boxes, so the draw depends on neither the worker count nor the process that collates it.
    """

    def __init__(self, matcher: TargetAssigner, *, batch: int | None = 256, pos_fraction: float = 0.5,
                 seed: int = 0, collate_fn=None):
        self.matcher = matcher
        self.batch, self.pos_fraction, self.seed = batch, pos_fraction, int(seed)
        self.collate_fn = collate_fn

    def _generator(self, target: dict) -> torch.Generator:
        boxes = target["boxes"].detach().cpu().float().contiguous().numpy().tobytes()
        key = zlib.crc32(boxes, zlib.crc32(str((self.seed, int(target.get("image_id", 0)))).encode()))
        return torch.Generator().manual_seed(key)

    def assign(self, targets: list[dict]) -> RCNNAssignment:
        m = self.matcher
        a = len(m.anchors)
        labels, pos_idx, pos_gt, ious = [], [], [], []
        gt_offset = samples = 0
        for b, t in enumerate(targets):
            boxes = t["boxes"]
            matched, iou = m.match(boxes)
            lab = torch.full((a,), NEGATIVE, dtype=torch.long)
            lab[matched == IGNORE] = IGNORE
            pos = matched >= 0
            lab[pos] = 0  # one class: "object"
            if self.batch is not None:
                lab = sample_labels(lab, self.batch, self.pos_fraction, self._generator(t))
            samples += int((lab != IGNORE).sum())
            idx = (lab >= 0).nonzero().squeeze(1)
            labels.append(lab)
            pos_idx.append(idx + b * a)
            pos_gt.append(matched[idx] + gt_offset)
            ious.append(iou[idx])
            gt_offset += len(boxes)
        gt_all, gt_lab, gt_img = concat_gts(targets)
        pos_idx_t, pos_gt_t = torch.cat(pos_idx), torch.cat(pos_gt)
        gt_boxes = gt_all[pos_gt_t]
        rpn = Assignment(labels=torch.stack(labels), pos_idx=pos_idx_t, pos_gt=pos_gt_t,
                         pos_labels=torch.zeros_like(pos_idx_t),
                         target_deltas=m.box_coder.encode(m.anchors[pos_idx_t % a], gt_boxes), gt_boxes=gt_boxes,
                         iou_before=torch.cat(ious), gt_boxes_all=gt_all, gt_labels_all=gt_lab, gt_image=gt_img)
        g = max(1, max((len(t["boxes"]) for t in targets), default=0))
        pad_boxes = torch.zeros(len(targets), g, 4)
        pad_labels = torch.zeros(len(targets), g, dtype=torch.long)
        pad_valid = torch.zeros(len(targets), g, dtype=torch.bool)
        for b, t in enumerate(targets):
            n = len(t["boxes"])
            pad_boxes[b, :n] = t["boxes"].float().reshape(-1, 4)
            pad_labels[b, :n] = t["labels"].long()
            pad_valid[b, :n] = True
        count = samples if self.batch is not None else int(pos_idx_t.numel())
        return RCNNAssignment(rpn, torch.tensor(float(count)), pad_boxes, pad_labels, pad_valid)

    def __call__(self, batch):
        images, targets = self.collate_fn(batch) if self.collate_fn is not None else batch
        return images, targets, self.assign(targets)


# ----------------------------------------------------------------------------------------------
# Device side: RoI matching and sampling (fixed-size tensors, no host synchronization)


def match_rois(rois: Tensor, roi_valid: Tensor, gt_boxes: Tensor, gt_labels: Tensor, gt_valid: Tensor, *,
               fg_iou: float, bg_iou_hi: float, bg_iou_lo: float) -> tuple[Tensor, Tensor, Tensor]:
    """Label RoIs by their best GT: ``(labels [B, M], gt_index [B, M], iou [B, M])``.

    Foreground (its GT's class) at ``IoU >= fg_iou``, background (-1) in ``[bg_iou_lo, bg_iou_hi)``,
    ignored (-2) otherwise and for padding RoIs. An image without GT has only background RoIs.
    """
    iou = batched_box_iou(rois, gt_boxes)
    iou = torch.where(gt_valid[:, None, :], iou, torch.full_like(iou, -1.0))
    best, gt_index = iou.max(dim=2)
    best = best.clamp(min=0.0)  # no GT: IoU 0, background
    fg_label = torch.gather(gt_labels, 1, gt_index)
    labels = torch.where(best >= fg_iou, fg_label, torch.full_like(fg_label, NEGATIVE))
    ignore = ((best >= bg_iou_hi) & (best < fg_iou)) | (best < bg_iou_lo) | ~roi_valid
    labels = torch.where(ignore, torch.full_like(labels, IGNORE), labels)
    return labels, gt_index, best


def compact(index: Tensor, ok: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Move the ``ok`` entries of each row to the front (stable) and keep ``size`` columns."""
    order = torch.sort((~ok).to(torch.uint8), dim=1, stable=True).indices[:, :size]
    return torch.gather(index, 1, order), torch.gather(ok, 1, order)


def sample_by_key(labels: Tensor, keys: Tensor, batch: int, pos_fraction: float) -> tuple[Tensor, Tensor]:
    """Biased RoI sampling per image on the device, by key: the at most
    ``floor(batch · pos_fraction)`` foreground RoIs with the largest keys, then the
    ``batch - #foreground`` background RoIs with the largest keys (top-k, no loop).

    ``labels [B, M]``, ``keys [B, M]`` (>= 0) -> ``(index [B, S], ok [B, S])`` with
    ``S = min(batch, M)`` (no image can have more samples); the sampled RoIs come first, ``ok``
    marks them (the rest is padding).
    """
    b, m = labels.shape
    minus = torch.full_like(keys, -1.0)
    kp = min(int(batch * pos_fraction), m)
    kn = min(batch, m)
    pos_key, pos_idx = torch.where(labels >= 0, keys, minus).topk(kp, dim=1)
    pos_ok = pos_key >= 0
    neg_key, neg_idx = torch.where(labels == NEGATIVE, keys, minus).topk(kn, dim=1)
    room = batch - pos_ok.sum(1, keepdim=True)
    neg_ok = (neg_key >= 0) & (torch.arange(kn, device=labels.device)[None] < room)
    return compact(torch.cat([pos_idx, neg_idx], 1), torch.cat([pos_ok, neg_ok], 1), min(batch, m))


def sample_random(labels: Tensor, batch: int, pos_fraction: float) -> tuple[Tensor, Tensor]:
    """Random RoI sampling (Faster R-CNN's biased mini-batch): :func:`sample_by_key` with uniform
    random keys, i.e. uniformly without replacement within foreground and background."""
    return sample_by_key(labels, torch.rand(labels.shape, device=labels.device), batch, pos_fraction)


def sample_hardest(labels: Tensor, losses: Tensor, batch: int, pos_fraction: float = 0.25,
                   hard_positives: bool = True) -> tuple[Tensor, Tensor]:
    """OHEM as mmdetection's ``OHEMSampler`` (what users compare with): :func:`sample_by_key`
    keyed by each RoI's classification loss -- the hardest foreground RoIs up to the fraction,
    then the hardest background RoIs -> ``(index [B, S], ok [B, S])``. ``hard_positives=False``
    (``methods.ohem.selection: negatives``) draws the foreground at random instead (uniform keys,
    as :func:`sample_random`) and mines the background only."""
    keys = losses.detach().clamp(min=0)
    if not hard_positives:
        keys = torch.where(labels >= 0, torch.rand(labels.shape, device=labels.device), keys)
    return sample_by_key(labels, keys, batch, pos_fraction)


def sample_hardest_nms(rois: Tensor, labels: Tensor, losses: Tensor, batch: int, nms_iou: float = 0.7
                       ) -> tuple[Tensor, Tensor]:
    """OHEM as the paper (Shrivastava et al. 2016, Sec. 4.1): the RoIs of each image ranked by
    loss (classification + box), overlapping ones removed by NMS at ``nms_iou`` (a RoI that
    overlaps a harder one adds little), then the ``batch`` hardest, any mix of foreground and
    background -> ``(index [B, S], ok [B, S])``. The NMS keeps a data-dependent number of RoIs
    (one host synchronization)."""
    from torchvision.ops import batched_nms

    b, m = labels.shape
    valid = (labels != IGNORE).reshape(-1)
    cand = valid.nonzero().squeeze(1)
    image = torch.div(cand, m, rounding_mode="floor")
    scores = losses.detach().reshape(-1)[cand].float()
    keep = cand[batched_nms(rois.reshape(-1, 4)[cand].float(), scores, image, nms_iou)]
    kept = torch.zeros(b * m, dtype=torch.bool, device=labels.device)
    kept[keep] = True
    key = torch.where(kept.reshape(b, m), losses.detach().clamp(min=0), torch.full_like(losses, -1.0))
    key, idx = key.topk(min(batch, m), 1)
    return idx, key >= 0


def sample_all(labels: Tensor) -> tuple[Tensor, Tensor]:
    """No sampling: every RoI, ignored ones masked."""
    b, m = labels.shape
    return torch.arange(m, device=labels.device).expand(b, m), labels != IGNORE


def _normalizer(count: Tensor | float, device) -> Tensor:
    n = count.detach().float().reshape(()) if torch.is_tensor(count) else torch.tensor(float(count), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(n)
        n = n / dist.get_world_size()
    return n.clamp(min=1.0)


@dataclass
class RoIBatch:
    """The RoIs that enter the RoI-head loss, ``[B, S]`` each (padding has label -2)."""

    rois: Tensor
    labels: Tensor
    gt_index: Tensor
    iou: Tensor


# ----------------------------------------------------------------------------------------------
# The detector loss


class FasterRCNNLoss:
    """The detector-loss protocol (see :mod:`swdet.train.retina_loss`) for Faster R-CNN."""

    def __init__(self, cfg, methods, device):
        rc, names = cfg.rcnn, set(methods.names)
        self.cfg, self.device = cfg, device
        self.num_classes = cfg.model.num_classes
        per_level = generate_anchors(cfg.model)
        anchors = torch.cat(per_level)
        self.anchor_levels, self.num_levels = anchor_levels(per_level, device), len(per_level)
        self.rpn_coder, self.roi_coder = BoxCoder(RPN_BOX_WEIGHTS), BoxCoder(ROI_BOX_WEIGHTS)
        sampler = methods.sampler
        sf = cfg.methods.sampling_free
        sf_rpn = "sampling_free" in names and "rpn" in sf.heads
        sf_roi = "sampling_free" in names and "roi" in sf.heads
        # RPN: every anchor for Sampling-Free and noisy anchors (unless random sampling is named too)
        self.rpn_dense = (sf_rpn or "noisy_anchors" in names) and sampler != "random"
        self.roi_mode = sampler or ("all" if sf_roi else "random")
        self.rpn_pos_norm = sf.rpn_pos_norm if sf_rpn else 1.0
        self.roi_pos_norm = sf.roi_pos_norm if sf_roi else 1.0
        matcher = TargetAssigner(anchors, self.rpn_coder, rule=methods.assigner, fg_iou=rc.rpn_fg_iou,
                                 bg_iou=rc.rpn_bg_iou, allow_low_quality=True, topn=cfg.methods.noisy_anchors.topn)
        self.stats_assigner = matcher  # Sampling-Free's N_f / N: the RPN anchors
        self.assigner = RPNAssigner(matcher, batch=None if self.rpn_dense else rc.rpn_batch,
                                    pos_fraction=rc.rpn_pos_fraction, seed=cfg.train.seed)
        self.anchors = anchors.to(device)
        self.rpn_methods = [m for m in methods.methods if "rpn" in m.heads]
        self.roi_methods = [m for m in methods.methods if "roi" in m.heads]
        self.rpn_cls = classification_loss(cfg, methods.cls_loss)
        self.roi_cls = ClassificationLoss("softmax_ce")
        kw = {"reg_loss": cfg.loss.reg_loss, "reg_weight": cfg.loss.reg_weight}
        self.rpn_criterion = WeightedLoss(self.rpn_cls, self.rpn_methods, beta=cfg.loss.smooth_l1_beta,
                                          prefix="rpn_", **kw)
        self.roi_criterion = WeightedLoss(self.roi_cls, self.roi_methods, beta=rc.roi_smooth_l1_beta,
                                          prefix="roi_", **kw)
        self.diagnostics = Diagnostics(device)  # on the RoI head: the detector's final scores

    # -- RPN ------------------------------------------------------------------------------------
    def rpn_record(self, outputs: dict, assign: RCNNAssignment, iteration: int) -> SampleRecord:
        logits = torch.cat(outputs["rpn_logits"], 1)
        deltas = torch.cat(outputs["rpn_deltas"], 1)
        rec = build_record(logits, deltas, self.anchors, assign.rpn, self.rpn_coder, iteration, head="rpn",
                           anchor_levels=self.anchor_levels, num_levels=self.num_levels)
        factor = self.rpn_pos_norm if self.rpn_dense else 1.0
        rec.num_pos = _normalizer(factor * assign.rpn_count, logits.device)
        return rec

    # -- RoI head -------------------------------------------------------------------------------
    def roi_candidates(self, outputs: dict, assign: RCNNAssignment) -> RoIBatch:
        """Proposals (+ GT boxes), matched to the GT: ``[B, M]`` with ``M = R (+ G)``."""
        rc = self.cfg.rcnn
        rois, valid = outputs["proposals"].detach().float(), outputs["proposal_valid"]
        if rc.add_gt_as_proposals:
            rois = torch.cat([rois, assign.gt_boxes.float()], 1)
            valid = torch.cat([valid, assign.gt_valid], 1)
        labels, gt_index, iou = match_rois(rois, valid, assign.gt_boxes.float(), assign.gt_labels, assign.gt_valid,
                                           fg_iou=rc.roi_fg_iou, bg_iou_hi=rc.roi_bg_iou_hi, bg_iou_lo=rc.roi_bg_iou_lo)
        return RoIBatch(rois, labels, gt_index, iou)

    def _per_roi_loss(self, cls_logits: Tensor, box_deltas: Tensor, cand: RoIBatch, gt_boxes: Tensor
                      ) -> tuple[Tensor, Tensor]:
        """OHEM's ranking losses per RoI ``([B, M], [B, M])``: cross-entropy, and the box loss
        (0 for background)."""
        c = self.num_classes
        b, m, _ = cls_logits.shape
        target = torch.where(cand.labels >= 0, cand.labels, torch.full_like(cand.labels, c))
        ce = torch.nn.functional.cross_entropy(cls_logits.float().reshape(b * m, c + 1), target.reshape(-1),
                                               reduction="none").reshape(b, m)
        fg = cand.labels >= 0
        cls_idx = cand.labels.clamp(min=0)
        d = torch.gather(box_deltas.float(), 2, cls_idx[:, :, None, None].expand(b, m, 1, 4)).squeeze(2)
        gt = torch.gather(gt_boxes.float(), 1, cand.gt_index[..., None].expand(b, m, 4))
        unit = torch.div(torch.arange(4, device=gt.device), 2, rounding_mode="floor").float()  # (0, 0, 1, 1)
        t = self.roi_coder.encode(torch.where(fg[..., None], cand.rois, unit), torch.where(fg[..., None], gt, unit))
        reg = L.smooth_l1(d, t, self.cfg.rcnn.roi_smooth_l1_beta)
        return ce, torch.where(fg, reg, torch.zeros_like(reg))

    def sample(self, outputs: dict, cand: RoIBatch, assign: RCNNAssignment) -> tuple[Tensor, Tensor]:
        rc = self.cfg.rcnn
        if self.roi_mode == "all":
            return sample_all(cand.labels)
        if self.roi_mode == "ohem":  # a read-only pass over every RoI, then the hardest
            ohem = self.cfg.methods.ohem
            with torch.no_grad():
                cls, box = outputs["box_head"](cand.rois)
                ce, box_loss = self._per_roi_loss(cls, box, cand, assign.gt_boxes)
            if ohem.selection == "paper":
                return sample_hardest_nms(cand.rois, cand.labels, ce + box_loss, rc.roi_batch, ohem.nms_iou)
            return sample_hardest(cand.labels, ce, rc.roi_batch, rc.roi_pos_fraction,
                                  hard_positives=ohem.selection != "negatives")
        return sample_random(cand.labels, rc.roi_batch, rc.roi_pos_fraction)

    def roi_record(self, outputs: dict, assign: RCNNAssignment, iteration: int) -> SampleRecord:
        cand = self.roi_candidates(outputs, assign)
        index, ok = self.sample(outputs, cand, assign)
        b, s = index.shape
        take = lambda x: torch.gather(x, 1, index if x.dim() == 2 else index[..., None].expand(b, s, x.shape[-1]))
        rois = take(cand.rois)
        labels = torch.where(ok, take(cand.labels), torch.full_like(index, IGNORE))
        gt_index, iou = take(cand.gt_index), take(cand.iou)
        cls_logits, box_deltas = outputs["box_head"](rois)
        return self.build_roi_record(cls_logits, box_deltas, rois, labels, gt_index, iou, assign, iteration)

    def build_roi_record(self, cls_logits: Tensor, box_deltas: Tensor, rois: Tensor, labels: Tensor,
                         gt_index: Tensor, iou: Tensor, assign: RCNNAssignment, iteration: int) -> SampleRecord:
        """Flatten the sampled RoIs ``[B, S]`` into a :class:`SampleRecord` (``head="roi"``):
        softmax probabilities, class-specific deltas with weights (10, 10, 5, 5)."""
        b, s, c1 = cls_logits.shape
        n = b * s
        g = assign.gt_boxes.shape[1]
        logits = cls_logits.reshape(n, c1)
        labels = labels.reshape(n)
        pos_mask = labels >= 0
        pos_idx = pos_mask.nonzero().squeeze(1)  # the step's one host synchronization (module docstring)
        pos_labels = labels[pos_idx]
        image_idx = torch.div(pos_idx, s, rounding_mode="floor")
        gt_ids = image_idx * g + gt_index.reshape(n)[pos_idx]
        gt_boxes = assign.gt_boxes.float().reshape(b * g, 4)[gt_ids]
        pos_rois = rois.reshape(n, 4)[pos_idx].float()
        pred_deltas = box_deltas.reshape(n, c1 - 1, 4)[pos_idx, pos_labels].float()
        pred_boxes = self.roi_coder.decode(pos_rois, pred_deltas)
        with torch.no_grad():
            iou_after = elementwise_iou(pred_boxes.detach(), gt_boxes)
        prob_gt = torch.softmax(logits[pos_idx].float(), dim=1).gather(1, pos_labels[:, None]).squeeze(1)
        valid = labels != IGNORE
        if self.roi_mode == "all":
            num = _normalizer(self.roi_pos_norm * pos_mask.sum(), logits.device)
        else:
            num = _normalizer(valid.sum(), logits.device)
        return SampleRecord(
            logits=logits, labels=labels, valid=valid, pos_mask=pos_mask, pos_idx=pos_idx, pos_labels=pos_labels,
            pred_deltas=pred_deltas, target_deltas=self.roi_coder.encode(pos_rois, gt_boxes), anchors=pos_rois,
            gt_boxes=gt_boxes, gt_ids=gt_ids, image_idx=image_idx, iou_before=iou.reshape(n)[pos_idx].float(),
            iou_after=iou_after, pred_boxes=pred_boxes, prob_gt=prob_gt, num_pos=num, num_classes=c1,
            iteration=iteration, head="roi")

    # -- protocol -------------------------------------------------------------------------------
    def __call__(self, outputs: dict, assign: RCNNAssignment, iteration: int):
        rpn = self.rpn_record(outputs, assign, iteration)
        rpn_total, rpn_parts = self.rpn_criterion(rpn)
        roi = self.roi_record(outputs, assign, iteration)
        roi_total, roi_parts = self.roi_criterion(roi)
        self.diagnostics.update(roi)
        return rpn_total + roi_total, {**rpn_parts, **roi_parts}

    def state_dict(self) -> dict:
        return {"rpn_cls_loss": self.rpn_cls.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.rpn_cls.load_state_dict(state.get("rpn_cls_loss", {}))
