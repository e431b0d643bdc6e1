"""The one weighted loss every method plugs into (SWN, Eq. 2).

    L = 1/N1 · Σ_i s_i^cls · L_i^cls  +  λ_reg/N2 · Σ_i s_i^reg · L_i^reg  +  extra terms

``L_i^cls`` is the element-wise base classification loss (focal, BCE or GHM-C) over every
non-ignored sample and class, ``L_i^reg`` the per-positive regression loss (smooth L1 on the
deltas, L1, GIoU on the decoded boxes, or GHM-R); ``N1 = N2 = max(P, 1)`` (GHM-C and GHM-R normalize
themselves: their sums are the loss).
Each method's weights multiply in the order the methods are given; see
:mod:`swdet.train.methods.base` for the protocol.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from swdet.boxes import BoxCoder, elementwise_iou
from swdet.train import losses as L
from swdet.train.assign import IGNORE, Assignment
from swdet.train.methods.base import Method, SampleRecord


class ClassificationLoss:
    """Element-wise base classification loss: ``focal``, ``bce``, ``ghm`` (GHM-C), all sigmoid
    over ``C`` classes, or ``softmax_ce`` (softmax over ``C + 1`` columns, background last: a
    two-stage RoI head; :func:`swdet.train.losses.softmax_cross_entropy`)."""

    def __init__(self, kind: str = "focal", *, alpha: float = 0.25, gamma: float = 2.0, bins: int = 30,
                 momentum: float = 0.75, per_level: bool = True):
        if kind not in ("focal", "bce", "ghm", "softmax_ce"):
            raise ValueError(f"unknown classification loss {kind!r}")
        self.kind, self.alpha, self.gamma, self.bins, self.momentum = kind, alpha, gamma, bins, momentum
        self.per_level = per_level
        self.acc_sum: Tensor | None = None  # GHM-C's EMA of the gradient-norm histogram

    @property
    def self_normalized(self) -> bool:
        """GHM-C's density weights already divide by the number of valid elements."""
        return self.kind == "ghm"

    def __call__(self, logits: Tensor, targets: Tensor, valid: Tensor, levels: Tensor | None = None,
                 num_levels: int = 1) -> Tensor:
        """``[N, C]`` element-wise loss; ``levels [N]`` (FPN level of each row) only matters to
        GHM-C, which builds its histogram per level unless ``per_level`` is off."""
        if self.kind == "focal":
            return L.sigmoid_focal_loss(logits, targets, self.alpha, self.gamma) * valid[:, None]
        if self.kind == "bce":
            return L.binary_cross_entropy(logits, targets) * valid[:, None]
        if self.kind == "softmax_ce":
            return L.softmax_cross_entropy(logits, targets) * valid[:, None]
        if not self.per_level:
            levels, num_levels = None, 1
        loss, self.acc_sum = L.ghm_c_loss(logits, targets, valid, bins=self.bins, momentum=self.momentum,
                                          acc_sum=self.acc_sum, levels=levels, num_levels=num_levels)
        return loss * valid[:, None]

    def state_dict(self) -> dict:
        return {"acc_sum": self.acc_sum}

    def load_state_dict(self, state: dict) -> None:
        self.acc_sum = state.get("acc_sum")


def regression_loss(kind: str, rec: SampleRecord, beta: float) -> Tensor:
    """Per-positive regression loss per coordinate ``[P, 4]`` (``[P, 1]`` for GIoU, a loss on
    whole boxes); its sum over the last axis is the per-positive loss."""
    if kind == "smooth_l1":
        return L.smooth_l1(rec.pred_deltas, rec.target_deltas, beta, per_coordinate=True)
    if kind == "l1":
        return L.l1(rec.pred_deltas, rec.target_deltas, per_coordinate=True)
    if kind == "giou":
        return L.giou_loss(rec.pred_boxes, rec.gt_boxes)[:, None]
    raise ValueError(f"unknown regression loss {kind!r}")


class RegressionLoss:
    """Per-positive regression loss per coordinate: the stateless kinds of :func:`regression_loss`
    or ``ghm_r`` (GHM-R, :func:`swdet.train.losses.ghm_r_loss`: per FPN level, with a running
    average that must survive ``--resume``; it normalizes itself, so the criterion sums it instead
    of dividing by the number of positives)."""

    def __init__(self, kind: str = "smooth_l1", *, beta: float = 1.0 / 9, mu: float = 0.02, bins: int = 10,
                 momentum: float = 0.7):
        if kind not in ("smooth_l1", "l1", "giou", "ghm_r"):
            raise ValueError(f"unknown regression loss {kind!r}")
        self.kind, self.beta, self.mu, self.bins, self.momentum = kind, beta, mu, bins, momentum
        self.acc_sum: Tensor | None = None  # GHM-R's running average of the gradient-norm histogram

    @property
    def self_normalized(self) -> bool:
        return self.kind == "ghm_r"

    def __call__(self, rec: SampleRecord) -> Tensor:
        if self.kind != "ghm_r":
            return regression_loss(self.kind, rec, self.beta)
        levels = None if rec.levels is None else rec.levels[rec.pos_idx]
        loss, self.acc_sum = L.ghm_r_loss(rec.pred_deltas, rec.target_deltas, mu=self.mu, bins=self.bins,
                                          momentum=self.momentum, acc_sum=self.acc_sum, levels=levels,
                                          num_levels=rec.num_levels)
        return loss

    def state_dict(self) -> dict:
        return {"acc_sum": self.acc_sum}

    def load_state_dict(self, state: dict) -> None:
        self.acc_sum = state.get("acc_sum")


def _num_pos(p: int, device) -> Tensor:
    # torch.full launches a fill kernel with a host scalar: no host-to-device copy, no sync
    n = torch.full((), float(p), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(n)
        n = n / dist.get_world_size()
    return n.clamp(min=1.0)


def build_record(logits: Tensor, deltas: Tensor, anchors: Tensor, assign: Assignment, box_coder: BoxCoder,
                 iteration: int = 0, head: str = "retina", anchor_levels: Tensor | None = None,
                 num_levels: int = 1) -> SampleRecord:
    """Flatten one batch into a :class:`SampleRecord`.

    ``logits [B, A, C]``, ``deltas [B, A, 4]``, ``anchors [A, 4]``, ``anchor_levels [A]`` (the
    FPN level of each anchor, or None). Nothing here synchronizes with the device: the positives'
    count comes from the host-side assignment.
    """
    b, a, c = logits.shape
    logits = logits.reshape(b * a, c)
    deltas = deltas.reshape(b * a, 4)
    labels = assign.labels.reshape(-1)
    pos_idx = assign.pos_idx
    pred_deltas = deltas[pos_idx].float()
    pos_anchors = anchors[pos_idx % a]
    pred_boxes = box_coder.decode(pos_anchors, pred_deltas)
    with torch.no_grad():
        iou_after = elementwise_iou(pred_boxes.detach(), assign.gt_boxes)
    prob_gt = torch.sigmoid(logits[pos_idx, assign.pos_labels].float())
    pos_mask = torch.zeros(b * a, dtype=torch.bool, device=logits.device)
    pos_mask[pos_idx] = True
    return SampleRecord(
        logits=logits, labels=labels, valid=labels != IGNORE, pos_mask=pos_mask, pos_idx=pos_idx,
        pos_labels=assign.pos_labels, pred_deltas=pred_deltas, target_deltas=assign.target_deltas,
        anchors=pos_anchors, gt_boxes=assign.gt_boxes, gt_ids=assign.pos_gt,
        image_idx=torch.div(pos_idx, a, rounding_mode="floor"), iou_before=assign.iou_before,
        iou_after=iou_after, pred_boxes=pred_boxes, prob_gt=prob_gt,
        num_pos=_num_pos(pos_idx.shape[0], logits.device), num_classes=c, iteration=iteration, head=head,
        levels=None if anchor_levels is None else anchor_levels.repeat(b), num_levels=num_levels,
    )


class WeightedLoss:
    """``loss, parts = criterion(rec)``: the general weighted loss over one :class:`SampleRecord`.

    ``parts`` holds the detached components (``cls``, ``reg`` and each extra term) for logging.
    """

    def __init__(self, cls_loss: ClassificationLoss, methods: list[Method], *,
                 reg_loss: str | RegressionLoss = "smooth_l1", beta: float = 1.0 / 9, reg_weight: float = 1.0,
                 prefix: str = ""):
        self.cls_loss = cls_loss
        self.methods = list(methods)
        self.reg_loss = reg_loss if isinstance(reg_loss, RegressionLoss) else RegressionLoss(reg_loss, beta=beta)
        self.reg_weight, self.prefix = reg_weight, prefix
        reducers = [m for m in self.methods if type(m).reduce is not Method.reduce]
        if len(reducers) > 1:
            raise ValueError(f"methods {[m.name for m in reducers]} both replace the loss reduction")
        if reducers and self.reg_loss.self_normalized:
            raise ValueError(f"method {reducers[0].name} replaces the loss reduction, which GHM-R's "
                             "self-normalized loss does not allow")
        softs = [m for m in self.methods if type(m).soft_targets is not Method.soft_targets]
        if len(softs) > 1:
            raise ValueError(f"methods {[m.name for m in softs]} both set soft targets")

    def targets(self, rec: SampleRecord) -> Tensor:
        t = torch.zeros_like(rec.logits, dtype=torch.float32)
        value = torch.ones(rec.num_positives, device=t.device)
        for m in self.methods:
            soft = m.soft_targets(rec)
            if soft is not None:
                value = soft.detach().float()
        t[rec.pos_idx, rec.pos_labels] = value
        return t

    def __call__(self, rec: SampleRecord) -> tuple[Tensor, dict[str, Tensor]]:
        cls_elem = self.cls_loss(rec.logits.float(), self.targets(rec), rec.valid, rec.levels, rec.num_levels)
        reg_elem = self.reg_loss(rec)
        reg = reg_elem.sum(1)
        extra: dict[str, Tensor] = {}
        for m in self.methods:
            w = m.weights(rec, cls_elem, reg)
            if w.cls is not None:
                cls_elem = cls_elem * (w.cls[:, None] if w.cls.dim() == 1 else w.cls)
            if w.cls_gt is not None:
                at = (rec.pos_idx, rec.pos_labels)
                cls_elem = cls_elem.index_put(at, cls_elem[at] * w.cls_gt.to(cls_elem.dtype))
            if w.reg is not None:
                reg_elem = reg_elem * w.reg[:, None]
                reg = reg_elem.sum(1)
            extra.update(w.extra)
        reduced = None
        for m in self.methods:
            reduced = m.reduce(rec, cls_elem.sum(dim=1), reg_elem) or reduced
        if reduced is not None:
            cls_loss, reg_loss, more = reduced
            extra.update(more)
        else:
            cls_loss = cls_elem.sum() if self.cls_loss.self_normalized else cls_elem.sum() / rec.num_pos
            reg_loss = reg.sum() if self.reg_loss.self_normalized else reg.sum() / rec.num_pos
        losses = {"cls": cls_loss, "reg": self.reg_weight * reg_loss, **extra}
        for m in self.methods:
            losses = m.finalize(losses, rec)
        total = sum(losses.values())
        parts = {f"{self.prefix}{k}": v.detach() for k, v in losses.items()}
        return total, parts
