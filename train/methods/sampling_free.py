"""Sampling-Free (Chen et al., "Is Sampling Heuristics Necessary in Training Deep Object
Detectors?"), ``--method sampling_free``.

No hard or soft sampling: plain BCE over every non-ignored anchor (the method's base loss), and
three ingredients (Sec. 3.2):

* **Guided loss scaling** (Eq. 7-8): the classification loss is rescaled to the regression loss
  of the same batch, ``L_cls' = L_cls · detach(factor · L_reg / L_cls)``, so its value equals
  ``factor · L_reg`` while its gradient is that of ``L_cls`` times the detached ratio.
  ``factor`` is 1 for RetinaNet and the RPN, 2 in a RoI head ("the bounding-box regression loss
  is ~2 times higher than the classification loss in RoI-subnet").
* **Optimal bias initialization** (Eq. 9-10): the last classification bias starts at
  ``b = -log((1-π)/π)`` with ``π = N_f/(N·C)``, the minimizer of the initial BCE; ``N_f``
  foreground and ``N`` foreground + background anchors over the whole training set, from
  :func:`swdet.train.stats.anchor_statistics` (no forward pass). Not used in a RoI head: on
  Faster R-CNN it sets the RPN objectness bias (C = 1, the RPN anchors' statistics).
* **Adaptive thresholding**: the inference score threshold becomes ``θ = N_f/N``; the trainer
  writes it into ``model.json`` (``Trainer.threshold_info``) because :attr:`sets_threshold` is set.
  On Faster R-CNN the counts are the RPN anchors' (the only ones known without a forward pass),
  ~1e-3 on COCO, the order of the authors' RoI-head test threshold (1e-3).

On Faster R-CNN (``swdet.train.rcnn_loss``): the RPN trains on every anchor and the RoI head on
every proposal (no sampling), guided scaling with factor 1 in the RPN and 2 in the RoI head.
``methods.sampling_free.heads`` limits it to one of them (the paper's Table 4 ablation); the
other keeps the baseline's random sampling.
"""

from __future__ import annotations

from torch import Tensor, nn

from swdet.errors import SwdetError
from swdet.train.methods.base import Method, SampleRecord
from swdet.train.weighting import guided_loss_scale, optimal_prior


class SamplingFree(Method):
    name = "sampling_free"
    default_cls_loss = "bce"
    sets_threshold = True
    needs_stats = True

    def __init__(self, params):
        self.params = params
        self.heads = frozenset({"retina", *params.heads})
        self.bias_init = bool(params.bias_init) and ("rpn" in params.heads)
        # Instance attributes: the trainer only gathers statistics / sets theta when asked to.
        self.sets_threshold = bool(params.adaptive_threshold)
        self.needs_stats = self.bias_init or self.sets_threshold
        self.prior: float | None = None  # the prior pi set by prepare(), for the logs

    def prepare(self, model: nn.Module, stats: dict | None) -> None:
        """Eq. 10: set the classification bias so every sigmoid starts at ``π = N_f/(N·C)``."""
        if not self.bias_init:
            return
        if not stats:
            raise SwdetError("--method sampling_free: the optimal bias initialization needs the anchor "
                             "statistics of the training set (none were computed)")
        # Faster R-CNN: the RPN's objectness (one class) only; Sec. 3.2: "the optimal bias
        # initialization is not used in RoI-subnet". RetinaNet: its classification head.
        # (With heads: [roi] the RPN keeps its plain initialization: bias_init is off.)
        head = getattr(model, "rpn_head", None)
        if head is None:
            head = getattr(model, "head", None)
        if head is None or not hasattr(head, "set_prior"):
            raise SwdetError(f"--method sampling_free: {type(model).__name__} has no classification head "
                             "with set_prior() for the optimal bias initialization")
        self.prior = float(optimal_prior(int(stats["num_fg"]), int(stats["num_all"]), int(head.num_classes)))
        head.set_prior(self.prior)

    def finalize(self, losses: dict[str, Tensor], rec: SampleRecord) -> dict[str, Tensor]:
        """Eq. 7-8: ``cls ← cls · detach(factor · reg / cls)`` (value ``factor · reg``)."""
        factor = self.params.roi_guided_factor if rec.head == "roi" else self.params.guided_factor
        out = dict(losses)
        out["cls"] = guided_loss_scale(losses["cls"], losses["reg"], factor)
        return out
