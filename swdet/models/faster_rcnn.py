"""Faster R-CNN with FPN (Ren et al. 2015; Lin et al., "Feature Pyramid Networks", 2017).

The module is the deployable detector alone: input normalization, backbone, FPN, the region
proposal network (RPN) head and the box head. Nothing training-only is a submodule of it.

Stages:

1. ``forward(images)`` runs the dense part (backbone, FPN ``P_min..P_max``, RPN head) and returns
   its raw outputs, as RetinaNet does: ``{"rpn_logits": [per level [B, H·W·A, 1]],
   "rpn_deltas": [per level [B, H·W·A, 4]], "features": [P_min..P5], "image_size": S}``. This
   static-shape part is what ONNX export traces and what CUDA graphs capture.
2. Proposals (:meth:`FasterRCNN.propose`): per level the ``pre`` best anchors by objectness
   logit, decoded with the unit-weight :class:`~swdet.boxes.BoxCoder`, clipped to the canvas,
   boxes thinner than ``MIN_SIZE`` dropped, NMS at ``rpn_nms_iou`` within each level, then the
   ``post`` best of the image over all levels: ``proposals [B, R, 4]`` and ``valid [B, R]``
   (fixed R = min(post, Σ pre); rows past the survivors are padding).
3. The box head (:meth:`FasterRCNN.box_forward`): multi-level RoIAlign (FPN Eq. 1:
   ``k = floor(k0 + log2(sqrt(wh)/224))``, k0 = 4, clamped to the RoI levels P_min..P5) with
   ``aligned=True`` and a fixed ``sampling_ratio`` (the ONNX ``RoiAlign`` with
   ``coordinate_transformation_mode="half_pixel"`` computes the same), two fully connected
   layers, then ``C + 1`` class logits (background last) and class-specific deltas ``[C, 4]``
   (box coder weights ``(10, 10, 5, 5)``).
4. Detections (:meth:`FasterRCNN.postprocess`, :func:`detections_from_rois`): softmax, the
   ``pre_nms_topk`` best (proposal, class) pairs, class-specific decoding and clipping, then the
   RetinaNet tail (:func:`~swdet.models.postprocess.nms_and_pad`: score threshold, class-aware
   NMS, ``max_det`` best in the EfficientNMS layout).

Besides the proposal counts, training and inference differ in one place only, the proposal NMS.
At inference it is the exact greedy NMS (torchvision, per image and level), matching ONNX
``NonMaxSuppression``. In training the step must not wait for the host, and greedy NMS returns
data-dependent sizes, so it is computed on fixed-size tensors as the fixed point of
``keep_j = not ∃ i < j: keep_i and IoU_ij > t`` (candidates sorted by score; Cluster-NMS, Zheng
et al. 2020) iterated ``model.rpn_nms_iters_train`` times from "keep everything". The greedy
result is the unique fixed point and is reached once the iterations exceed the longest
suppression chain; the even iterates never drop a box greedy NMS keeps (they approach it from
above), so an unconverged result is a superset: a few extra near-duplicate proposals, never a
lost one.

RoIAlign over several levels is written without data-dependent indexing on CUDA: every RoI is
pooled from every RoI level and the level of Eq. 1 is selected with a 0/1 mask (``Σ_l mask_l ·
RoIAlign_l``). It costs ``L`` RoIAligns instead of one (a few percent of the box head's fully
connected layers) and needs no host synchronization; the ONNX graph does the same. On the CPU,
where a synchronization costs nothing, each RoI is pooled from its own level only (same values),
and in training as a weighted gather (:func:`roi_align_gather`) whose backward is a sparse product:
torchvision's single-threaded CPU RoIAlign backward was 40 % of the training step.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms, roi_align

from swdet.boxes import BoxCoder, batched_box_iou, clip_boxes
from swdet.models.anchors import generate_anchors, num_anchors_per_cell
from swdet.models.backbone import build_backbone
from swdet.models.postprocess import nms_and_pad
from swdet.models.retinanet import Normalize, prior_bias

RPN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
ROI_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
MIN_SIZE = 1e-3  # proposals thinner than this (pixels) are dropped (torchvision's remove_small_boxes)
CANONICAL_SIZE = 224.0  # FPN Eq. 1: a 224x224 RoI maps to level k0
CANONICAL_LEVEL = 4
LEVEL_EPS = 1e-6
LN2 = math.log(2.0)
MAX_ROI_LEVEL = 5  # RoIs are pooled from P_min..P5; P6 and above feed the RPN only


def roi_levels(cfg) -> list[int]:
    """FPN levels the box head pools from: ``min_level .. min(max_level, 5)``."""
    return list(range(cfg.min_level, min(cfg.max_level, MAX_ROI_LEVEL) + 1))


def map_roi_levels(rois: Tensor, min_level: int, max_level: int) -> Tensor:
    """FPN Eq. 1, ``k = clamp(floor(k0 + log2(sqrt(w·h)/224) + ε), min, max)`` as float32 in the
    op order the ONNX graph repeats: ``sqrt(area) / 224 + ε``, ``log(·) / ln 2``, ``+ k0``, floor.
    ``rois [..., 4]`` -> ``[...]`` (float32 level numbers)."""
    area = (rois[..., 2] - rois[..., 0]) * (rois[..., 3] - rois[..., 1])
    s = torch.sqrt(area) / CANONICAL_SIZE + LEVEL_EPS
    k = torch.floor(torch.log(s) / LN2 + CANONICAL_LEVEL)
    return k.clamp(min_level, max_level)


def multilevel_roi_align(features: list[Tensor], levels: list[int], rois: Tensor, output_size: int,
                         sampling_ratio: int, masked: bool | None = None, gather: bool | None = None) -> Tensor:
    """RoIAlign of ``rois [B, R, 4]`` (input pixels) from the level each maps to (Eq. 1) ->
    ``[B·R, C, S, S]`` (float32), as ``Σ_l mask_l · RoIAlign(P_l)`` (module docstring).
    ``masked``: that sum (default on CUDA) or per-level indexing (default elsewhere); same values.
    ``gather``: :func:`roi_align_gather` instead of torchvision's op for the per-level form (default:
    when gradients flow on the CPU, i.e. CPU training; same values to float32 rounding)."""
    b, r, _ = rois.shape
    flat = rois.reshape(b * r, 4).float()
    batch_idx = torch.arange(b, device=rois.device, dtype=flat.dtype).repeat_interleave(r)
    boxes = torch.cat([batch_idx[:, None], flat], dim=1)
    target = map_roi_levels(flat, levels[0], levels[-1])
    if masked is None:
        masked = rois.device.type == "cuda"
    if gather is None:
        gather = (rois.device.type == "cpu" and torch.is_grad_enabled() and any(f.requires_grad for f in features))
    if not masked and gather:
        # CPU training: torchvision's CPU RoIAlign backward is single-threaded (40 % of the
        # Faster R-CNN step); the gather form has the same values (benchmarks/roi_align_speed.py).
        return roi_align_gather(features, levels, rois, target, output_size, sampling_ratio)
    if not masked:
        # CPU: no device to wait for, so pool each RoI from its own level only (same values:
        # the masked sum below adds exact zeros).
        pooled = None
        for feat, level in zip(features, levels):
            idx = (target == level).nonzero().squeeze(1)
            out = roi_align(feat.float(), boxes[idx], output_size, spatial_scale=1.0 / 2 ** level,
                            sampling_ratio=sampling_ratio, aligned=True)
            if pooled is None:
                pooled = out.new_zeros((b * r, *out.shape[1:]))
            pooled = pooled.index_copy(0, idx, out)
        return pooled
    pooled = None
    for feat, level in zip(features, levels):
        out = roi_align(feat.float(), boxes, output_size, spatial_scale=1.0 / 2 ** level,
                        sampling_ratio=sampling_ratio, aligned=True)
        out = out * (target == level).to(out.dtype)[:, None, None, None]
        pooled = out if pooled is None else pooled + out
    return pooled


class _WeightedGather(torch.autograd.Function):
    """``out[m] = Σ_k w[m, k] · table[idx[m, k]]`` (``embedding_bag`` with per-sample weights);
    the backward, ``grad_table = Aᵀ · grad_out`` with ``A[m, idx[m, k]] = w[m, k]``, is one sparse
    product instead of ``embedding_bag``'s sort-based dense backward (3x faster on the CPU)."""

    @staticmethod
    def forward(ctx, table: Tensor, idx: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(idx, weight)
        ctx.rows = table.shape[0]
        with torch.autocast(table.device.type, enabled=False):
            return F.embedding_bag(idx, table, per_sample_weights=weight, mode="sum")

    @staticmethod
    def backward(ctx, grad: Tensor):
        idx, weight = ctx.saved_tensors
        m, k = idx.shape
        cols = torch.arange(m, device=idx.device).repeat_interleave(k)
        a_t = torch.sparse_coo_tensor(torch.stack([idx.reshape(-1), cols]), weight.reshape(-1), (ctx.rows, m),
                                      check_invariants=False)  # indices are in range by construction
        return torch.sparse.mm(a_t, grad.float().contiguous()), None, None


def _bilinear_axis(v: Tensor, size: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """torchvision's RoIAlign bilinear rule along one axis for sample coordinates ``v [N, P]`` on
    maps of ``size [N]`` cells: a sample outside ``[-1, size]`` contributes 0; inside, ``v`` is
    clamped at 0 and at the last cell, ``lo = floor(v)``, ``hi = lo + 1`` (``lo`` at the last cell),
    weights ``(1 - (v - lo), v - lo)``. Returns ``(lo, hi, w_lo, w_hi, valid)``."""
    n = size[:, None].to(v.dtype)
    valid = (v >= -1.0) & (v <= n)
    v = v.clamp(min=0.0)
    lo = v.floor()
    top = lo >= n - 1
    lo = torch.where(top, n - 1, lo)
    v = torch.where(top, lo, v)
    hi = torch.where(top, lo, lo + 1)
    frac = v - lo
    return lo.long(), hi.long(), 1.0 - frac, frac, valid


def roi_align_gather(features: list[Tensor], levels: list[int], rois: Tensor, target: Tensor, output_size: int,
                     sampling_ratio: int) -> Tensor:
    """Multi-level RoIAlign (``aligned=True``, fixed ``sampling_ratio``) as a weighted gather:
    ``rois [B, R, 4]`` pooled from ``features[l]`` where ``target [B·R]`` (FPN Eq. 1) is ``levels[l]``
    -> ``[B·R, C, S, S]`` (float32).

    A RoI at level ``l`` with corners ``(x1, y1, x2, y2)·2^-l - 0.5`` has bins of
    ``(x2 - x1)/S x (y2 - y1)/S``; bin ``(i, j)`` averages ``s x s`` bilinear samples at
    ``y = y1 + (i + (a + 0.5)/s)·(y2 - y1)/S`` (likewise ``x``), ``a = 0..s-1``: ``Σ`` over 4·s²
    feature cells of ``w_y · w_x / s²`` (:func:`_bilinear_axis`), one ``embedding_bag`` row per bin
    over the levels' channels-last maps concatenated into one table. Same values as torchvision's
    ``roi_align`` to float32 rounding; used for CPU training, where its backward is 2.7x faster."""
    b, r, _ = rois.shape
    s, g = output_size, sampling_ratio
    flat = rois.reshape(b * r, 4).float()
    tables, bases, heights, widths = [], [], [], []
    base = 0
    for feat in features:
        _, c, h, w = feat.shape
        tables.append(feat.float().permute(0, 2, 3, 1).reshape(-1, c))
        bases.append(base)
        heights.append(h)
        widths.append(w)
        base += b * h * w
    table = torch.cat(tables, 0)
    dev = flat.device
    li = target.long() - levels[0]
    h = torch.tensor(heights, device=dev)[li]
    w = torch.tensor(widths, device=dev)[li]
    scale = torch.tensor([2.0 ** -lv for lv in levels], device=dev)[li]
    image = torch.arange(b, device=dev).repeat_interleave(r)
    offset = torch.tensor(bases, device=dev)[li] + image * h * w
    box = flat * scale[:, None] - 0.5
    step = torch.arange(s * g, device=dev, dtype=torch.float32)
    frac = (step // g) + (step % g + 0.5) / g  # bin index + sample position inside the bin, in bins
    ys = box[:, 1, None] + frac * ((box[:, 3] - box[:, 1]) / s)[:, None]
    xs = box[:, 0, None] + frac * ((box[:, 2] - box[:, 0]) / s)[:, None]
    ylo, yhi, wyl, wyh, vy = _bilinear_axis(ys, h)
    xlo, xhi, wxl, wxh, vx = _bilinear_axis(xs, w)
    rows = torch.stack([ylo, ylo, yhi, yhi], -1)[:, :, None, :]  # [N, sy, 1, 4]
    cols = torch.stack([xlo, xhi, xlo, xhi], -1)[:, None, :, :]  # [N, 1, sx, 4]
    wy = torch.stack([wyl, wyl, wyh, wyh], -1)[:, :, None, :]
    wx = torch.stack([wxl, wxh, wxl, wxh], -1)[:, None, :, :]
    valid = (vy[:, :, None] & vx[:, None, :])[..., None]
    idx = offset[:, None, None, None] + rows * w[:, None, None, None] + cols
    weight = wy * wx * valid / (g * g)
    n = idx.shape[0]
    # [N, S·g, S·g, 4] -> one row per output bin: [N·S·S, g·g·4]
    idx = idx.view(n, s, g, s, g, 4).permute(0, 1, 3, 2, 4, 5).reshape(n * s * s, g * g * 4)
    weight = weight.view(n, s, g, s, g, 4).permute(0, 1, 3, 2, 4, 5).reshape(n * s * s, g * g * 4)
    out = _WeightedGather.apply(table, idx, weight)
    return out.view(n, s, s, -1).permute(0, 3, 1, 2)


def cluster_nms_keep(boxes: Tensor, valid: Tensor, iou_threshold: float, iters: int) -> Tensor:
    """Fixed-size greedy NMS by fixed-point iteration (module docstring).

    ``boxes [B, K, 4]`` sorted by descending score within each row, ``valid [B, K]`` ->
    ``keep [B, K]``. ``iters`` is rounded up to an even number (the even iterates are supersets
    of the greedy result, equal to it once converged). No host synchronization.
    """
    iou = batched_box_iou(boxes, boxes)
    k = boxes.shape[1]
    upper = torch.ones(k, k, dtype=torch.bool, device=boxes.device).triu(1)  # i < j
    s = ((iou > iou_threshold) & upper & valid[:, :, None]).to(boxes.dtype)  # s[b, i, j]: i may suppress j
    keep = valid.clone()
    for _ in range(iters + iters % 2):
        suppressed = torch.einsum("bi,bij->bj", keep.to(boxes.dtype), s) > 0
        keep = valid & ~suppressed
    return keep


def decode_level_candidates(logits: list[Tensor], deltas: list[Tensor], anchors: list[Tensor], pre_nms_topk: int,
                            imgsz: int, box_coder: BoxCoder) -> tuple[Tensor, Tensor, Tensor, list[int]]:
    """Per level the ``pre_nms_topk`` best anchors by objectness logit, decoded and clipped:
    ``(boxes [B, N, 4], scores [B, N] (logits), valid [B, N], per-level counts)``."""
    all_boxes, all_scores, counts = [], [], []
    for lg, d, anc in zip(logits, deltas, anchors):
        b, n = lg.shape[:2]
        scores = lg.reshape(b, n).float()
        k = min(pre_nms_topk, n)
        top, idx = scores.topk(k, dim=1)
        dl = torch.gather(d.float(), 1, idx[..., None].expand(b, k, 4))
        all_boxes.append(clip_boxes(box_coder.decode(anc[idx], dl), imgsz, imgsz))
        all_scores.append(top)
        counts.append(k)
    boxes = torch.cat(all_boxes, 1)
    scores = torch.cat(all_scores, 1)
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes, scores, (w >= MIN_SIZE) & (h >= MIN_SIZE), counts


def select_proposals(boxes: Tensor, scores: Tensor, keep: Tensor, post_nms_topk: int) -> tuple[Tensor, Tensor]:
    """The ``post_nms_topk`` best kept candidates of each image (all levels): ``(proposals [B, R, 4],
    valid [B, R])`` with R = min(post_nms_topk, N); padding rows are zero boxes."""
    b, n = scores.shape
    r = min(post_nms_topk, n)
    masked = torch.where(keep, scores, torch.full_like(scores, -math.inf))
    top, order = masked.topk(r, dim=1)
    valid = top > -math.inf
    props = torch.gather(boxes, 1, order[..., None].expand(b, r, 4)) * valid[..., None]
    return props, valid


def detections_from_rois(cls_logits: Tensor, box_deltas: Tensor, proposals: Tensor, valid: Tensor, *,
                         imgsz: int, score_threshold: float, nms_iou: float, pre_nms_topk: int,
                         max_det: int) -> dict[str, Tensor]:
    """Second-stage post-processing (the ONNX graph repeats it op by op).

    ``cls_logits [B, R, C+1]`` (background last), ``box_deltas [B, R, C, 4]``, ``proposals
    [B, R, 4]``, ``valid [B, R]``: ``p = softmax(logits)[:, :, :C] · valid``; the
    ``k = min(pre_nms_topk, R·C)`` best (proposal, class) pairs; each decoded from its proposal
    with its class's deltas (weights (10, 10, 5, 5)) and clipped; then score > θ, class-aware NMS
    and the ``max_det`` best (:func:`~swdet.models.postprocess.nms_and_pad`).
    """
    b, r, c1 = cls_logits.shape
    c = c1 - 1
    probs = torch.softmax(cls_logits.float(), dim=-1)[..., :c] * valid[..., None].float()
    flat = probs.reshape(b, r * c)
    k = min(pre_nms_topk, r * c)
    top, idx = flat.topk(k, dim=1)
    prop_idx = torch.div(idx, c, rounding_mode="floor")
    classes = idx - prop_idx * c
    d = torch.gather(box_deltas.float().reshape(b, r * c, 4), 1, idx[..., None].expand(b, k, 4))
    props = torch.gather(proposals.float(), 1, prop_idx[..., None].expand(b, k, 4))
    boxes = clip_boxes(BoxCoder(ROI_BOX_WEIGHTS).decode(props, d), imgsz, imgsz)
    return nms_and_pad(boxes, top, classes, score_threshold=score_threshold, nms_iou=nms_iou, max_det=max_det)


# ----------------------------------------------------------------------------------------------
# Modules


class RCNNFPN(nn.Module):
    """FPN for Faster R-CNN (Lin et al. 2017): ``P_l = conv3x3(lateral(C_l) + upsample(P_{l+1}))``
    for l = min_level..5 from C2..C5; levels above 5 by max pooling (kernel 1, stride 2) of the
    level below, as in the FPN paper's RPN (not RetinaNet's strided convolutions)."""

    def __init__(self, in_channels: list[int], out_channels: int, min_level: int = 2, max_level: int = 6):
        super().__init__()
        self.min_level, self.max_level = min_level, max_level
        used = in_channels[min_level - 2:]  # C_min..C5
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in used)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in used)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        """``feats = [C2, C3, C4, C5]`` -> ``[P_min, ..., P_max]``."""
        feats = feats[self.min_level - 2:]
        laterals = [lat(f) for lat, f in zip(self.lateral, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            # imgsz is a multiple of 32: each level is exactly twice the next (a constant scale keeps
            # Shape ops out of the exported network, as in swdet.models.fpn)
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], scale_factor=2.0, mode="nearest")
        outs = [conv(x) for conv, x in zip(self.output, laterals)]
        for _ in range(MAX_ROI_LEVEL + 1, self.max_level + 1):
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return outs[: self.max_level - self.min_level + 1]


class RPNHead(nn.Module):
    """A shared 3x3 conv + ReLU, then per anchor one objectness logit and 4 deltas (1x1 convs).

    Outputs per level ``logits [B, H·W·A, 1]`` and ``deltas [B, H·W·A, 4]`` in the anchor order of
    :func:`swdet.models.anchors.generate_anchors`. Objectness is a sigmoid over one class; the
    bias starts at 0 (``set_prior`` sets Sampling-Free's optimal bias, Eq. 10).
    """

    num_classes = 1

    def __init__(self, channels: int, num_anchors: int):
        super().__init__()
        self.num_anchors = num_anchors
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(channels, num_anchors * 4, 1)
        for m in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)

    @torch.no_grad()
    def set_prior(self, prior_prob: float) -> None:
        """Objectness bias ``-log((1 - π)/π)`` so every sigmoid starts at ``π`` (:func:`prior_bias`)."""
        self.cls_logits.bias.fill_(prior_bias(prior_prob))

    def _flatten(self, x: Tensor, k: int) -> Tensor:
        b, _, h, w = x.shape
        return x.permute(0, 2, 3, 1).reshape(b, h * w * self.num_anchors, k)  # = view(b, A, k, h, w), (h, w, A) order

    def forward(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = [], []
        for f in feats:
            t = F.relu(self.conv(f))
            logits.append(self._flatten(self.cls_logits(t), 1))
            deltas.append(self._flatten(self.bbox_pred(t), 4))
        return logits, deltas


class BoxHead(nn.Module):
    """Two fully connected layers (``dim`` wide, ReLU) on the flattened RoI features, then the
    class logits ``[N, C+1]`` (background last) and class-specific deltas ``[N, C·4]``."""

    def __init__(self, in_features: int, dim: int, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.fc1 = nn.Linear(in_features, dim)
        self.fc2 = nn.Linear(dim, dim)
        self.cls_score = nn.Linear(dim, num_classes + 1)
        self.bbox_pred = nn.Linear(dim, num_classes * 4)
        for m in (self.fc1, self.fc2):
            nn.init.kaiming_uniform_(m.weight, a=1)
            nn.init.zeros_(m.bias)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        x = F.relu(self.fc1(pooled.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.cls_score(x), self.bbox_pred(x)


class FasterRCNN(nn.Module):
    """Normalization + backbone + FPN + RPN head + box head (module docstring).

    ``forward(images [B, 3, S, S], RGB 0-255)`` returns the dense outputs; in training mode also
    ``proposals [B, R, 4]`` and ``proposal_valid [B, R]`` (fixed-size NMS, no host sync) and
    ``box_head``: the second stage bound to this batch's features, ``rois [B, M, 4] ->
    (cls_logits [B, M, C+1], box_deltas [B, M, C, 4])``, so the training loss can run it on the
    RoIs it samples with the ground truth (which the network never sees).
    """

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.normalize = Normalize()
        self.backbone = build_backbone(cfg)
        c2 = self.backbone.out_channels[0] // 2  # layer1 width: tiny w, ResNet-18/34 64, ResNet-50 256
        self.fpn = RCNNFPN([c2, *self.backbone.out_channels], cfg.fpn_channels, cfg.min_level, cfg.max_level)
        self.rpn_head = RPNHead(cfg.fpn_channels, num_anchors_per_cell(cfg))
        self.box_head = BoxHead(cfg.fpn_channels * cfg.roi_size ** 2, cfg.box_head_dim, cfg.num_classes)
        self.roi_levels = roi_levels(cfg)
        self.rpn_coder = BoxCoder(RPN_BOX_WEIGHTS)
        self._anchors: dict = {}

    # -- stage 1 --------------------------------------------------------------------------------
    def backbone_features(self, x: Tensor) -> list[Tensor]:
        """``[C2, C3, C4, C5]`` (both backbones expose ``stem`` and ``layer1..4``)."""
        bb = self.backbone
        c2 = bb.layer1(bb.stem(x))
        c3 = bb.layer2(c2)
        c4 = bb.layer3(c3)
        return [c2, c3, c4, bb.layer4(c4)]

    def anchors(self, imgsz: int, device) -> list[Tensor]:
        key = (int(imgsz), str(device))
        if key not in self._anchors:
            self._anchors[key] = generate_anchors(self.cfg, imgsz, device=device)
        return self._anchors[key]

    def forward(self, images: Tensor) -> dict:
        feats = self.fpn(self.backbone_features(self.normalize(images)))
        logits, deltas = self.rpn_head(feats)
        out = {"rpn_logits": logits, "rpn_deltas": deltas, "features": feats[: len(self.roi_levels)],
               "image_size": int(images.shape[-1])}
        if self.training:
            with torch.no_grad():
                out["proposals"], out["proposal_valid"] = self.propose(out, training=True)
            out["box_head"] = partial(self.box_forward, out["features"])
        return out

    # -- proposals ------------------------------------------------------------------------------
    @torch.no_grad()
    def propose(self, outputs: dict, training: bool = False) -> tuple[Tensor, Tensor]:
        """Proposals from the RPN outputs: ``(proposals [B, R, 4], valid [B, R])`` (module
        docstring, stage 2). ``training`` selects the train top-n and the fixed-size NMS."""
        cfg = self.cfg
        imgsz = int(outputs["image_size"])
        logits, deltas = outputs["rpn_logits"], outputs["rpn_deltas"]
        pre = cfg.rpn_pre_nms_topk_train if training else cfg.rpn_pre_nms_topk
        post = cfg.rpn_post_nms_topk_train if training else cfg.rpn_post_nms_topk
        dev = logits[0].device
        with torch.autocast(dev.type, enabled=False):
            boxes, scores, valid, counts = decode_level_candidates(logits, deltas, self.anchors(imgsz, dev), pre,
                                                                   imgsz, self.rpn_coder)
            if training:
                keep = torch.cat([cluster_nms_keep(bx, vd, cfg.rpn_nms_iou, cfg.rpn_nms_iters_train) for bx, vd in
                                  zip(boxes.split(counts, 1), valid.split(counts, 1))], dim=1)
            else:
                keep = exact_level_nms(boxes, scores, valid, counts, cfg.rpn_nms_iou)
            return select_proposals(boxes, scores, keep, post)

    # -- stage 2 --------------------------------------------------------------------------------
    def box_forward(self, features: list[Tensor], rois: Tensor) -> tuple[Tensor, Tensor]:
        """``rois [B, M, 4]`` -> ``(cls_logits [B, M, C+1], box_deltas [B, M, C, 4])``."""
        b, m, _ = rois.shape
        pooled = multilevel_roi_align(features, self.roi_levels, rois, self.cfg.roi_size, self.cfg.roi_sampling_ratio)
        cls, box = self.box_head(pooled)
        return cls.reshape(b, m, -1), box.reshape(b, m, -1, 4)

    def postprocess(self, outputs: dict, post_cfg, score_threshold: float | None = None) -> dict[str, Tensor]:
        """Detections in the EfficientNMS layout (what the ONNX graph computes)."""
        thr = post_cfg.score_threshold if score_threshold is None else score_threshold
        proposals, valid = self.propose(outputs, training=False)
        cls, box = self.box_forward(outputs["features"], proposals)
        return detections_from_rois(cls, box, proposals, valid, imgsz=int(outputs["image_size"]),
                                    score_threshold=thr, nms_iou=post_cfg.nms_iou,
                                    pre_nms_topk=post_cfg.pre_nms_topk, max_det=post_cfg.max_det)


def exact_level_nms(boxes: Tensor, scores: Tensor, valid: Tensor, counts: list[int], iou_threshold: float) -> Tensor:
    """Greedy NMS within each (image, level) group (torchvision ``nms``: suppress IoU > t), on the
    exact coordinates (no batched-NMS coordinate offsets): ``keep [B, N]``. Inference only (it
    synchronizes with the host)."""
    keep = torch.zeros_like(valid)
    start = 0
    for k in counts:
        for b in range(boxes.shape[0]):
            idx = valid[b, start:start + k].nonzero().squeeze(1) + start
            if idx.numel():
                kept = idx[nms(boxes[b, idx], scores[b, idx], iou_threshold)]
                keep[b, kept] = True
        start += k
    return keep
