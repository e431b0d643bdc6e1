"""Detectors. ``build_model(model_cfg)`` returns the deployable ``nn.Module`` (raw head outputs);
:class:`Predictor` adds anchors, decoding and post-processing for torch inference."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from swdet.boxes import BoxCoder
from swdet.models.anchors import generate_anchors
from swdet.models.postprocess import retinanet_postprocess

RETINANET_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)


def build_model(cfg) -> nn.Module:
    """The detector for a :class:`swdet.config.ModelConfig` (its row's ``model`` in
    :data:`swdet.architectures.ARCHITECTURES`)."""
    from swdet.architectures import architecture, load

    return load(architecture(cfg.arch).model)(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Predictor:
    """Torch inference: ``predictor(images [B, 3, S, S] 0-255) -> {num_dets, det_boxes, det_scores,
    det_classes}`` (tensors, EfficientNMS layout, boxes in input pixels)."""

    def __init__(self, model: nn.Module, postprocess_cfg, device: torch.device | str | None = None):
        self.model = model.eval()
        self.cfg = model.cfg
        self.post = postprocess_cfg
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device)
        self.anchors = generate_anchors(self.cfg, device=self.device)
        self.box_coder = BoxCoder(RETINANET_BOX_WEIGHTS)

    def postprocess(self, outputs: dict, score_threshold: float | None = None) -> dict[str, Tensor]:
        if hasattr(self.model, "postprocess"):  # two-stage detectors carry their own
            return self.model.postprocess(outputs, self.post, score_threshold)
        thr = self.post.score_threshold if score_threshold is None else score_threshold
        return retinanet_postprocess(outputs, self.anchors, self.box_coder, imgsz=self.cfg.imgsz,
                                     score_threshold=thr, nms_iou=self.post.nms_iou,
                                     pre_nms_topk=self.post.pre_nms_topk, max_det=self.post.max_det)

    @torch.inference_mode()
    def __call__(self, images: Tensor, score_threshold: float | None = None) -> dict[str, Tensor]:
        outputs = self.model(images.to(self.device, non_blocking=True))
        return self.postprocess(outputs, score_threshold)
