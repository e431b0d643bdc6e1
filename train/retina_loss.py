"""RetinaNet's training loss: host-side anchor assignment + the general weighted loss.

A *detector loss* is what the engine needs from an architecture:

- ``assigner``: a picklable callable applied to each collated batch in the loader workers,
  ``(images, targets) -> (images, targets, assignment)`` (assignment must have ``.to(device)``);
- ``__call__(outputs, assignment, iteration) -> (total, parts)`` on the device;
- ``diagnostics`` (:class:`~swdet.train.diagnostics.Diagnostics`), ``state_dict`` /
  ``load_state_dict`` for state that must survive ``--resume``, and ``stats_assigner`` (the
  matcher the Sampling-Free statistics pass uses).
"""

from __future__ import annotations

import torch

from swdet.boxes import BoxCoder
from swdet.models import RETINANET_BOX_WEIGHTS
from swdet.models.anchors import generate_anchors
from swdet.train.assign import TargetAssigner
from swdet.train.criterion import ClassificationLoss, RegressionLoss, WeightedLoss, build_record
from swdet.train.diagnostics import Diagnostics


def classification_loss(cfg, kind: str) -> ClassificationLoss:
    return ClassificationLoss(kind, alpha=cfg.methods.focal.alpha, gamma=cfg.methods.focal.gamma,
                              bins=cfg.methods.ghm.bins, momentum=cfg.methods.ghm.momentum,
                              per_level=cfg.methods.ghm.per_level)


def anchor_levels(per_level: list[torch.Tensor], device) -> torch.Tensor:
    """``[A]`` the FPN level index (0 = finest) of each anchor of the concatenated anchor list."""
    return torch.cat([torch.full((len(a),), i, dtype=torch.int64) for i, a in enumerate(per_level)]).to(device)


class RetinaNetLoss:
    def __init__(self, cfg, methods, device):
        self.device = device
        per_level = generate_anchors(cfg.model)
        anchors = torch.cat(per_level)
        self.anchor_levels, self.num_levels = anchor_levels(per_level, device), len(per_level)
        self.box_coder = BoxCoder(RETINANET_BOX_WEIGHTS)
        self.assigner = TargetAssigner(anchors, self.box_coder, rule=methods.assigner, fg_iou=cfg.loss.fg_iou,
                                       bg_iou=cfg.loss.bg_iou, allow_low_quality=cfg.loss.allow_low_quality,
                                       topn=cfg.methods.noisy_anchors.topn)
        self.stats_assigner = self.assigner
        self.anchors = anchors.to(device)
        self.cls_loss = classification_loss(cfg, methods.cls_loss)
        g = cfg.methods.ghm_r
        self.reg_loss = RegressionLoss(cfg.loss.reg_loss, beta=cfg.loss.smooth_l1_beta, mu=g.mu, bins=g.bins,
                                       momentum=g.momentum)
        self.criterion = WeightedLoss(self.cls_loss, methods.methods, reg_loss=self.reg_loss,
                                      reg_weight=cfg.loss.reg_weight)
        self.diagnostics = Diagnostics(device)

    def __call__(self, outputs, assign, iteration: int):
        logits = torch.cat(outputs["cls_logits"], 1)
        deltas = torch.cat(outputs["bbox_deltas"], 1)
        rec = build_record(logits, deltas, self.anchors, assign, self.box_coder, iteration,
                           anchor_levels=self.anchor_levels, num_levels=self.num_levels)
        total, parts = self.criterion(rec)
        self.diagnostics.update(rec)
        return total, parts

    def state_dict(self) -> dict:
        return {"cls_loss": self.cls_loss.state_dict(), "reg_loss": self.reg_loss.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.cls_loss.load_state_dict(state.get("cls_loss", {}))
        self.reg_loss.load_state_dict(state.get("reg_loss", {}))


def build_detector_loss(cfg, methods, device):
    """The detector loss for ``cfg.model.arch`` (its row's ``train_loss`` in
    :data:`swdet.architectures.ARCHITECTURES`)."""
    from swdet.architectures import architecture, load

    return load(architecture(cfg.model.arch).train_loss)(cfg, methods, device)
