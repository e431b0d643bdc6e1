"""The weighting core: the sample-weighting arithmetic of the five papers as pure functions.

Every method is a rule for per-sample weights in one general loss (SWN paper, Eq. 2)::

    L = 1/N1 · Σ_i s_i^cls · L_i^cls  +  1/N2 · Σ_i s_i^reg · L_i^reg

The functions below compute the ``s_i`` (or soft targets, or extra terms). They are vectorized
(no Python loop over samples, GTs or classes), device-agnostic (everything stays on the inputs'
device, no host-device synchronization), and accept empty inputs (zero positives). Tensors are
1-D over the positive samples ``[P]`` unless stated.

Papers:

* PISA: Cao et al., "Prime Sample Attention in Object Detection" (CVPR 2020) -- IoU-HLR, ISR, CARL.
* IoU-balanced: Wu & Li, "IoU-balanced Loss Functions for Single-stage Object Detection".
* Sampling-Free: Chen et al., "Is Sampling Heuristics Necessary in Training Deep Object
  Detectors?" -- guided loss scaling, optimal bias initialization, adaptive threshold.
* Noisy anchors: Li et al., "Learning from Noisy Anchors for One-stage Object Detection"
  (CVPR 2020) -- cleanliness soft labels and re-weighting, top-N positive candidates.
* SWN: Cai et al., "Learning a Unified Sample Weighting Network for Object Detection"
  (CVPR 2020) -- the uncertainty-weighted loss terms.

Where a paper's text and its authors' code differ, the code's form is the default and the
paper's stays selectable (``docs/design.md``, "The weighting core").
"""

from __future__ import annotations

from numbers import Real

import torch
from torch import Tensor

from swdet.artifact import threshold_record
from swdet.errors import SwdetError
from swdet.models.retinanet import prior_bias

__all__ = [
    "iou_hlr_rank",
    "isr_weights",
    "rescale_to",
    "carl_weights",
    "carl_loss",
    "iou_balanced_cls_weights",
    "iou_balanced_loc_weights",
    "guided_loss_scale",
    "optimal_prior",
    "optimal_bias",
    "adaptive_threshold",
    "cleanliness",
    "cleanliness_weights",
    "topn_positives",
    "swn_terms",
    "swn_loss",
]

# Cleanliness re-weighting: f(x) = 1 / (1 - x) is evaluated on x clamped to [0, 1 - eps], so one
# sample's weight is at most 1/eps before the mean-1 normalization.
CLEANLINESS_EPS = 1e-3


# ---------------------------------------------------------------------------------------------
# PISA: IoU-HLR and Importance-based Sample Reweighting
# ---------------------------------------------------------------------------------------------


def _segment_starts(keys: Tensor) -> tuple[Tensor, Tensor]:
    """For a 1-D tensor sorted so that equal keys are contiguous, return ``(start, is_first)``:
    the position of the first element of each element's run, and whether it opens a run."""
    n = keys.numel()
    pos = torch.arange(n, device=keys.device)
    is_first = torch.ones(n, dtype=torch.bool, device=keys.device)
    is_first[1:] = keys[1:] != keys[:-1]
    start = torch.where(is_first, pos, torch.zeros_like(pos)).cummax(0).values
    return start, is_first


# IoU-HLR packs the IoU into integer sort keys: the bit pattern of a non-negative float32 is
# order-preserving as an integer, and IoUs in [0, 1] have bit patterns in [0, _ONE_BITS] < 2^30.
_ONE_BITS = 0x3F800000  # float32 1.0
_IOU_SHIFT = 1 << 30


def _hlr_rank_and_class_count(ious: Tensor, gt_ids: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """IoU-HLR ranks ``[P]`` (int64) and, for each sample, ``n_j`` = positives of its class."""
    if ious.dim() != 1 or gt_ids.shape != ious.shape or labels.shape != ious.shape:
        raise ValueError(
            f"iou_hlr_rank: ious, gt_ids and labels must be 1-D of one length, got "
            f"{tuple(ious.shape)}, {tuple(gt_ids.shape)}, {tuple(labels.shape)}"
        )
    device = ious.device
    p = ious.numel()
    if p == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return empty, empty.clone()
    labels = labels.to(device=device, dtype=torch.int64)
    gt_ids = gt_ids.to(device=device, dtype=torch.int64)
    pos = torch.arange(p, device=device)

    # IoU descending as an integer key: ONE_BITS - bits(iou) (NaN -> 0, -0.0 -> +0.0).
    iou32 = ious.detach().to(torch.float32).nan_to_num(0.0).clamp(0.0, 1.0) + 0.0
    iou_desc = _ONE_BITS - iou32.view(torch.int32).to(torch.int64)

    # Step 1, local rank: one stable sort by (GT, IoU desc); equal keys keep the index order.
    # gt0 < 2^33 keeps the key below 2^63 (GT ids are batch-local).
    gt0 = gt_ids - gt_ids.min()
    order1 = torch.sort(gt0 * _IOU_SHIFT + iou_desc, stable=True).indices
    start1, _ = _segment_starts(gt0[order1])
    local_rank = torch.empty(p, dtype=torch.int64, device=device)
    local_rank[order1] = pos - start1

    # Step 2, hierarchical rank: one stable sort by (class, local rank, IoU desc); local ranks
    # are < P, so the key stays below 2^63 while (label span) * P < 2^33.
    lab0 = labels - labels.min()
    order2 = torch.sort((lab0 * p + local_rank) * _IOU_SHIFT + iou_desc, stable=True).indices
    start2, first2 = _segment_starts(lab0[order2])
    rank = torch.empty(p, dtype=torch.int64, device=device)
    rank[order2] = pos - start2

    # n_j: size of each class run (dense run ids, counted with index_add: no bincount sync).
    run_id = first2.cumsum(0) - 1
    run_size = torch.zeros(p, dtype=torch.int64, device=device).index_add_(
        0, run_id, torch.ones(p, dtype=torch.int64, device=device)
    )
    class_count = torch.empty(p, dtype=torch.int64, device=device)
    class_count[order2] = run_size[run_id]
    return rank, class_count


def iou_hlr_rank(ious: Tensor, gt_ids: Tensor, labels: Tensor) -> Tensor:
    """IoU Hierarchical Local Rank (PISA Sec. 3, Fig. 3); 0 = most important.

    Ranks are counted within each class ``j``:

    1. local rank: within each GT (the samples assigned to it), order the samples by IoU
       descending; a sample's position in that list is its IoU-LR (0 = best of its GT);
    2. within each class, order all samples by (IoU-LR ascending, IoU descending); the position in
       that list is the IoU-HLR ``r ∈ [0, n_j - 1]``.

    Ties go to the lower sample index. Computed with two stable sorts on composite integer keys
    ``(GT, IoU desc)`` and ``(class, local rank, IoU desc)`` and scatters (no loop); IoUs are
    compared in float32, clamped to [0, 1] (the bit pattern of a non-negative float32 orders like
    an integer). A GT's samples all carry its class (as in a detection batch); GT ids are
    batch-local (their span below 2^33; label span times P below 2^33).

    Args:
        ious: ``[P]`` IoU of each positive sample's regressed box with its GT (PISA ranks by the
            IoU *after* regression).
        gt_ids: ``[P]`` integer GT id, unique across the batch.
        labels: ``[P]`` integer class of each sample.

    Returns:
        ``[P]`` int64 ranks.
    """
    return _hlr_rank_and_class_count(ious, gt_ids, labels)[0]


def isr_weights(ious: Tensor, gt_ids: Tensor, labels: Tensor, gamma: float = 2.0, beta: float = 0.0) -> Tensor:
    """Importance-based Sample Reweighting weights (PISA Eq. 1-2), unnormalized.

    ``u_i = (n_j - r_i) / n_j``  (Eq. 1), with ``r_i`` the IoU-HLR of sample ``i``
    (:func:`iou_hlr_rank`) and ``n_j`` the number of positives of its class ``j``;

    ``w_i = ((1 - β) u_i + β)^γ``  (Eq. 2).

    The paper's best setting is ``γ = 2, β = 0`` (Table 5). The weights carry no gradient;
    normalize them to the positives' loss sum with :func:`rescale_to` (PISA Eq. 3).

    Returns:
        ``[P]`` weights in the floating dtype of ``ious`` (float32 if ``ious`` is not floating).
    """
    dtype = ious.dtype if ious.is_floating_point() else torch.float32
    rank, count = _hlr_rank_and_class_count(ious, gt_ids, labels)
    n = count.to(dtype)
    u = (n - rank.to(dtype)) / n.clamp(min=1)
    return ((1.0 - beta) * u + beta).pow(gamma)


def rescale_to(weights: Tensor, losses: Tensor, groups: Tensor | None = None, num_groups: int = 1) -> Tensor:
    """Rescale weights so the weighted loss sum equals the unweighted one (PISA Eq. 3,
    IoU-balanced Eq. 2):

    ``w'_i = w_i · Σ_i L_i / Σ_i w_i L_i``

    The ratio is detached (no gradient through the normalization); ``weights`` keep their own
    gradient (CARL relies on it). ``losses`` may be ``[P]`` or ``[P, C]`` (a per-class loss such
    as focal loss); with ``[P, C]`` and ``[P]`` weights, ``w_i`` multiplies every class of sample
    ``i`` and the sums run over all elements. When ``Σ w_i L_i`` is 0 the ratio is 1.

    ``groups`` (``[P]`` integers in ``[0, num_groups)``, e.g. the FPN level of each sample)
    applies the rule within each group ``g``: ``w'_i = w_i · Σ_{j∈g} L_j / Σ_{j∈g} w_j L_j``
    (the IoU-balanced authors' code normalizes each pyramid level on its own).

    Returns:
        the rescaled weights, shaped like ``weights``.
    """
    w = weights.detach()
    loss = losses.detach()
    if w.dim() == 1 and loss.dim() == 2:
        w = w[:, None]
    wl = w * loss
    if groups is None:
        num, den = loss.sum(), wl.sum()
    else:
        per_sample = (loss.sum(1), wl.sum(1)) if loss.dim() == 2 else (loss, wl)
        g = groups.to(device=loss.device, dtype=torch.int64)
        sums = torch.zeros(2, num_groups, device=loss.device, dtype=loss.dtype)
        sums.index_add_(1, g, torch.stack(per_sample))
        num, den = sums[0][g], sums[1][g]
    one = torch.ones_like(den)
    ratio = torch.where(den != 0, num / torch.where(den != 0, den, one), one)
    if groups is not None and weights.dim() == 2:
        ratio = ratio[:, None]
    return weights * ratio


# ---------------------------------------------------------------------------------------------
# PISA: Classification-Aware Regression Loss
# ---------------------------------------------------------------------------------------------


def carl_weights(scores: Tensor, k: float = 1.0, bias: float = 0.1) -> Tensor:
    """CARL classification awareness (PISA Eq. 4):

    ``v_i = ((1 - b) p_i + b)^k``,  ``c_i = v_i / ((1/n) Σ_j v_j)``

    ``p_i`` is the predicted probability of the sample's GT class. The gradient flows into the
    scores through both ``v_i`` and the mean (PISA App. A, Eq. 8). Defaults ``k = 1, b = 0.1``
    (Table 5).
    """
    v = ((1.0 - bias) * scores + bias).pow(k)
    if v.numel() == 0:
        return v
    return v / v.mean()


def carl_loss(scores: Tensor, reg_losses: Tensor, k: float = 1.0, bias: float = 0.1) -> Tensor:
    """Classification-Aware Regression Loss (PISA Eq. 4), summed over positives:

    ``L_reg = Σ_i c'_i · L_i``,  ``c' = rescale_to(c, L)``,  ``c = carl_weights(p, k, b)``

    ``L_i`` is the sample's regression loss (``[P]``, or ``[P, 4]`` per coordinate, which is then
    summed). The normalization ratio ``Σ L / Σ c L`` is detached, so by PISA App. A
    ``∂L_reg/∂p_i = R · Σ_j L_j ∂c_j/∂p_i`` -- the regression loss's gradient reaches the
    classifier, growing with ``L_i``. Gradients also reach the regression losses (weight ``c'_i``).

    Returns:
        a scalar: the sum (divide by the regression normalizer ``N2`` yourself).
    """
    c = carl_weights(scores, k=k, bias=bias)
    c_prime = rescale_to(c, reg_losses)
    if reg_losses.dim() == 2:
        c_prime = c_prime[:, None]
    return (c_prime * reg_losses).sum()


# ---------------------------------------------------------------------------------------------
# IoU-balanced loss functions
# ---------------------------------------------------------------------------------------------


def iou_balanced_cls_weights(ious: Tensor, losses: Tensor, eta: float = 1.5, groups: Tensor | None = None,
                             num_groups: int = 1) -> Tensor:
    """IoU-balanced classification weights of the positives (IoU-balanced Eq. 1-2):

    ``w_i = iou_i^η · Σ_i CE_i / Σ_i iou_i^η CE_i``

    ``iou_i`` is the IoU of the regressed box with its GT; ``losses`` the positives' unweighted
    classification losses: ``[P]`` -- the loss of each positive's ground-truth-class element, the
    only element the authors' code weights (``(1 - t) + t·iou^η``, every other element keeps 1) --
    or ``[P, C]`` (every class of a positive, the other reading of the paper's ``CE(p_i)``).
    ``groups``/``num_groups`` normalize within groups (:func:`rescale_to`; the authors' code
    normalizes per FPN level). No gradient (detached). Default ``η = 1.5`` (Table 4).

    Returns:
        ``[P]`` weights.
    """
    base = ious.detach().clamp(min=0).pow(eta)
    return rescale_to(base, losses.detach(), groups, num_groups)


def iou_balanced_loc_weights(ious: Tensor, lam: float = 1.5, w_loc: float = 1.0) -> Tensor:
    """IoU-balanced localization weights (IoU-balanced Eq. 4):

    ``w_i = w_loc · iou_i^λ``

    No gradient flows through the IoU (the paper's constraint before Eq. 6). ``w_loc`` keeps the
    localization loss sum unchanged; the paper fixes it by hand (3.049 for ``λ = 1.5``, Table 4),
    the trainer fixes it on the first batch.
    """
    return w_loc * ious.detach().clamp(min=0).pow(lam)


# ---------------------------------------------------------------------------------------------
# Sampling-Free
# ---------------------------------------------------------------------------------------------


def guided_loss_scale(cls_loss: Tensor, reg_loss: Tensor, factor: float = 1.0) -> Tensor:
    """Guided loss scaling (Sampling-Free Eq. 7-8):

    ``L_cls' = L_cls · detach(factor · L_reg / L_cls)``

    The forward value equals ``factor · L_reg``; the gradient is that of ``L_cls`` times the
    detached ratio ``w = factor · L_reg / L_cls``. ``factor = 2`` for a RoI head (Sec. 3.2, the
    box loss there is about twice the classification loss). Where ``L_cls`` is 0 the ratio is 0.
    """
    reg = torch.as_tensor(reg_loss, dtype=cls_loss.dtype, device=cls_loss.device).detach()
    cls = cls_loss.detach()
    nonzero = cls != 0
    safe_cls = torch.where(nonzero, cls, torch.ones_like(cls))
    ratio = torch.where(nonzero, factor * reg / safe_cls, torch.zeros_like(cls))
    return cls_loss * ratio


def _is_number(x) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


def _check_counts(num_fg, num_all, num_classes=None) -> None:
    """Validate plain-number counts (tensors pass unchecked: no host read-back)."""
    if _is_number(num_fg) and num_fg <= 0:
        raise SwdetError(f"num_fg={num_fg}: the number of foreground anchors must be > 0")
    if _is_number(num_all) and num_all <= 0:
        raise SwdetError(f"num_all={num_all}: the number of anchors must be > 0")
    if _is_number(num_fg) and _is_number(num_all) and num_fg > num_all:
        raise SwdetError(f"num_fg={num_fg}: more foreground anchors than anchors ({num_all})")
    if num_classes is not None and _is_number(num_classes) and num_classes < 1:
        raise SwdetError(f"num_classes={num_classes}: must be >= 1")


def optimal_prior(num_fg, num_all, num_classes):
    """Optimal prior probability (Sampling-Free Sec. 3.2, the root of Eq. 9):

    ``π = N_f / (N · C)``

    ``N_f`` foreground anchors, ``N`` = foreground + background anchors (ignored ones excluded),
    ``C`` classes. Accepts Python numbers (returns a float) or tensors (returns a tensor).
    """
    _check_counts(num_fg, num_all, num_classes)
    if all(_is_number(x) for x in (num_fg, num_all, num_classes)):
        return float(num_fg) / (float(num_all) * float(num_classes))
    return _as_float(num_fg) / (_as_float(num_all) * _as_float(num_classes))


def _as_float(x):
    """Tensor counts become floating tensors (int -> float64); numbers become floats."""
    if isinstance(x, Tensor):
        return x if x.is_floating_point() else x.to(torch.float64)
    return float(x)


def optimal_bias(num_fg, num_all, num_classes):
    """Optimal bias initialization of the sigmoid classifier (Sampling-Free Eq. 10):

    ``b = -log((1 - π) / π) = -log(N·C / N_f - 1)``,  ``π`` from :func:`optimal_prior`.

    The bias formula itself is :func:`swdet.models.retinanet.prior_bias`, the one the heads'
    ``set_prior`` apply. Accepts Python numbers (returns a float) or tensors (returns a tensor).
    """
    prior = optimal_prior(num_fg, num_all, num_classes)
    if not isinstance(prior, Tensor) and prior >= 1.0:
        raise SwdetError(f"num_fg={num_fg}: every anchor is foreground for the one class; the prior is 1")
    return prior_bias(prior)


def adaptive_threshold(num_fg, num_all):
    """Adaptive inference score threshold (Sampling-Free Sec. 3.2, Table 2):

    ``θ = N_f / N``

    The counts come from matching the anchors to the whole training set once (no forward pass).
    Accepts Python numbers (returns a float; the division of
    :func:`swdet.artifact.threshold_record`, the ``model.json`` record export and the trainer
    write) or tensors (returns a tensor).
    """
    _check_counts(num_fg, num_all)
    if _is_number(num_fg) and _is_number(num_all):
        return threshold_record(num_fg, num_all)["theta"]
    return _as_float(num_fg) / _as_float(num_all)


# ---------------------------------------------------------------------------------------------
# Learning from noisy anchors
# ---------------------------------------------------------------------------------------------


def cleanliness(loc_a: Tensor, cls_c: Tensor, alpha: float = 0.75) -> Tensor:
    """Cleanliness score of the positive candidates (Noisy anchors Eq. 3):

    ``c = α · loc_a + (1 - α) · cls_c``

    ``loc_a`` is the IoU of the regressed box with its GT, ``cls_c`` the predicted probability of
    its class; both are detached. Used as the soft BCE target of the positives (negatives get 0).
    The result is clamped to ``[0, 1]``.
    """
    c = alpha * loc_a.detach() + (1.0 - alpha) * cls_c.detach()
    return c.clamp(0.0, 1.0)


def cleanliness_weights(loc_a: Tensor, cls_c: Tensor, alpha: float = 0.75, gamma: float = 1.0) -> Tensor:
    """Cleanliness re-weighting factors of the positives (Noisy anchors Eq. 4):

    ``r = (α · f(loc_a) + (1 - α) · f(cls_c))^γ``,  ``f(x) = 1 / (1 - x)``,  then ``r / mean(r)``

    so the positives' weights have mean 1. Inputs are detached and clamped to
    ``[0, 1 - CLEANLINESS_EPS]``. ``α`` weighs ``loc_a`` as in Eq. 3 (the text and Table 4c; the
    paper's Algorithm 1 swaps it). ``γ = 1`` in the paper.
    """
    hi = 1.0 - CLEANLINESS_EPS
    f_loc = 1.0 / (1.0 - loc_a.detach().clamp(0.0, hi))
    f_cls = 1.0 / (1.0 - cls_c.detach().clamp(0.0, hi))
    r = (alpha * f_loc + (1.0 - alpha) * f_cls).pow(gamma)
    if r.numel() == 0:
        return r
    return r / r.mean()


def topn_positives(anchor_gt_ious: Tensor, n: int = 40) -> tuple[Tensor, Tensor]:
    """Positive candidate set ``A_pos`` of the noisy-anchors paper (Sec. 4, Algorithm 1 lines 2-5):

    ``A_pos = ∪_g top-n anchors of GT g by IoU before refinement``

    An anchor claimed by several GTs goes to the one it overlaps most (ties: lower GT index).
    Anchors with IoU 0 are never claimed; ties at the n-th place go to the lower anchor index.

    Args:
        anchor_gt_ious: ``[A, G]`` IoU of every anchor with every GT of the image (G may be 0).
        n: candidates per GT (the paper's N; 40 by default).

    Returns:
        ``(pos_mask [A] bool, gt_index [A] int64)``, ``gt_index`` -1 where negative.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SwdetError(f"topn_positives n={n!r}: must be an integer >= 1")
    if anchor_gt_ious.dim() != 2:
        raise ValueError(f"topn_positives: anchor_gt_ious must be [A, G], got {tuple(anchor_gt_ious.shape)}")
    ious = anchor_gt_ious.detach()
    num_anchors, num_gts = ious.shape
    device = ious.device
    if num_anchors == 0 or num_gts == 0:
        return (torch.zeros(num_anchors, dtype=torch.bool, device=device),
                torch.full((num_anchors,), -1, dtype=torch.int64, device=device))
    k = min(n, num_anchors)
    # n-th largest IoU of each GT; every anchor above it is claimed, and among anchors equal to
    # it only as many as still fit, in anchor-index order.
    kth = torch.topk(ious, k, dim=0).values[-1]  # [G]
    above = ious > kth
    tie = ious == kth
    room = k - above.sum(0, dtype=torch.int32)  # [G]
    claim = above | (tie & (tie.cumsum(0, dtype=torch.int32) <= room))
    claim &= ious > 0
    masked = torch.where(claim, ious, torch.full_like(ious, -1.0))
    best = masked.argmax(dim=1)
    pos_mask = claim.any(dim=1)
    gt_index = torch.where(pos_mask, best, torch.full_like(best, -1))
    return pos_mask, gt_index


# ---------------------------------------------------------------------------------------------
# SWN: unified sample weighting network
# ---------------------------------------------------------------------------------------------


SWN_GROUPS = ("all", "pos_neg")


def _swn_smoothed_cls(m_cls: Tensor, pos: Tensor, valid: Tensor, groups: str) -> tuple[Tensor, Tensor, Tensor]:
    """The batch-shared classification ``m̄`` of :func:`swn_terms`: ``(m̄ [N], means [2], present [2])``
    with ``means`` = (positives' or all samples' mean, negatives' mean) and ``present`` whether
    each group has a sample (``groups="all"``: one group, in slot 0)."""
    zero = torch.zeros_like(m_cls)
    if groups == "all":
        n = valid.sum().to(m_cls.dtype)
        mean = torch.where(valid, m_cls, zero).sum() / n.clamp(min=1)
        means = torch.stack([mean, torch.zeros_like(mean)])
        present = torch.stack([n > 0, torch.zeros_like(n, dtype=torch.bool)])
        return mean.expand_as(m_cls), means, present
    if groups != "pos_neg":
        raise ValueError(f"swn groups={groups!r}: choose from {SWN_GROUPS}")
    masks = torch.stack([pos & valid, ~pos & valid])  # [2, N]
    n = masks.sum(1).to(m_cls.dtype)
    means = torch.where(masks, m_cls, zero).sum(1) / n.clamp(min=1)
    return torch.where(pos, means[0], means[1]), means, n > 0


def _swn_inputs(m_cls, m_reg, cls_loss, reg_loss, pos_mask, valid, clip):
    shape = cls_loss.shape
    m_cls = m_cls.reshape(shape).clamp(-clip, clip)
    m_reg = m_reg.reshape(shape).clamp(-clip, clip)
    pos = pos_mask.reshape(shape).to(device=cls_loss.device, dtype=torch.bool)
    valid = (torch.ones_like(pos) if valid is None
             else valid.reshape(shape).to(device=cls_loss.device, dtype=torch.bool))
    return m_cls, m_reg, pos & valid, valid


def swn_terms(
    m_cls: Tensor,
    m_reg: Tensor,
    cls_loss: Tensor,
    reg_loss: Tensor,
    pos_mask: Tensor,
    lam: float = 0.5,
    clip: float = 2.0,
    exp_scale: float = 1.0,
    groups: str = "all",
    *,
    valid: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-sample SWN loss terms (SWN Eq. 9; defaults as in the authors' code):

    ``m ← clamp(m, -clip, clip)``  (Sec. 4.2: predictions kept in [-2, 2]);

    ``m̄_i`` = the batch mean of the clipped ``m^cls``: over all samples for ``groups="all"``
    (the authors' RetinaNet head: one classification weight for every anchor), over the batch's
    positives if ``i`` is positive and over its negatives otherwise for ``groups="pos_neg"``
    (App. A.1.2, the authors' RoI head);

    ``cls_i = exp(-s·m̄_i) · L_i^cls + λ · m̄_i``  for every sample;

    ``reg_i = exp(-s·m_i^reg) · L_i^reg + λ · m_i^reg``  on positives, 0 elsewhere;

    with ``s = exp_scale``: 1 in the authors' code (``exp(-m)``), 2 in the paper's Eq. 9
    (``m = log σ``, weight ``1/σ² = exp(-2m)``). ``λ_1 = λ_2 = λ`` (0.5, Table 5). Gradients reach
    ``m`` (inside the clip range) and both losses. ``reg_loss`` of negatives is never used.
    ``valid`` (``[N]`` bool, default all) excludes samples (padding) from the terms and the means.

    For the loss of a batch, where each batch-shared weight carries its regularizer once, see
    :func:`swn_loss`.

    Args:
        m_cls, m_reg: ``[N]`` raw weighting-network outputs.
        cls_loss, reg_loss: ``[N]`` unweighted per-sample losses.
        pos_mask: ``[N]`` bool.

    Returns:
        ``(cls_terms [N], reg_terms [N])`` (0 where not valid).
    """
    m_cls, m_reg, pos, valid = _swn_inputs(m_cls, m_reg, cls_loss, reg_loss, pos_mask, valid, clip)
    m_bar, _, _ = _swn_smoothed_cls(m_cls, pos, valid, groups)
    zero = torch.zeros_like(cls_loss)
    cls_terms = torch.where(valid, torch.exp(-exp_scale * m_bar) * cls_loss + lam * m_bar, zero)
    m_reg = torch.where(pos, m_reg, zero)
    reg_terms = torch.exp(-exp_scale * m_reg) * torch.where(pos, reg_loss, zero) + lam * m_reg
    return cls_terms, torch.where(pos, reg_terms, zero)


def swn_loss(
    m_cls: Tensor,
    m_reg: Tensor,
    cls_loss: Tensor,
    reg_loss: Tensor,
    pos_mask: Tensor,
    cls_norm: Tensor | float,
    reg_norm: Tensor | float,
    lam: float = 0.5,
    clip: float = 2.0,
    exp_scale: float = 1.0,
    groups: str = "all",
    *,
    valid: Tensor | None = None,
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """The SWN loss of one batch, reduced as in the authors' code (RetinaNet head and RoI head):

    ``L_cls = Σ_i exp(-s·m̄_i) · L_i^cls / N1  +  λ · Σ_g m̄_g``

    ``L_reg = Σ_{i∈pos} exp(-s·m_i^reg) · L_i^reg / N2  +  λ · mean_{i∈pos} m_i^reg``

    ``m̄``, ``s``, ``clip`` and ``groups`` as in :func:`swn_terms`; ``g`` runs over the
    batch-shared classification weights (one for ``groups="all"``, positives and negatives for
    ``"pos_neg"``), so each carries its regularizer once, and the regression regularizer is the
    positives' mean: both are batch means, not sums over samples divided by the loss
    normalizers ``N1``, ``N2`` (the head's usual ones: positives on RetinaNet, sampled RoIs in a
    RoI head). At the optimum ``exp(-s·m̄) = λ·N1 / (s·Σ L^cls)`` (one weight that scales the
    normalized classification loss to ``λ/s``) and ``exp(-s·m_i) = λ·N2 / (s·P·L_i^reg)``.

    Returns:
        ``(L_cls, L_reg, weights)``; ``weights`` holds detached means of ``exp(-s·m)``:
        ``w_cls_pos``, ``w_cls_neg`` (equal for ``"all"``) and ``w_reg`` (over the positives).
    """
    m_cls, m_reg, pos, valid = _swn_inputs(m_cls, m_reg, cls_loss, reg_loss, pos_mask, valid, clip)
    m_bar, means, present = _swn_smoothed_cls(m_cls, pos, valid, groups)
    zero = torch.zeros_like(cls_loss)
    cls_sum = torch.where(valid, torch.exp(-exp_scale * m_bar) * cls_loss, zero).sum()
    cls_reg = lam * torch.where(present, means, torch.zeros_like(means)).sum()
    n_pos = pos.sum().to(m_reg.dtype)
    m_pos = torch.where(pos, m_reg, zero)
    w_reg = torch.where(pos, torch.exp(-exp_scale * m_pos), zero)
    reg_sum = (w_reg * torch.where(pos, reg_loss, zero)).sum()
    reg_reg = lam * m_pos.sum() / n_pos.clamp(min=1)
    with torch.no_grad():
        w_cls = torch.exp(-exp_scale * means)
        if groups == "all":
            w_cls = w_cls[:1].expand(2)
        weights = {"w_cls_pos": w_cls[0], "w_cls_neg": w_cls[1], "w_reg": w_reg.sum() / n_pos.clamp(min=1)}
    return cls_sum / cls_norm + cls_reg, reg_sum / reg_norm + reg_reg, weights
