"""RetinaNet (Lin et al., "Focal Loss for Dense Object Detection", 2017).

The module is the deployable detector alone: input normalization, backbone, FPN and the two
heads. ``forward`` returns the raw per-level head outputs; anchors, decoding and
post-processing live in :mod:`swdet.models.anchors` and :mod:`swdet.models.postprocess` so
export reuses them. Nothing training-only is a submodule of it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from swdet.models.anchors import num_anchors_per_cell
from swdet.models.backbone import build_backbone
from swdet.models.fpn import FPN

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def prior_bias(prior):
    """Bias of a sigmoid classifier whose every output starts at probability ``π`` (focal loss
    Sec. 4.1 "Initialization"; Sampling-Free Eq. 10 with its optimal ``π``):

    ``b = -log((1 - π) / π) = log π - log(1 - π)``

    The one place this is computed: the heads' ``set_prior`` and
    :func:`swdet.train.weighting.optimal_bias` call it. ``prior`` is a number in (0, 1) (returns
    a float) or a tensor (returns a tensor, no host synchronization).
    """
    if isinstance(prior, Tensor):
        return torch.log(prior) - torch.log1p(-prior)
    return math.log(prior) - math.log1p(-prior)


class Normalize(nn.Module):
    """``(x - 255·mean) / (255·std)`` on 0-255 RGB input (uint8 input is cast to float)."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).mul(255).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("inv_std", 1.0 / torch.tensor(std).mul(255).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if not x.is_floating_point():
            x = x.float()
        return (x - self.mean) * self.inv_std


class LevelBNSubnet(nn.Module):
    """``convs`` x (3x3 conv shared across levels -> BatchNorm of *that* level -> ReLU)
    (``model.head_norm: bn``; per-level statistics as in NAS-FPN's and EfficientDet's heads, since
    the levels' feature statistics differ). In eval mode each BatchNorm is the affine map
    ``y = γ (x - μ) / sqrt(σ² + ε) + β`` with its running statistics, which the ONNX exporter folds
    into the level's convolution: the deployed head is convolutions and ReLUs only."""

    def __init__(self, channels: int, convs: int, levels: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(convs))
        self.norms = nn.ModuleList(nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(levels))
                                   for _ in range(convs))

    def forward(self, x: Tensor, level: int) -> Tensor:
        for conv, norms in zip(self.convs, self.norms):
            x = F.relu(norms[level](conv(x)))
        return x


def _subnet(channels: int, convs: int, norm: str, levels: int = 1) -> nn.Module:
    if norm == "bn":
        return LevelBNSubnet(channels, convs, levels)
    layers: list[nn.Module] = []
    for _ in range(convs):
        layers.append(nn.Conv2d(channels, channels, 3, padding=1))
        if norm == "gn":
            layers.append(nn.GroupNorm(min(32, channels // 4), channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class RetinaNetHead(nn.Module):
    """Classification and box subnets shared across levels.

    Per level: ``cls [B, H·W·A, C]`` logits and ``box [B, H·W·A, 4]`` deltas, flattened in the
    anchor order of :func:`swdet.models.anchors.generate_anchors`. The last classification bias
    starts at ``-log((1 - π)/π)`` (focal-loss prior; Sampling-Free replaces π before training).
    """

    def __init__(self, in_channels: int, channels: int, convs: int, num_anchors: int, num_classes: int,
                 norm: str = "none", prior_prob: float = 0.01, levels: int = 1):
        super().__init__()
        self.num_anchors, self.num_classes = num_anchors, num_classes
        self.input_proj = nn.Identity() if in_channels == channels else nn.Conv2d(in_channels, channels, 1)
        self.cls_subnet = _subnet(channels, convs, norm, levels)
        self.box_subnet = _subnet(channels, convs, norm, levels)
        self.cls_logits = nn.Conv2d(channels, num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.set_prior(prior_prob)

    @property
    def per_level(self) -> bool:
        """The towers take the level index (one BatchNorm per level: ``head_norm: bn``)."""
        return isinstance(self.cls_subnet, LevelBNSubnet)

    @torch.no_grad()
    def set_prior(self, prior_prob: float) -> None:
        """Set the classification bias so every sigmoid starts at ``prior_prob``:
        ``b = -log((1 - π)/π)`` (:func:`prior_bias`; Eq. 10 of Sampling-Free, the focal-loss π)."""
        self.cls_logits.bias.fill_(prior_bias(prior_prob))

    def _flatten(self, x: Tensor, k: int) -> Tensor:
        """``[B, A*K, H, W] -> [B, H*W*A, K]`` (channel ``a*K + k``; anchors in (h, w, a) order):
        one channels-last permute, which ONNX Runtime cancels against the NHWC layout of its int8
        convolutions (a 5-D permute of ``[B, A, K, H, W]`` computes the same and cannot cancel)."""
        b, _, h, w = x.shape
        return x.permute(0, 2, 3, 1).reshape(b, h * w * self.num_anchors, k)

    def forward(self, feats: list[Tensor]) -> dict[str, list[Tensor]]:
        cls, box = [], []
        for level, f in enumerate(feats):
            f = self.input_proj(f)
            c, b = (self.cls_subnet(f, level), self.box_subnet(f, level)) if self.per_level else \
                (self.cls_subnet(f), self.box_subnet(f))
            cls.append(self._flatten(self.cls_logits(c), self.num_classes))
            box.append(self._flatten(self.bbox_pred(b), 4))
        return {"cls_logits": cls, "bbox_deltas": box}


class RetinaNet(nn.Module):
    """Normalization + backbone + FPN + head. ``forward(images [B, 3, S, S], RGB 0-255)`` returns
    ``{"cls_logits": [per level [B, HWA, C]], "bbox_deltas": [per level [B, HWA, 4]]}``."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.normalize = Normalize()
        self.backbone = build_backbone(cfg)
        self.fpn = FPN(self.backbone.out_channels, cfg.fpn_channels, cfg.min_level, cfg.max_level)
        self.head = RetinaNetHead(cfg.fpn_channels, cfg.head_channels, cfg.head_convs,
                                  num_anchors_per_cell(cfg), cfg.num_classes, cfg.head_norm, cfg.prior_prob,
                                  levels=cfg.max_level - cfg.min_level + 1)

    def forward(self, images: Tensor) -> dict[str, list[Tensor]]:
        return self.head(self.fpn(self.backbone(self.normalize(images))))
