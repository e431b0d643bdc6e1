"""Tests of swdet.train.weighting: hand-computed values from the papers' equations, gradients,
empty inputs, and a randomized check of IoU-HLR against a loop reference."""

from __future__ import annotations

import math

import pytest
import torch

from swdet.errors import SwdetError
from swdet.train.weighting import (
    adaptive_threshold,
    carl_loss,
    carl_weights,
    cleanliness,
    cleanliness_weights,
    guided_loss_scale,
    iou_balanced_cls_weights,
    iou_balanced_loc_weights,
    iou_hlr_rank,
    isr_weights,
    optimal_bias,
    optimal_prior,
    rescale_to,
    swn_loss,
    swn_terms,
    topn_positives,
)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")

L = torch.long


# ---------------------------------------------------------------------------------------------
# IoU-HLR
# ---------------------------------------------------------------------------------------------

# Six positives, two classes, three GTs.
#
#   idx  IoU   GT  class
#    0   0.95   0    0
#    1   0.90   0    0
#    2   0.60   1    0
#    3   0.85   0    0
#    4   0.70   2    1
#    5   0.70   2    1      (IoU tie with sample 4 inside GT 2)
#
# Class 0. Local ranks: GT 0 = {0: 0.95, 1: 0.90, 3: 0.85} -> 0:0, 1:1, 3:2;  GT 1 = {2: 0.60} -> 2:0.
#   Local rank 0 = {0 (0.95), 2 (0.60)} sorted by IoU desc -> HLR 0:0, 2:1
#   Local rank 1 = {1}                                     -> HLR 1:2
#   Local rank 2 = {3}                                     -> HLR 3:3
#   (A plain IoU rank would give 0,1,3,2 instead: sample 2 moves up because it is its GT's best.)
# Class 1. GT 2 = {4: 0.70, 5: 0.70}: tie -> lower index first: local 4:0, 5:1 -> HLR 4:0, 5:1.
HLR_IOUS = torch.tensor([0.95, 0.90, 0.60, 0.85, 0.70, 0.70])
HLR_GTS = torch.tensor([0, 0, 1, 0, 2, 2])
HLR_LABELS = torch.tensor([0, 0, 0, 0, 1, 1])
HLR_EXPECTED = [0, 2, 1, 3, 0, 1]


def test_iou_hlr_rank_hand_example():
    rank = iou_hlr_rank(HLR_IOUS, HLR_GTS, HLR_LABELS)
    assert rank.dtype == torch.int64
    assert rank.tolist() == HLR_EXPECTED


def test_iou_hlr_rank_ids_need_not_be_contiguous():
    # Same example with arbitrary GT ids and class ids: only grouping matters.
    gts = torch.tensor([1000, 1000, 7, 1000, 42, 42])
    labels = torch.tensor([79, 79, 79, 79, 3, 3])
    assert iou_hlr_rank(HLR_IOUS, gts, labels).tolist() == HLR_EXPECTED


def test_iou_hlr_rank_tie_across_gts_goes_to_lower_index():
    # Two GTs of one class, each with one sample of IoU 0.5: both local rank 0, IoU tie.
    rank = iou_hlr_rank(torch.tensor([0.5, 0.5]), torch.tensor([1, 0]), torch.tensor([0, 0]))
    assert rank.tolist() == [0, 1]


def test_iou_hlr_rank_empty():
    empty_f = torch.zeros(0)
    empty_l = torch.zeros(0, dtype=L)
    assert iou_hlr_rank(empty_f, empty_l, empty_l).shape == (0,)
    assert isr_weights(empty_f, empty_l, empty_l).shape == (0,)


def _reference_hlr(ious, gt_ids, labels):
    """Loop reference, the structure of the public PISA code: per class, per GT."""
    ious, gt_ids, labels = ious.tolist(), gt_ids.tolist(), labels.tolist()
    rank = [None] * len(ious)
    for c in sorted(set(labels)):
        members_c = [i for i in range(len(ious)) if labels[i] == c]
        local = {}
        for g in sorted({gt_ids[i] for i in members_c}):
            members_g = [i for i in members_c if gt_ids[i] == g]
            members_g.sort(key=lambda i: (-ious[i], i))
            for lr, i in enumerate(members_g):
                local[i] = lr
        order = sorted(members_c, key=lambda i: (local[i], -ious[i], i))
        for r, i in enumerate(order):
            rank[i] = r
    return rank


@pytest.mark.parametrize("seed", range(6))
def test_iou_hlr_rank_matches_loop_reference_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    num_pos = int(torch.randint(1, 300, (1,), generator=g))
    num_gts = int(torch.randint(1, 40, (1,), generator=g))
    gt_class = torch.randint(0, 5, (num_gts,), generator=g)  # each GT has one class
    gt_ids = torch.randint(0, num_gts, (num_pos,), generator=g) * 3 + 11  # sparse ids
    labels = gt_class[(gt_ids - 11) // 3]
    ious = torch.randint(0, 6, (num_pos,), generator=g).float() / 5  # few values: many ties
    expected = _reference_hlr(ious, gt_ids, labels)
    assert iou_hlr_rank(ious, gt_ids, labels).tolist() == expected
    # ranks are a permutation of 0..n_j-1 within every class
    rank = iou_hlr_rank(ious, gt_ids, labels)
    for c in labels.unique():
        sel = rank[labels == c]
        assert sorted(sel.tolist()) == list(range(sel.numel()))


# ---------------------------------------------------------------------------------------------
# ISR
# ---------------------------------------------------------------------------------------------


def test_isr_weights_hand_example():
    # Class 0: n=4, r=[0,2,1,3] -> u=(4-r)/4=[1, .5, .75, .25]; class 1: n=2, r=[0,1] -> u=[1, .5].
    # gamma=2, beta=0: w = u^2.
    w = isr_weights(HLR_IOUS, HLR_GTS, HLR_LABELS)
    torch.testing.assert_close(w, torch.tensor([1.0, 0.25, 0.5625, 0.0625, 1.0, 0.25]))
    # gamma=1, beta=0.1: w = 0.9 u + 0.1.
    w = isr_weights(HLR_IOUS, HLR_GTS, HLR_LABELS, gamma=1.0, beta=0.1)
    torch.testing.assert_close(w, torch.tensor([1.0, 0.55, 0.775, 0.325, 1.0, 0.55]))
    # gamma=0.5, beta=0.2: w = (0.8 u + 0.2)^0.5.
    w = isr_weights(HLR_IOUS, HLR_GTS, HLR_LABELS, gamma=0.5, beta=0.2)
    u = torch.tensor([1.0, 0.5, 0.75, 0.25, 1.0, 0.5])
    torch.testing.assert_close(w, (0.8 * u + 0.2).sqrt())


def test_isr_weights_no_gradient_and_dtype():
    ious = HLR_IOUS.double().requires_grad_()
    w = isr_weights(ious, HLR_GTS, HLR_LABELS)
    assert w.dtype == torch.float64
    assert not w.requires_grad


# ---------------------------------------------------------------------------------------------
# rescale_to
# ---------------------------------------------------------------------------------------------


def test_rescale_to_1d_value_and_detached_ratio():
    # w=[1,2], L=[1,3]: ΣL=4, ΣwL=7 -> w' = w·4/7 = [4/7, 8/7]; Σ w'L = 4 = ΣL.
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    loss = torch.tensor([1.0, 3.0], requires_grad=True)
    out = rescale_to(w, loss)
    torch.testing.assert_close(out, torch.tensor([4 / 7, 8 / 7]))
    torch.testing.assert_close((out * loss).sum(), loss.sum())
    out.sum().backward()
    # ratio detached: d(Σ w_i·R)/dw_i = R = 4/7; no gradient to the losses through R
    torch.testing.assert_close(w.grad, torch.full((2,), 4 / 7))
    assert loss.grad is None


def test_rescale_to_2d_losses():
    # w=[2,1], L=[[1,0],[2,1]]: ΣL=4, ΣwL = 2·1 + 1·3 = 5 -> w' = w·4/5 = [1.6, 0.8].
    w = torch.tensor([2.0, 1.0])
    loss = torch.tensor([[1.0, 0.0], [2.0, 1.0]])
    out = rescale_to(w, loss)
    assert out.shape == (2,)
    torch.testing.assert_close(out, torch.tensor([1.6, 0.8]))
    torch.testing.assert_close((out[:, None] * loss).sum(), loss.sum())


def test_rescale_to_zero_and_empty():
    torch.testing.assert_close(rescale_to(torch.tensor([2.0, 3.0]), torch.zeros(2)), torch.tensor([2.0, 3.0]))
    assert rescale_to(torch.zeros(0), torch.zeros(0)).shape == (0,)
    assert rescale_to(torch.zeros(0), torch.zeros(0, 80)).shape == (0,)


# ---------------------------------------------------------------------------------------------
# CARL
# ---------------------------------------------------------------------------------------------


def test_carl_weights_hand_values():
    p = torch.tensor([0.5, 1.0])
    # k=1, b=0.1: v = 0.9p + 0.1 = [0.55, 1.0], mean 0.775 -> c = [0.709677, 1.290323]
    torch.testing.assert_close(carl_weights(p), torch.tensor([0.55 / 0.775, 1.0 / 0.775]))
    # k=2, b=0: v = p^2 = [0.25, 1], mean 0.625 -> c = [0.4, 1.6]
    torch.testing.assert_close(carl_weights(p, k=2.0, bias=0.0), torch.tensor([0.4, 1.6]))
    assert carl_weights(torch.zeros(0)).shape == (0,)


def _carl_analytic_grad(p, reg, k, b):
    """PISA App. A, Eq. 6-10 without the v_i << S approximation:
    ∂L/∂p_i = R · Σ_j L_j ∂c_j/∂v_i · ∂v_i/∂p_i,  ∂c_j/∂v_i = n (δ_ij / S - v_j / S²)."""
    n = p.numel()
    v = ((1 - b) * p + b) ** k
    s = v.sum()
    c = n * v / s
    r = reg.sum() / (c * reg).sum()
    dv_dp = (1 - b) * k * ((1 - b) * p + b) ** (k - 1)
    return r * n * (reg / s - (reg * v).sum() / s**2) * dv_dp


@pytest.mark.parametrize("k,b", [(1.0, 0.1), (2.0, 0.2)])
def test_carl_loss_value_and_gradient(k, b):
    p = torch.tensor([0.2, 0.5, 0.9, 0.7], dtype=torch.float64, requires_grad=True)
    reg = torch.tensor([2.0, 1.0, 0.3, 0.5], dtype=torch.float64, requires_grad=True)
    loss = carl_loss(p, reg, k=k, bias=b)
    # Forward: Σ c'_i L_i = Σ L_i by construction of the rescaling.
    torch.testing.assert_close(loss, reg.sum())
    loss.backward()
    expected = _carl_analytic_grad(p.detach(), reg.detach(), k, b)
    torch.testing.assert_close(p.grad, expected)
    # Had the ratio not been detached, the forward Σ L would not depend on p: gradient 0.
    assert p.grad.abs().max() > 1e-3
    # The sample with the largest regression loss is pushed down hardest (positive gradient).
    assert int(p.grad.argmax()) == 0
    # Regression losses get weight c'_i.
    c = carl_weights(p.detach(), k=k, bias=b)
    torch.testing.assert_close(reg.grad, c * reg.detach().sum() / (c * reg.detach()).sum())


def test_carl_loss_gradient_matches_finite_difference():
    p0 = torch.tensor([0.3, 0.6, 0.8], dtype=torch.float64)
    reg = torch.tensor([1.5, 0.7, 0.2], dtype=torch.float64)
    p = p0.clone().requires_grad_()
    carl_loss(p, reg).backward()
    # Central differences of R0 · Σ c_i(p) L_i with R0 = ΣL / Σ c(p0) L frozen (the detached ratio).
    c0 = carl_weights(p0)
    r0 = reg.sum() / (c0 * reg).sum()
    eps = 1e-6
    fd = torch.zeros(3, dtype=torch.float64)
    for i in range(3):
        dp = torch.zeros(3, dtype=torch.float64)
        dp[i] = eps
        fd[i] = (r0 * (carl_weights(p0 + dp) * reg).sum() - r0 * (carl_weights(p0 - dp) * reg).sum()) / (2 * eps)
    torch.testing.assert_close(p.grad, fd, rtol=1e-6, atol=1e-9)


def test_carl_loss_reaches_logits_and_accepts_per_coordinate_losses():
    logits = torch.tensor([0.0, 1.0, -1.0], requires_grad=True)
    reg = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.1, 0.0], [1.0, 1.0, 1.0, 1.0]])
    loss = carl_loss(torch.sigmoid(logits), reg)
    torch.testing.assert_close(loss, reg.sum())
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # Same gradient as with the per-sample sums.
    logits2 = logits.detach().clone().requires_grad_()
    carl_loss(torch.sigmoid(logits2), reg.sum(1)).backward()
    torch.testing.assert_close(logits.grad, logits2.grad)


def test_carl_loss_empty():
    p = torch.zeros(0, requires_grad=True)
    loss = carl_loss(p, torch.zeros(0))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert p.grad.shape == (0,)


# ---------------------------------------------------------------------------------------------
# IoU-balanced
# ---------------------------------------------------------------------------------------------


def test_iou_balanced_cls_weights_hand_values():
    ious = torch.tensor([0.5, 1.0], requires_grad=True)
    losses = torch.tensor([1.0, 1.0], requires_grad=True)
    # eta=1: base [0.5, 1], ΣL=2, Σ base·L = 1.5 -> w = [2/3, 4/3]
    w = iou_balanced_cls_weights(ious, losses, eta=1.0)
    torch.testing.assert_close(w, torch.tensor([2 / 3, 4 / 3]))
    assert not w.requires_grad
    # eta=1.5: base [0.5^1.5, 1] = [0.353553, 1] -> w = base · 2 / 1.353553
    w = iou_balanced_cls_weights(ious, losses)
    base = torch.tensor([0.5**1.5, 1.0])
    torch.testing.assert_close(w, base * 2 / base.sum())
    # [P, C] losses: L=[[1,1],[2,0]], eta=1: ΣL=4, Σ base·L = 0.5·2 + 1·2 = 3 -> w = base·4/3
    w = iou_balanced_cls_weights(ious, torch.tensor([[1.0, 1.0], [2.0, 0.0]]), eta=1.0)
    torch.testing.assert_close(w, torch.tensor([0.5, 1.0]) * 4 / 3)
    assert iou_balanced_cls_weights(torch.zeros(0), torch.zeros(0)).shape == (0,)


def test_iou_balanced_loc_weights_hand_values():
    ious = torch.tensor([0.25, 1.0, 0.0], requires_grad=True)
    # w_loc · iou^λ with λ=1.5, w_loc=3.049 (the paper's Table 4 value): 0.25^1.5 = 0.125
    w = iou_balanced_loc_weights(ious, lam=1.5, w_loc=3.049)
    torch.testing.assert_close(w, torch.tensor([3.049 * 0.125, 3.049, 0.0]))
    assert not w.requires_grad
    torch.testing.assert_close(iou_balanced_loc_weights(torch.tensor([0.64]), lam=0.5), torch.tensor([0.8]))


# ---------------------------------------------------------------------------------------------
# Sampling-Free
# ---------------------------------------------------------------------------------------------


def test_guided_loss_scale_value_and_gradient():
    x = torch.tensor(2.0, requires_grad=True)
    y = torch.tensor(0.5, requires_grad=True)
    cls_loss = x * x  # 4
    reg_loss = y  # 0.5
    out = guided_loss_scale(cls_loss, reg_loss, factor=2.0)
    torch.testing.assert_close(out, torch.tensor(1.0))  # = factor · reg
    out.backward()
    # d/dx [x² · w], w = 2·0.5/4 = 0.25 detached -> 2x·w = 1.0
    torch.testing.assert_close(x.grad, torch.tensor(1.0))
    assert y.grad is None  # the guide carries no gradient


def test_guided_loss_scale_gradient_wrt_cls_loss_is_detached_ratio():
    cls_loss = torch.tensor(3.0, requires_grad=True)
    reg_loss = torch.tensor(1.2, requires_grad=True)
    out = guided_loss_scale(cls_loss, reg_loss, factor=1.0)
    torch.testing.assert_close(out, torch.tensor(1.2))
    out.backward()
    torch.testing.assert_close(cls_loss.grad, torch.tensor(1.2 / 3.0))
    assert reg_loss.grad is None
    # zero classification loss: ratio 0, no NaN
    zero = torch.tensor(0.0, requires_grad=True)
    out = guided_loss_scale(zero, torch.tensor(1.0))
    out.backward()
    assert float(out.detach()) == 0.0 and float(zero.grad) == 0.0


def test_optimal_prior_bias_threshold_numbers():
    # The paper's example: N/N_f = 1e3, C = 80 -> π = 1.25e-5.
    assert optimal_prior(100, 100_000, 80) == pytest.approx(1.25e-5)
    # b = -log((1-π)/π) = -log(N·C/N_f - 1) = -log(79999)
    assert optimal_bias(100, 100_000, 80) == pytest.approx(-math.log(79_999))
    assert adaptive_threshold(100, 100_000) == pytest.approx(1e-3)
    assert isinstance(optimal_prior(1, 10, 2), float)
    # sigmoid(b) = π
    b = optimal_bias(37, 5000, 3)
    assert 1 / (1 + math.exp(-b)) == pytest.approx(37 / 15000)


def test_optimal_prior_bias_threshold_tensors():
    nf, n = torch.tensor(100), torch.tensor(100_000)
    prior = optimal_prior(nf, n, 80)
    assert isinstance(prior, torch.Tensor)
    assert float(prior) == pytest.approx(1.25e-5)
    assert float(optimal_bias(nf, n, torch.tensor(80))) == pytest.approx(-math.log(79_999))
    assert float(adaptive_threshold(nf, n)) == pytest.approx(1e-3)


@pytest.mark.parametrize("args", [(0, 10, 2), (5, 0, 2), (11, 10, 2), (5, 10, 0)])
def test_optimal_prior_rejects_bad_counts(args):
    with pytest.raises(SwdetError):
        optimal_prior(*args)
    with pytest.raises(SwdetError):
        optimal_bias(*args)


def test_adaptive_threshold_rejects_bad_counts():
    with pytest.raises(SwdetError):
        adaptive_threshold(0, 10)


# ---------------------------------------------------------------------------------------------
# Noisy anchors
# ---------------------------------------------------------------------------------------------


def test_cleanliness_hand_values():
    loc_a = torch.tensor([0.8, 0.4], requires_grad=True)
    cls_c = torch.tensor([0.6, 1.0], requires_grad=True)
    # α=0.75: 0.75·0.8 + 0.25·0.6 = 0.75 ; 0.75·0.4 + 0.25·1.0 = 0.55
    c = cleanliness(loc_a, cls_c)
    torch.testing.assert_close(c, torch.tensor([0.75, 0.55]))
    assert not c.requires_grad
    torch.testing.assert_close(cleanliness(loc_a, cls_c, alpha=0.5), torch.tensor([0.7, 0.7]))
    assert cleanliness(torch.zeros(0), torch.zeros(0)).shape == (0,)


def test_cleanliness_weights_hand_values():
    # f(x) = 1/(1-x): loc_a = [0.75, 0.5] -> [4, 2]; cls_c = [0, 0.5] -> [1, 2]
    # r = 0.75·f(loc) + 0.25·f(cls) = [3.25, 2.0], mean 2.625 -> [1.238095, 0.761905]
    # (with α on cls_c, as in Algorithm 1, it would be [1.75, 2.0] -> different)
    loc_a = torch.tensor([0.75, 0.5], requires_grad=True)
    cls_c = torch.tensor([0.0, 0.5])
    r = cleanliness_weights(loc_a, cls_c)
    torch.testing.assert_close(r, torch.tensor([3.25, 2.0]) / 2.625)
    assert not r.requires_grad
    torch.testing.assert_close(r.mean(), torch.tensor(1.0))
    # γ=2: r = [3.25², 4] / mean
    r2 = cleanliness_weights(loc_a, cls_c, gamma=2.0)
    torch.testing.assert_close(r2, torch.tensor([10.5625, 4.0]) / 7.28125)


def test_cleanliness_weights_clamps_and_empty():
    r = cleanliness_weights(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0]))
    assert torch.isfinite(r).all()
    assert r[0] > r[1]
    assert cleanliness_weights(torch.zeros(0), torch.zeros(0)).shape == (0,)


def test_topn_positives_hand_example():
    ious = torch.tensor(
        [
            [0.9, 0.0],
            [0.5, 0.6],
            [0.1, 0.7],
            [0.0, 0.0],
            [0.3, 0.2],
        ]
    )
    # n=2: GT 0 takes anchors 0 (0.9), 1 (0.5); GT 1 takes 2 (0.7), 1 (0.6).
    # Anchor 1 is claimed twice and goes to GT 1 (0.6 > 0.5). Anchor 4 is nobody's top 2.
    pos, gt_index = topn_positives(ious, n=2)
    assert pos.tolist() == [True, True, True, False, False]
    assert gt_index.tolist() == [0, 1, 1, -1, -1]
    # n=3: GT 0 also takes anchor 4 (0.3), GT 1 anchor 4 (0.2) -> anchor 4 goes to GT 0.
    pos, gt_index = topn_positives(ious, n=3)
    assert pos.tolist() == [True, True, True, False, True]
    assert gt_index.tolist() == [0, 1, 1, -1, 0]


def test_topn_positives_ties_zero_iou_and_small_a():
    # Ties at the n-th place go to the lower anchor index; IoU 0 is never claimed.
    ious = torch.tensor([[0.5], [0.5], [0.5], [0.0]])
    pos, gt_index = topn_positives(ious, n=2)
    assert pos.tolist() == [True, True, False, False]
    pos, gt_index = topn_positives(ious, n=10)  # n > A, and the IoU-0 anchor stays negative
    assert pos.tolist() == [True, True, True, False]
    assert gt_index.tolist() == [0, 0, 0, -1]


def test_topn_positives_no_gts_and_no_anchors():
    pos, gt_index = topn_positives(torch.zeros(7, 0), n=40)
    assert pos.shape == (7,) and not pos.any()
    assert gt_index.tolist() == [-1] * 7
    pos, gt_index = topn_positives(torch.zeros(0, 3), n=40)
    assert pos.shape == (0,) and gt_index.shape == (0,)
    with pytest.raises(SwdetError):
        topn_positives(torch.zeros(3, 2), n=0)


def test_topn_positives_random_against_loop():
    g = torch.Generator().manual_seed(0)
    ious = (torch.rand(60, 5, generator=g) * 4).floor() / 4  # ties
    n = 7
    pos, gt_index = topn_positives(ious, n=n)
    claimed = [[] for _ in range(60)]
    for j in range(5):
        col = ious[:, j].tolist()
        top = sorted(range(60), key=lambda a: (-col[a], a))[:n]
        for a in top:
            if col[a] > 0:
                claimed[a].append(j)
    for a in range(60):
        if not claimed[a]:
            assert not pos[a] and gt_index[a] == -1
        else:
            best = max(claimed[a], key=lambda j: (float(ious[a, j]), -j))
            assert pos[a] and int(gt_index[a]) == best


# ---------------------------------------------------------------------------------------------
# SWN
# ---------------------------------------------------------------------------------------------


def _swn_inputs():
    m_cls = torch.tensor([0.1, 0.3, -0.5, 3.0], dtype=torch.float64, requires_grad=True)
    m_reg = torch.tensor([0.2, 3.0, 1.0, 0.0], dtype=torch.float64, requires_grad=True)
    cls_loss = torch.tensor([1.0, 2.0, 3.0, 0.5], dtype=torch.float64, requires_grad=True)
    reg_loss = torch.tensor([0.5, 1.0, float("nan"), float("inf")], dtype=torch.float64, requires_grad=True)
    pos = torch.tensor([True, True, False, False])
    return m_cls, m_reg, cls_loss, reg_loss, pos


def test_swn_terms_code_form_one_shared_weight_exp_m():
    """The authors' RetinaNet form (defaults): m̄ = mean of the clipped m_cls over all samples,
    weight exp(-m)."""
    m_cls, m_reg, cls_loss, reg_loss, pos = _swn_inputs()
    cls_t, reg_t = swn_terms(m_cls, m_reg, cls_loss, reg_loss, pos)
    # m_cls clipped: [0.1, 0.3, -0.5, 2.0]; mean over all 0.475. cls_i = exp(-m̄) L_i + 0.5 m̄
    e = math.exp(-0.475)
    torch.testing.assert_close(cls_t, torch.tensor([e * x + 0.2375 for x in (1.0, 2.0, 3.0, 0.5)],
                                                   dtype=torch.float64))
    # m_reg clipped: [0.2, 2.0, ...]; reg_i = exp(-m) L + 0.5 m on positives, 0 on negatives
    expected_reg = [math.exp(-0.2) * 0.5 + 0.1, math.exp(-2.0) * 1.0 + 1.0, 0.0, 0.0]
    torch.testing.assert_close(reg_t, torch.tensor(expected_reg, dtype=torch.float64))
    (cls_t.sum() + reg_t.sum()).backward()
    # ∂Σcls/∂m_i = 1/4 (-e^{-m̄} ΣL + 4λ) inside the clip range; sample 3 is clipped (3.0 > 2)
    g = (-e * 6.5 + 2.0) / 4
    torch.testing.assert_close(m_cls.grad, torch.tensor([g, g, g, 0.0], dtype=torch.float64))
    torch.testing.assert_close(cls_loss.grad, torch.full((4,), e, dtype=torch.float64))
    torch.testing.assert_close(m_reg.grad, torch.tensor([-math.exp(-0.2) * 0.5 + 0.5, 0, 0, 0], dtype=torch.float64))
    torch.testing.assert_close(reg_loss.grad, torch.tensor([math.exp(-0.2), math.exp(-2.0), 0, 0], dtype=torch.float64))


def test_swn_terms_paper_form_pos_neg_means_exp_2m():
    m_cls, m_reg, cls_loss, reg_loss, pos = _swn_inputs()
    cls_t, reg_t = swn_terms(m_cls, m_reg, cls_loss, reg_loss, pos, lam=0.5, clip=2.0, exp_scale=2.0,
                             groups="pos_neg")
    # m_cls clipped: [0.1, 0.3, -0.5, 2.0]; mean over positives 0.2, over negatives 0.75.
    # cls_i = exp(-2 m̄) L_i + 0.5 m̄
    e_pos, e_neg = math.exp(-0.4), math.exp(-1.5)
    expected_cls = [e_pos * 1.0 + 0.1, e_pos * 2.0 + 0.1, e_neg * 3.0 + 0.375, e_neg * 0.5 + 0.375]
    torch.testing.assert_close(cls_t, torch.tensor(expected_cls, dtype=torch.float64))
    # m_reg clipped: [0.2, 2.0, ...]; reg_i = exp(-2 m) L + 0.5 m on positives, 0 on negatives
    expected_reg = [math.exp(-0.4) * 0.5 + 0.1, math.exp(-4.0) * 1.0 + 1.0, 0.0, 0.0]
    torch.testing.assert_close(reg_t, torch.tensor(expected_reg, dtype=torch.float64))
    (cls_t.sum() + reg_t.sum()).backward()
    # ∂Σcls/∂m_i (positive i) = 1/|P| Σ_{j∈P} (-2 e^{-2m̄} L_j + λ) = 0.5·(-2 e_pos·3 + 1)
    g_pos = 0.5 * (-2 * e_pos * 3.0 + 2 * 0.5)
    # negatives: sample 2 inside the clip range, sample 3 clipped (3.0 > 2): no gradient
    g_neg = 0.5 * (-2 * e_neg * 3.5 + 2 * 0.5)
    torch.testing.assert_close(m_cls.grad, torch.tensor([g_pos, g_pos, g_neg, 0.0], dtype=torch.float64))
    torch.testing.assert_close(cls_loss.grad, torch.tensor([e_pos, e_pos, e_neg, e_neg], dtype=torch.float64))
    # ∂reg/∂m = -2 e^{-2m} L + λ inside the clip range; clipped sample 1 and negatives: 0
    torch.testing.assert_close(
        m_reg.grad, torch.tensor([-2 * e_pos * 0.5 + 0.5, 0.0, 0.0, 0.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        reg_loss.grad, torch.tensor([e_pos, math.exp(-4.0), 0.0, 0.0], dtype=torch.float64)
    )
    assert all(torch.isfinite(t.grad).all() for t in (m_cls, m_reg, cls_loss, reg_loss))


def test_swn_loss_one_regularizer_per_shared_weight_and_batch_mean_regularizers():
    m_cls, m_reg, cls_loss, reg_loss, pos = (t.detach() for t in _swn_inputs())
    # the code's RetinaNet form, normalizers N1 = N2 = 2 (the positives)
    cls, reg, w = swn_loss(m_cls, m_reg, cls_loss, reg_loss, pos, 2.0, 2.0)
    e = math.exp(-0.475)
    torch.testing.assert_close(cls, torch.tensor(e * 6.5 / 2 + 0.5 * 0.475, dtype=torch.float64))
    # Σ_pos e^{-m} L / N2 + λ · mean_pos(m_reg) -- the regularizer is a mean, not divided by N2
    reg_expected = (math.exp(-0.2) * 0.5 + math.exp(-2.0)) / 2 + 0.5 * (0.2 + 2.0) / 2
    torch.testing.assert_close(reg, torch.tensor(reg_expected, dtype=torch.float64))
    torch.testing.assert_close(w["w_cls_pos"], torch.tensor(e, dtype=torch.float64))
    torch.testing.assert_close(w["w_cls_neg"], torch.tensor(e, dtype=torch.float64))
    torch.testing.assert_close(w["w_reg"], torch.tensor((math.exp(-0.2) + math.exp(-2.0)) / 2, dtype=torch.float64))
    # the paper's form on a RoI head (pos_neg, exp(-2m)), normalizers 4 (the sampled RoIs):
    # one regularizer for the positives' weight and one for the negatives'
    cls, reg, w = swn_loss(m_cls, m_reg, cls_loss, reg_loss, pos, 4.0, 4.0, exp_scale=2.0, groups="pos_neg")
    e_pos, e_neg = math.exp(-0.4), math.exp(-1.5)
    torch.testing.assert_close(cls, torch.tensor((e_pos * 3 + e_neg * 3.5) / 4 + 0.5 * (0.2 + 0.75),
                                                 dtype=torch.float64))
    torch.testing.assert_close(reg, torch.tensor((math.exp(-0.4) * 0.5 + math.exp(-4.0)) / 4 + 0.5 * 1.1,
                                                 dtype=torch.float64))
    torch.testing.assert_close(w["w_cls_neg"], torch.tensor(e_neg, dtype=torch.float64))
    # the loss is the per-sample terms with each shared weight's regularizer counted once
    cls_t, reg_t = swn_terms(m_cls, m_reg, cls_loss, reg_loss, pos, exp_scale=2.0, groups="pos_neg")
    m_bar = torch.tensor([0.2, 0.2, 0.75, 0.75], dtype=torch.float64)
    torch.testing.assert_close(cls, (cls_t - 0.5 * m_bar).sum() / 4 + 0.5 * (0.2 + 0.75))


def test_swn_valid_mask_excludes_padding_from_terms_and_means():
    m_cls, m_reg, cls_loss, reg_loss, pos = (t.detach() for t in _swn_inputs())
    valid = torch.tensor([True, True, True, False])
    cls_t, _ = swn_terms(m_cls, m_reg, cls_loss, reg_loss, pos, valid=valid)
    m_bar = (0.1 + 0.3 - 0.5) / 3
    expected = [math.exp(-m_bar) * x + 0.5 * m_bar for x in (1.0, 2.0, 3.0)] + [0.0]
    torch.testing.assert_close(cls_t, torch.tensor(expected, dtype=torch.float64))
    cls, _, _ = swn_loss(m_cls, m_reg, cls_loss, reg_loss, pos, 1.0, 1.0, valid=valid)
    torch.testing.assert_close(cls, torch.tensor(math.exp(-m_bar) * 6.0 + 0.5 * m_bar, dtype=torch.float64))
    with pytest.raises(ValueError, match="groups"):
        swn_terms(m_cls, m_reg, cls_loss, reg_loss, pos, groups="per_class")


def test_swn_terms_empty_and_one_sided():
    z = torch.zeros(0)
    for groups in ("all", "pos_neg"):
        cls_t, reg_t = swn_terms(z, z, z, z, torch.zeros(0, dtype=torch.bool), groups=groups)
        assert cls_t.shape == (0,) and reg_t.shape == (0,)
        cls, reg, _ = swn_loss(z, z, z, z, torch.zeros(0, dtype=torch.bool), 1.0, 1.0, groups=groups)
        assert float(cls) == 0.0 and float(reg) == 0.0
    # all negatives: no positive mean needed, reg terms all 0
    m = torch.tensor([0.5, -0.5])
    cls_t, reg_t = swn_terms(m, m, torch.ones(2), torch.ones(2), torch.zeros(2, dtype=torch.bool), lam=1.0,
                             groups="pos_neg")
    torch.testing.assert_close(cls_t, torch.ones(2))  # m̄ = 0
    torch.testing.assert_close(reg_t, torch.zeros(2))


# ---------------------------------------------------------------------------------------------
# CUDA
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@requires_cuda
def test_iou_hlr_and_isr_cuda():
    dev = torch.device("cuda")
    rank = iou_hlr_rank(HLR_IOUS.to(dev), HLR_GTS.to(dev), HLR_LABELS.to(dev))
    assert rank.device.type == "cuda"
    assert rank.cpu().tolist() == HLR_EXPECTED
    g = torch.Generator().manual_seed(3)
    ious = torch.randint(0, 6, (500,), generator=g).float() / 5
    gts = torch.randint(0, 50, (500,), generator=g)
    labels = gts % 7
    cpu = isr_weights(ious, gts, labels)
    gpu = isr_weights(ious.to(dev), gts.to(dev), labels.to(dev))
    torch.testing.assert_close(gpu.cpu(), cpu)


@pytest.mark.gpu
@requires_cuda
def test_carl_swn_topn_cuda():
    dev = torch.device("cuda")
    p = torch.tensor([0.2, 0.5, 0.9, 0.7], dtype=torch.float64, device=dev, requires_grad=True)
    reg = torch.tensor([2.0, 1.0, 0.3, 0.5], dtype=torch.float64, device=dev)
    carl_loss(p, reg).backward()
    torch.testing.assert_close(p.grad.cpu(), _carl_analytic_grad(p.detach().cpu(), reg.cpu(), 1.0, 0.1))
    m_cls, m_reg, cls_loss, reg_loss, pos = (t.detach().to(dev) for t in _swn_inputs())
    cls_t, reg_t = swn_terms(m_cls, m_reg, cls_loss, reg_loss, pos)
    cls_c, reg_c = swn_terms(*(t.detach() for t in _swn_inputs()))
    torch.testing.assert_close(cls_t.cpu(), cls_c)
    torch.testing.assert_close(reg_t.cpu(), reg_c)
    ious = torch.rand(300, 6, generator=torch.Generator().manual_seed(1))
    pos_c, idx_c = topn_positives(ious, n=9)
    pos_g, idx_g = topn_positives(ious.to(dev), n=9)
    assert torch.equal(pos_g.cpu(), pos_c) and torch.equal(idx_g.cpu(), idx_c)
