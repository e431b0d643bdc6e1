"""PISA: Prime Sample Attention (Cao et al., CVPR 2020), ``--method pisa``.

Two parts, both on the positives of the batch (RetinaNet: every positive anchor; a RoI head:
every positive RoI):

* **ISR** (Importance-based Sample Reweighting, Sec. 4.1): the positives are ranked by IoU-HLR
  (IoU of the *regressed* box with its GT, ranked within each GT, then within each class),
  ``u_i = (n_j - r_i)/n_j`` (Eq. 1), ``w_i = ((1-β)u_i + β)^γ`` (Eq. 2), and the weights are
  rescaled so the positives' total classification loss is unchanged (Eq. 3)::

      L_cls = Σ_{i∈pos} w'_i·CE_i + Σ_{i∈neg} CE_i,    w'_i = w_i · Σ_pos CE / Σ_pos w·CE

  On RetinaNet ``CE_i`` is the positive's focal loss summed over its classes (the paper's App. B:
  "we simply multiply our weights with focal loss"); negatives keep weight 1.

* **CARL** (Classification-Aware Regression Loss, Sec. 4.2, Eq. 4): an extra term
  ``L_carl = 1/N2 · Σ_i c'_i·L_i^reg`` with ``c = v/mean(v)``, ``v = ((1-b)p_i + b)^k``,
  ``c' = c · ΣL/Σ cL`` (ratio detached). ``p_i`` is the predicted probability of the GT class
  (sigmoid for RetinaNet, softmax in a RoI head: :attr:`SampleRecord.prob_gt` either way), so the
  regression loss's gradient reaches the classifier (App. A). As in mmdetection's PISA RetinaNet,
  the plain regression loss is kept and ``carl`` is added; ``L_i^reg`` is the criterion's
  per-positive regression loss (smooth L1 of the deltas by default, as in the paper).
"""

from __future__ import annotations

import torch

from swdet.train.methods.base import Method, SampleRecord, Weights
from swdet.train.weighting import carl_loss, isr_weights, rescale_to


class Pisa(Method):
    """ISR weights on the positives' classification loss plus the CARL term ``carl``."""

    name = "pisa"
    default_cls_loss = "focal"
    heads = frozenset({"retina", "roi"})

    def __init__(self, params):
        self.params = params

    def weights(self, rec: SampleRecord, cls_elem: torch.Tensor, reg: torch.Tensor) -> Weights:
        p = self.params
        # ISR (Eq. 1-2), ranked by the IoU after regression; no gradient.
        w = isr_weights(rec.iou_after.detach().float(), rec.gt_ids, rec.pos_labels, gamma=p.isr_gamma,
                        beta=p.isr_beta)
        # Eq. 3: keep the positives' classification loss sum (over their classes) unchanged.
        w = rescale_to(w, cls_elem[rec.pos_idx].detach())
        w_cls = torch.ones(rec.num_samples, device=w.device, dtype=cls_elem.dtype)  # negatives: 1
        out = Weights(cls=w_cls.index_copy(0, rec.pos_idx, w.to(cls_elem.dtype)))
        if p.carl_weight > 0:
            # CARL (Eq. 4): gradient flows into prob_gt (the classifier) and into the regression loss.
            carl = carl_loss(rec.prob_gt.float(), reg.float(), k=p.carl_k, bias=p.carl_bias)
            out.extra["carl"] = p.carl_weight * carl / rec.num_pos
        return out
