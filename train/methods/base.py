"""The interface every sample-weighting method implements.

All five papers are rules for per-sample weights in one general loss (SWN, Eq. 2)::

    L = 1/N1 · Σ_i s_i^cls · L_i^cls  +  1/N2 · Σ_i s_i^reg · L_i^reg  (+ extra terms)

:class:`~swdet.train.criterion.WeightedLoss` builds one :class:`SampleRecord` per batch and asks
each selected :class:`Method`, in order, for

1. ``soft_targets(rec)``: a soft classification target for the positives (noisy anchors);
2. ``weights(rec, cls_elem, reg)``: multiplicative weights for the element-wise classification
   loss (``[N]`` or ``[N, C]``, or ``[P]`` for the positives' ground-truth-class elements only)
   and the per-positive regression loss (``[P]``), computed from the losses *as already weighted
   by the methods before it* (so ``pisa,swn`` multiplies them), plus extra loss terms (CARL);
3. ``reduce(rec, cls_per_sample, reg_elem)``: at most one method may replace the plain
   normalized sums (SWN turns them into its Eq. 9 terms); ``reg_elem`` is the positives'
   regression loss per coordinate ``[P, 4]`` (``[P, 1]`` for a loss on whole boxes);
4. ``finalize(losses, rec)``: a last rescaling of the reduced losses (Sampling-Free's guided
   scaling).

A method with parameters (SWN) owns a training-only ``nn.Module`` returned by ``module()``; the
trainer gives it its own optimizer and saves it only in ``checkpoints/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class SampleRecord:
    """One batch of samples: ``N = B·A`` anchors (RPN anchors or RoIs) and ``P`` positives.

    Shapes: ``logits [N, C]``, ``labels [N]`` (class index, -1 negative, -2 ignored),
    ``valid [N]`` (not ignored), ``pos_mask [N]``; positives only: ``pos_idx, pos_labels,
    gt_ids, image_idx, iou_before, iou_after, prob_gt [P]`` and ``pred_deltas, target_deltas,
    anchors, gt_boxes, pred_boxes [P, 4]``. ``pred_deltas``, ``pred_boxes`` and ``prob_gt``
    carry gradients; ``iou_after`` (IoU of the regressed box with its GT) does not.
    ``num_pos`` is the positive-count normalizer (>= 1, averaged over DDP ranks). ``levels``
    (``[N]``, dense heads only) is the FPN level of each sample, in ``[0, num_levels)``.
    """

    logits: Tensor
    labels: Tensor
    valid: Tensor
    pos_mask: Tensor
    pos_idx: Tensor
    pos_labels: Tensor
    pred_deltas: Tensor
    target_deltas: Tensor
    anchors: Tensor
    gt_boxes: Tensor
    gt_ids: Tensor
    image_idx: Tensor
    iou_before: Tensor
    iou_after: Tensor
    pred_boxes: Tensor
    prob_gt: Tensor
    num_pos: Tensor
    num_classes: int
    iteration: int = 0
    head: str = "retina"  # retina | rpn | roi: which head the samples come from
    levels: Tensor | None = None
    num_levels: int = 1

    @property
    def num_samples(self) -> int:
        return self.logits.shape[0]

    @property
    def num_positives(self) -> int:
        return self.pos_idx.shape[0]


@dataclass
class Weights:
    """What ``Method.weights`` returns. ``None`` leaves that loss unchanged."""

    cls: Tensor | None = None  # [N] or [N, C]
    cls_gt: Tensor | None = None  # [P]: the positives' ground-truth-class elements only
    reg: Tensor | None = None  # [P]
    extra: dict[str, Tensor] = field(default_factory=dict)  # already normalized loss terms


class Method:
    """Base class: a method that changes nothing. Subclasses override what they need."""

    name: str = "base"
    # Base classification loss this method is defined with: "focal", "bce", "ghm" or None.
    default_cls_loss: str | None = None
    # Assignment rule it needs: "max_iou", "topn" or None (no preference).
    assigner: str | None = None
    # Where it applies: {"retina", "rpn", "roi"} (checked against the detector).
    heads: frozenset[str] = frozenset({"retina", "rpn", "roi"})
    # Whether the adaptive threshold theta = N_f / N becomes the inference score threshold.
    sets_threshold: bool = False

    def module(self) -> nn.Module | None:
        """Training-only parameters (given their own optimizer); None for parameter-free methods."""
        return None

    def optimizer(self, module: nn.Module, fused: bool = False) -> torch.optim.Optimizer | None:
        return None

    def prepare(self, model: nn.Module, stats: dict | None) -> None:
        """Called once on a fresh model before training (e.g. Sampling-Free's bias init)."""

    def soft_targets(self, rec: SampleRecord) -> Tensor | None:
        """Soft target in [0, 1] for each positive's GT class ``[P]``, or None for hard labels."""
        return None

    def weights(self, rec: SampleRecord, cls_elem: Tensor, reg: Tensor) -> Weights:
        return Weights()

    def reduce(self, rec: SampleRecord, cls_per_sample: Tensor, reg_elem: Tensor):
        """Return ``(cls_loss, reg_loss, extra: dict)`` to replace the normalized sums, or None.

        ``cls_per_sample [N]`` (0 on ignored samples); ``reg_elem [P, k]`` per coordinate."""
        return None

    def finalize(self, losses: dict[str, Tensor], rec: SampleRecord) -> dict[str, Tensor]:
        return losses

    def diagnostics(self) -> dict[str, Tensor]:
        """Device tensors to log (averaged over the logging interval), e.g. SWN's mean weights."""
        return {}

    # Non-module state that must survive --resume (e.g. IoU-balanced's w_loc, GHM's EMA).
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
