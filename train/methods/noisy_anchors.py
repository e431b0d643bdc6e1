"""Learning from noisy anchors (Li et al., CVPR 2020), ``--method noisy_anchors``.

* **Positive candidates** ``A_pos`` (Algorithm 1, lines 2-5): each GT's top-N anchors by IoU
  before refinement (``assigner = "topn"``, N = ``methods.noisy_anchors.topn``, 40); every other
  anchor is negative (``A_neg``), none is ignored.
* **Soft labels** (Eq. 3): a positive's target for its GT class is its cleanliness
  ``c = α·loc_a + (1-α)·cls_c``, with ``loc_a`` the IoU of the regressed box with its GT and
  ``cls_c`` the predicted probability of the GT class (both detached); negatives keep 0.
* **Re-weighting** (Eq. 4-6): ``r = (α·f(loc_a) + (1-α)·f(cls_c))^γ``, ``f(x) = 1/(1-x)``,
  normalized to mean 1 over the positives, multiplies both the positives' classification loss
  and their regression loss; negatives keep weight 1::

      L_cls = Σ_{i∈A_pos} r_i·FL(p_i, c_i) + Σ_{j∈A_neg} FL(p_j, 0),   L_reg = Σ_{i∈A_pos} r_i·smoothL1_i

  The paper trains RetinaNet with focal loss (the soft-target generalization of
  :func:`swdet.train.losses.sigmoid_focal_loss`), α = 0.75, γ = 1.

On Faster R-CNN the method applies to the RPN only (Sec. 5.4, Table 6: "using our approach only
for RPNs"): every anchor, the top-N positives, soft labels and re-weighting, focal loss, with the
objectness bias at the focal-loss prior (:meth:`NoisyAnchors.prepare`); the RoI head keeps the
random-sampling baseline.
"""

from __future__ import annotations

import torch
from torch import Tensor

from swdet.train.methods.base import Method, SampleRecord, Weights
from swdet.train.weighting import cleanliness, cleanliness_weights


class NoisyAnchors(Method):
    name = "noisy_anchors"
    default_cls_loss = "focal"
    assigner = "topn"
    heads = frozenset({"retina", "rpn"})

    def __init__(self, params):
        self.params = params

    def prepare(self, model, stats) -> None:
        """Faster R-CNN (Sec. 5.4: the approach in the RPN only): the RPN then trains like a
        one-stage detector, focal loss on every anchor, so its objectness bias starts at the
        focal-loss prior π (``model.prior_prob``, 0.01; Lin et al. 2017), as RetinaNet's head does.
        Without it the ~10^4 negatives per image start at p = 0.5 and swamp the loss."""
        head = getattr(model, "rpn_head", None)
        if head is not None and hasattr(head, "set_prior"):
            head.set_prior(float(model.cfg.prior_prob))

    def soft_targets(self, rec: SampleRecord) -> Tensor:
        """Eq. 3, ``[P]``: the positives' soft target for their GT class."""
        return cleanliness(rec.iou_after, rec.prob_gt.detach(), alpha=self.params.alpha)

    def weights(self, rec: SampleRecord, cls_elem: Tensor, reg: Tensor) -> Weights:
        """Eq. 4-6: ``r`` (mean 1 over positives) on their classification and regression losses."""
        r = cleanliness_weights(rec.iou_after, rec.prob_gt.detach(), alpha=self.params.alpha,
                                gamma=self.params.gamma)
        w_cls = torch.ones(rec.num_samples, device=r.device, dtype=cls_elem.dtype)  # negatives: 1
        w_cls = w_cls.index_copy(0, rec.pos_idx, r.to(cls_elem.dtype))
        return Weights(cls=w_cls, reg=r.to(reg.dtype))
