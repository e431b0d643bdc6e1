"""Elementwise (unreduced) base losses of the training loss framework.

Classification losses take logits and targets ``[N, C]`` and return ``[N, C]``; box losses take
``[P, 4]`` pairs and return ``[P]`` (summed over the four coordinates). Nothing here reduces over
samples: the weighting methods (:mod:`swdet.train.weighting`) multiply the per-sample losses by
their weights and the trainer normalizes the sums. All functions are vectorized and
device-agnostic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from swdet.boxes import generalized_iou

__all__ = [
    "sigmoid_focal_loss",
    "binary_cross_entropy",
    "softmax_cross_entropy",
    "ghm_c_loss",
    "ghm_r_loss",
    "harmonizing_weights",
    "smooth_l1",
    "l1",
    "giou_loss",
]


def binary_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy with logits, elementwise:

    ``BCE(x, t) = -t · log σ(x) - (1 - t) · log(1 - σ(x)) = max(x, 0) - x·t + log(1 + e^{-|x|})``

    (the right-hand form is the numerically stable one). ``targets`` may be soft, in ``[0, 1]``.
    """
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")


def softmax_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Softmax cross-entropy over ``K = C + 1`` columns, the last one background (a two-stage RoI
    head), elementwise: ``CE[n, k] = -t[n, k] · log softmax(x[n])_k``.

    ``targets [N, K]`` give the foreground classes in columns ``0..C-1`` (one-hot, or a soft
    target); the background column is recomputed as ``t[n, C] = clamp(1 - Σ_{k<C} t[n, k], 0, 1)``,
    so a negative (all-zero row) is background. Summed over ``k`` this is the usual
    ``-log p_label``.

    Returns:
        ``[N, K]`` (the shape of ``logits``; zero where the target is zero).
    """
    t = targets.to(logits.dtype)
    bg = (1.0 - t[:, :-1].sum(1, keepdim=True)).clamp(0.0, 1.0)
    t = torch.cat([t[:, :-1], bg], dim=1)
    return -t * F.log_softmax(logits, dim=1)


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Sigmoid focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017), elementwise.

    For a hard target ``t ∈ {0, 1}`` with ``p = σ(x)``::

        FL = -α (1 - p)^γ log p              if t = 1
        FL = -(1 - α) p^γ log(1 - p)          if t = 0

    For a soft target ``t ∈ [0, 1]`` (cleanliness soft labels) this uses the standard
    generalization::

        FL(x, t) = α_t · |t - p|^γ · BCE(x, t),   α_t = α·t + (1 - α)·(1 - t)

    which equals the hard-label formula at ``t ∈ {0, 1}`` (``|1 - p| = 1 - p``, ``|0 - p| = p``).
    ``alpha < 0`` disables the α balancing (``α_t = 1``). ``gamma = 0`` gives (α-balanced) BCE.
    Defaults ``α = 0.25, γ = 2`` are the paper's.

    Returns:
        ``[N, C]`` (the shape of ``logits``).
    """
    targets = targets.to(logits.dtype)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    loss = ce * (targets - p).abs().pow(gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1.0 - alpha) * (1.0 - targets)) * loss
    return loss


def ghm_c_loss(
    logits: Tensor,
    targets: Tensor,
    valid: Tensor | None = None,
    bins: int = 30,
    momentum: float = 0.75,
    acc_sum: Tensor | None = None,
    levels: Tensor | None = None,
    num_levels: int = 1,
) -> tuple[Tensor, Tensor]:
    """GHM-C loss (Li, Liu, Wang, "Gradient Harmonized Single-stage Detector", AAAI 2019),
    elementwise, as the authors' mmdetection code computes it.

    The gradient norm of the sigmoid cross-entropy w.r.t. the logit is ``g = |p - t|`` (Eq. 3).
    ``[0, 1]`` is cut into ``M = bins`` equal unit regions; ``R_{l,j}`` counts the valid elements
    of FPN level ``l`` whose ``g`` falls in region ``j``. The levels are taken in order (the code
    calls the loss once per level), each updating one running average shared by all calls
    (Sec. "EMA"), started at zero and updated only on the regions the level populates::

        S_j ← μ · S_j + (1 - μ) · R_{l,j}     if R_{l,j} > 0        (μ = momentum; μ = 0: S_j = R_{l,j})

    With ``N_l`` valid elements and ``n_l`` non-empty regions in level ``l``, the harmonizing
    weight is ``β_i = N_l / (n_l · S_{ind(g_i)})`` (the paper's ``GD(g) = S · M`` with ``M``
    replaced by ``n_l``) and the level's loss is (Eq. 8) ``1/N_l · Σ_i β_i · BCE_i``; the loss is
    the sum over levels::

        L_GHM-C = Σ_l Σ_{i∈l} BCE_i / (n_l · S_{ind(g_i)})

    **Normalization**: the returned per-element loss is ``BCE_i / (n_l · S_{ind(g_i)})``: its sum
    *is* the GHM-C loss, so the caller divides the sum by 1 -- not by the number of positives.
    Invalid elements return 0. The weights carry no gradient. The levels loop runs over
    ``num_levels`` (a handful) on the device, with no host synchronization.

    Args:
        logits: ``[N, C]``.
        targets: ``[N, C]`` in ``[0, 1]``.
        valid: ``[N]`` bool (rows to use; ignored anchors False) or None (all rows).
        bins: number of unit regions ``M`` (30 in the authors' configs).
        momentum: EMA momentum ``μ`` (0.75 in the paper); 0 disables the EMA.
        acc_sum: ``[bins]`` running ``S`` from the previous call, or None (zeros) on the first call.
        levels: ``[N]`` FPN level of each row in ``[0, num_levels)``, or None (one histogram).
        num_levels: the number of levels.

    Returns:
        ``(loss [N, C], new_acc_sum [bins])``; keep ``new_acc_sum`` for the next call.
    """
    targets = targets.to(logits.dtype)
    with torch.no_grad():
        g = (torch.sigmoid(logits.detach()) - targets).abs()
        weights, acc = harmonizing_weights(g, valid, levels, num_levels, bins, momentum, acc_sum)
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * weights.to(logits.dtype)
    return loss, acc


def harmonizing_weights(g: Tensor, valid: Tensor | None, levels: Tensor | None, num_levels: int, bins: int,
                        momentum: float, acc_sum: Tensor | None) -> tuple[Tensor, Tensor]:
    """The gradient-density weights GHM-C and GHM-R share (Li et al., AAAI 2019, Eq. 8 and the
    authors' mmdetection code), for gradient norms ``g [N, ...]`` in ``[0, 1]``:

        β_i = 1 / (n_l · S_{ind(g_i)}),   S_j ← μ · S_j + (1 - μ) · R_{l,j}  if R_{l,j} > 0

    ``R_{l,j}``: the valid elements (rows where ``valid [N]``; None: all) of level ``l`` (rows'
    ``levels``; None: one level) whose ``g``
    falls in the ``j``-th of ``bins`` equal regions of ``[0, 1]`` (the last one open above);
    ``n_l``: the level's non-empty regions; levels taken in order, one running average shared by
    them, started at zero (``momentum = 0``: ``S_j = R_{l,j}``). Invalid rows get 0. The sum of
    ``β_i · loss_i`` is the loss: each level's ``1/N_l · Σ (N_l / (n_l S)) · loss_i`` summed over
    levels. Returns ``(β [N, ...], new running average [bins])``; no host synchronization."""
    device, rows = g.device, g.shape[0]
    valid_rows = (torch.ones(rows, dtype=torch.bool, device=device) if valid is None
                  else valid.to(device=device, dtype=torch.bool).reshape(rows))
    if levels is None:
        levels, num_levels = torch.zeros(rows, dtype=torch.int64, device=device), 1
    levels = levels.to(device=device, dtype=torch.int64).reshape(rows)
    trail = [1] * (g.dim() - 1)
    inner_edges = torch.arange(1, bins, device=device, dtype=g.dtype) / bins
    bin_idx = torch.bucketize(g, inner_edges, right=True).clamp_(0, bins - 1)  # region j: [j/M, (j+1)/M)
    cell = levels.reshape(rows, *trail) * bins + bin_idx  # (level, region)
    valid_f = valid_rows.reshape(rows, *trail).expand_as(g).to(torch.float32)
    counts = torch.zeros(num_levels * bins, device=device, dtype=torch.float32).index_add_(
        0, cell.reshape(-1), valid_f.reshape(-1)).reshape(num_levels, bins)
    acc = (torch.zeros(bins, device=device, dtype=torch.float32) if acc_sum is None
           else acc_sum.to(device=device, dtype=torch.float32))
    per_cell = []
    for lvl in range(num_levels):  # in order: each level's update feeds the next one's weights
        r = counts[lvl]
        hit = r > 0
        if momentum > 0:
            acc = torch.where(hit, momentum * acc + (1.0 - momentum) * r, acc)
            density = acc
        else:
            density = r
        n = hit.sum().clamp(min=1).to(torch.float32)
        per_cell.append(torch.where(hit, 1.0 / (n * density.clamp(min=1e-12)), torch.zeros_like(r)))
    weights = torch.stack(per_cell).reshape(-1)[cell] * valid_f
    return weights, acc.detach()


def ghm_r_loss(
    pred: Tensor,
    target: Tensor,
    mu: float = 0.02,
    bins: int = 10,
    momentum: float = 0.7,
    acc_sum: Tensor | None = None,
    levels: Tensor | None = None,
    num_levels: int = 1,
) -> tuple[Tensor, Tensor]:
    """GHM-R loss (Li, Liu, Wang, AAAI 2019, Sec. "GHM-R Loss"), per coordinate of the positives,
    as the authors' mmdetection code computes it (their RetinaNet config: ``mu=0.02``, 10 regions,
    momentum 0.7, loss weight 10). With ``d = pred - target`` (the regression deltas):

        ASL1(d) = sqrt(d² + μ²) - μ                  (the paper's "authentic smooth L1")
        gr = |∂ASL1/∂d| = |d| / sqrt(d² + μ²)        (its gradient norm, in [0, 1))
        L_GHM-R = Σ_l Σ_{i∈l} ASL1(d_i) / (n_l · S_{ind(gr_i)})

    with the harmonizing weights of :func:`harmonizing_weights` over the ``4·P_l`` coordinates of
    level ``l``'s positives (the code's ``tot``: its regression weights are 1 on the positives'
    four coordinates). The returned per-coordinate loss sums to the loss: the caller does not
    divide by the number of positives. The weights carry no gradient.

    Args:
        pred, target: ``[P, 4]`` deltas of the positives.
        levels: ``[P]`` FPN level of each positive, or None (one histogram).

    Returns:
        ``(loss [P, 4], new_acc_sum [bins])``.
    """
    diff = pred - target.to(pred.dtype)
    loss = torch.sqrt(diff * diff + mu * mu) - mu
    with torch.no_grad():
        d = diff.detach()
        g = d.abs() / torch.sqrt(d * d + mu * mu)
        weights, acc = harmonizing_weights(g, None, levels, num_levels, bins, momentum, acc_sum)
    return loss * weights.to(loss.dtype), acc


def smooth_l1(pred: Tensor, target: Tensor, beta: float = 1.0 / 9.0, per_coordinate: bool = False) -> Tensor:
    """Smooth L1 (Girshick, Fast R-CNN), summed over the 4 coordinates:

    ``sl1(d) = 0.5 d² / β  if |d| < β  else  |d| - 0.5 β``,  ``d = pred - target``

    ``beta = 0`` is plain L1. ``β = 1/9`` is RetinaNet's / Detectron's default.

    Returns:
        ``[P]`` (``[P, 4]`` with ``per_coordinate``).
    """
    diff = (pred - target).abs()
    if beta <= 0:
        loss = diff
    else:
        loss = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    return loss if per_coordinate else loss.sum(-1)


def l1(pred: Tensor, target: Tensor, per_coordinate: bool = False) -> Tensor:
    """L1 loss summed over the 4 coordinates: ``Σ_m |pred_m - target_m|`` -> ``[P]`` (``[P, 4]``
    with ``per_coordinate``)."""
    loss = (pred - target).abs()
    return loss if per_coordinate else loss.sum(-1)


def giou_loss(pred_boxes: Tensor, target_boxes: Tensor) -> Tensor:
    """GIoU loss (Rezatofighi et al., CVPR 2019): ``1 - GIoU(pred, target)`` on matching
    ``(x1, y1, x2, y2)`` rows -> ``[P]``, in ``[0, 2]``."""
    return 1.0 - generalized_iou(pred_boxes, target_boxes)
