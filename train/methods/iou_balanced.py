"""IoU-balanced loss functions (Wu & Li), ``--method iou_balanced``; single-stage detectors.

* **Classification** (Eq. 1-2): the positives' classification loss is weighted by the IoU of
  the regressed box with its GT, normalized so the positives' loss sum is unchanged::

      L_cls = Σ_{i∈pos} w_i·CE_i + Σ_{i∈neg} CE_i,   w_i = iou_i^η · Σ_pos CE / Σ_pos iou^η·CE

  (no gradient through the weights; η = 1.5). On a sigmoid head the authors' code weights only
  the positive's ground-truth-class element (``(1 - t) + t·iou^η`` over the ``C`` elements), so
  ``CE_i`` is that element's focal loss and the positive's other ``C - 1`` elements keep weight 1
  (``methods.iou_balanced.cls_elements: gt``, the default; ``all`` weights every element of a
  positive with ``CE_i`` summed over them). The code normalizes within each FPN level, as its loss
  runs once per level (``normalize: level``, the default; ``batch`` normalizes over the batch).

* **Localization** (Eq. 3-4): ``L_loc = Σ_{i∈pos} w_loc · iou_i^λ · smoothL1_i`` (λ = 1.5, no
  gradient through the IoU). The paper adjusts ``w_loc`` by hand "to keep the sum of
  localization loss unchanged for the first step of the training procedure" (3.049 for λ = 1.5)
  and finds that better than renormalizing every batch (Eq. 5). Here ``w_loc`` is fixed on the
  first batch as ``Σ L_reg / Σ iou^λ·L_reg`` (summed over all DDP ranks), once -- the one host
  read of this method -- and kept in :meth:`state_dict` so ``--resume`` reuses it. A positive
  ``methods.iou_balanced.w_loc`` in the config fixes it by hand instead.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from swdet.train.methods.base import Method, SampleRecord, Weights
from swdet.train.weighting import iou_balanced_cls_weights, iou_balanced_loc_weights


class IoUBalanced(Method):
    name = "iou_balanced"
    default_cls_loss = "focal"
    heads = frozenset({"retina"})

    def __init__(self, params):
        self.params = params
        self.w_loc: float | None = float(params.w_loc) if params.w_loc > 0 else None

    def _fix_w_loc(self, ious: torch.Tensor, reg: torch.Tensor) -> float | None:
        """``w_loc = Σ L_reg / Σ iou^λ·L_reg`` of this batch (all ranks); None if undefined."""
        reg = reg.detach().float()
        base = iou_balanced_loc_weights(ious.float(), lam=self.params.lam, w_loc=1.0)
        sums = torch.stack([reg.sum(), (base * reg).sum()])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
        num, den = sums.tolist()  # the one documented host sync, on the first batch only
        if not (den > 0 and num > 0):
            return None  # no positive anywhere: try again on the next batch
        return num / den

    def weights(self, rec: SampleRecord, cls_elem: torch.Tensor, reg: torch.Tensor) -> Weights:
        p = self.params
        by_level = p.normalize == "level" and rec.levels is not None
        groups = rec.levels[rec.pos_idx] if by_level else None
        num_groups = rec.num_levels if by_level else 1
        if self.w_loc is None:
            self.w_loc = self._fix_w_loc(rec.iou_after, reg)
        w_reg = iou_balanced_loc_weights(rec.iou_after, lam=p.lam, w_loc=self.w_loc if self.w_loc else 1.0)
        if p.cls_elements == "gt":
            gt_loss = cls_elem[rec.pos_idx, rec.pos_labels]
            w_gt = iou_balanced_cls_weights(rec.iou_after, gt_loss, p.eta, groups, num_groups)
            return Weights(cls_gt=w_gt.to(cls_elem.dtype), reg=w_reg.to(reg.dtype))
        w_cls = iou_balanced_cls_weights(rec.iou_after, cls_elem[rec.pos_idx], p.eta, groups, num_groups)
        cls_w = torch.ones(rec.num_samples, device=w_cls.device, dtype=cls_elem.dtype)  # negatives: 1
        cls_w = cls_w.index_copy(0, rec.pos_idx, w_cls.to(cls_elem.dtype))
        return Weights(cls=cls_w, reg=w_reg.to(reg.dtype))

    def state_dict(self) -> dict:
        return {"w_loc": self.w_loc}

    def load_state_dict(self, state: dict) -> None:
        if self.params.w_loc > 0:  # fixed by hand in the config
            return
        w = state.get("w_loc")
        self.w_loc = float(w) if w is not None else None
