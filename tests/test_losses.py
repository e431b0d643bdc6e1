"""Tests of swdet.train.losses: hand-computed values of the elementwise base losses."""

from __future__ import annotations

import math

import pytest
import torch

from swdet.train.losses import (binary_cross_entropy, ghm_c_loss, ghm_r_loss, giou_loss, l1, sigmoid_focal_loss,
                                 smooth_l1)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")

LN2 = math.log(2.0)


# ---------------------------------------------------------------------------------------------
# BCE and focal loss
# ---------------------------------------------------------------------------------------------


def test_binary_cross_entropy_hand_values_and_stability():
    logits = torch.tensor([[0.0, 2.0], [100.0, -100.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # x=0,t=1: log 2 ; x=2,t=0: log(1+e^2) ; x=100,t=0: ≈100 ; x=-100,t=1: ≈100
    expected = torch.tensor([[LN2, math.log1p(math.exp(2.0))], [100.0, 100.0]])
    out = binary_cross_entropy(logits, targets)
    assert out.shape == (2, 2)
    torch.testing.assert_close(out, expected)
    # soft target t=0.5 at x=0: -(0.5 log .5 + 0.5 log .5) = log 2
    torch.testing.assert_close(binary_cross_entropy(torch.zeros(1, 1), torch.full((1, 1), 0.5)), torch.tensor([[LN2]]))


def test_sigmoid_focal_loss_hand_values():
    x = torch.tensor([[0.0, 0.0, math.log(3.0)]])  # p = 0.5, 0.5, 0.75
    t = torch.tensor([[1.0, 0.0, 1.0]])
    # t=1, p=.5: α (1-p)^2 (-log p) = 0.25 · 0.25 · log 2
    # t=0, p=.5: (1-α) p^2 (-log(1-p)) = 0.75 · 0.25 · log 2
    # t=1, p=.75: 0.25 · 0.0625 · (-log 0.75)
    expected = torch.tensor([[0.0625 * LN2, 0.1875 * LN2, 0.25 * 0.0625 * -math.log(0.75)]])
    torch.testing.assert_close(sigmoid_focal_loss(x, t), expected)


def test_sigmoid_focal_loss_soft_target():
    # t=0.5, p=0.75: α_t = 0.25·0.5 + 0.75·0.5 = 0.5 ; |t-p|^2 = 0.0625 ;
    # BCE = -(0.5 log 0.75 + 0.5 log 0.25)
    x = torch.tensor([[math.log(3.0)]])
    t = torch.tensor([[0.5]])
    bce = -(0.5 * math.log(0.75) + 0.5 * math.log(0.25))
    torch.testing.assert_close(sigmoid_focal_loss(x, t), torch.tensor([[0.5 * 0.0625 * bce]]))


def test_sigmoid_focal_loss_equals_hard_formula_on_random_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 7, generator=g, dtype=torch.float64) * 3
    t = (torch.rand(50, 7, generator=g) > 0.7).double()
    p = torch.sigmoid(x)
    hard = torch.where(
        t == 1, -0.25 * (1 - p) ** 2 * torch.log(p), -0.75 * p**2 * torch.log(1 - p)
    )
    torch.testing.assert_close(sigmoid_focal_loss(x, t), hard)
    # gamma=0 and alpha<0: plain BCE
    torch.testing.assert_close(sigmoid_focal_loss(x, t, alpha=-1, gamma=0.0), binary_cross_entropy(x, t))


def test_sigmoid_focal_loss_gradient_and_empty():
    x = torch.tensor([[0.3, -1.2]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: sigmoid_focal_loss(z, t), (x,))
    assert sigmoid_focal_loss(torch.zeros(0, 80), torch.zeros(0, 80)).shape == (0, 80)


# ---------------------------------------------------------------------------------------------
# GHM-C
# ---------------------------------------------------------------------------------------------


def _ghm_example():
    # 5 rows, 1 class. g = |p - t|:
    #   x=10, t=1 -> g ≈ 4.5e-5 (bin 0) ; x=-10, t=0 -> bin 0 ; x=10, t=1 -> bin 0
    #   x=0, t=1 -> g = 0.5 (bin 5, [0.5, 0.6)) ; x=0, t=0 -> bin 5
    logits = torch.tensor([[10.0], [-10.0], [10.0], [0.0], [0.0]])
    targets = torch.tensor([[1.0], [0.0], [1.0], [1.0], [0.0]])
    return logits, targets


def test_ghm_c_loss_hand_values():
    logits, targets = _ghm_example()
    loss, _ = ghm_c_loss(logits, targets, bins=10, momentum=0.0)
    # counts R = [3, 0, 0, 0, 0, 2, 0, 0, 0, 0], N = 5, n (non-empty bins) = 2
    # β = N / (n · R): bin 0 -> 5/6, bin 5 -> 5/4 ; returned loss = β · BCE / N
    bce = binary_cross_entropy(logits, targets)
    factor = torch.tensor([[1 / 6], [1 / 6], [1 / 6], [1 / 4], [1 / 4]])
    torch.testing.assert_close(loss, bce * factor)
    # the sum is the GHM-C loss 1/N Σ β_i BCE_i (caller divides by 1)
    beta = torch.tensor([[5 / 6], [5 / 6], [5 / 6], [5 / 4], [5 / 4]])
    torch.testing.assert_close(loss.sum(), (beta * bce).sum() / 5)


def test_ghm_c_loss_valid_mask_and_ema_from_zero():
    logits, targets = _ghm_example()
    valid = torch.tensor([True, True, True, True, False])
    loss, acc = ghm_c_loss(logits, targets, valid=valid, bins=10, momentum=0.75)
    # the running average starts at zero (the authors' code): S = 0.25 · R = [0.75, .., 0.25 (bin 5), ..]
    torch.testing.assert_close(acc, torch.tensor([0.75, 0, 0, 0, 0, 0.25, 0, 0, 0, 0]))
    bce = binary_cross_entropy(logits, targets)
    # per-element factor 1 / (n · S), n = 2: bin 0 -> 1/1.5, bin 5 -> 1/0.5
    torch.testing.assert_close(loss[:4, 0], bce[:4, 0] * torch.tensor([1 / 1.5, 1 / 1.5, 1 / 1.5, 2.0]))
    assert float(loss[4, 0]) == 0.0
    # second call with all rows: R = [3, .., 2, ..]; S = 0.75·S_prev + 0.25·R = [1.3125, .., 0.6875, ..]
    loss2, acc2 = ghm_c_loss(logits, targets, bins=10, momentum=0.75, acc_sum=acc)
    torch.testing.assert_close(acc2[[0, 5]], torch.tensor([1.3125, 0.6875]))
    torch.testing.assert_close(loss2[:, 0], bce[:, 0] / (2 * torch.tensor([1.3125] * 3 + [0.6875] * 2)))
    # a region no element falls in keeps its running value (only populated regions update)
    loss3, acc3 = ghm_c_loss(logits[:3], targets[:3], bins=10, momentum=0.75, acc_sum=acc2)
    torch.testing.assert_close(acc3[[0, 5]], torch.tensor([0.75 * 1.3125 + 0.75, 0.6875]))


def test_ghm_c_loss_per_level_histograms_share_one_running_average():
    """Hand-computed: two FPN levels, 4 bins, momentum 0.5. The levels update the running
    average in order, each with its own counts, element total and non-empty count."""
    # g = |σ(x) - t|: x=±10 -> g≈0 (bin 0); x=0 -> g=0.5 (bin 2); x=2.2, t=0 -> g=0.900 (bin 3)
    logits = torch.tensor([[10.0], [0.0], [0.0], [-10.0], [10.0], [2.2]])
    targets = torch.tensor([[1.0], [1.0], [0.0], [0.0], [1.0], [0.0]])
    levels = torch.tensor([0, 0, 0, 1, 1, 1])
    loss, acc = ghm_c_loss(logits, targets, bins=4, momentum=0.5, levels=levels, num_levels=2)
    # level 0: R = [1, 0, 2, 0] -> S = [0.5, 0, 1.0, 0], n = 2 -> factors 1/(2·0.5), 1/(2·1), 1/(2·1)
    # level 1: R = [2, 0, 0, 1] -> S = [0.5·0.5 + 0.5·2, 0, 1.0, 0.5] = [1.25, 0, 1.0, 0.5], n = 2
    #          -> factors 1/(2·1.25), 1/(2·1.25), 1/(2·0.5)
    torch.testing.assert_close(acc, torch.tensor([1.25, 0.0, 1.0, 0.5]))
    bce = binary_cross_entropy(logits, targets)[:, 0]
    factor = torch.tensor([1.0, 0.5, 0.5, 0.4, 0.4, 1.0])
    torch.testing.assert_close(loss[:, 0], bce * factor)
    # one histogram over both levels differs: R = [3, 0, 2, 1], S = 0.5·R, n = 3
    flat, _ = ghm_c_loss(logits, targets, bins=4, momentum=0.5)
    torch.testing.assert_close(flat[:, 0], bce / (3 * 0.5 * torch.tensor([3.0, 2, 2, 3, 3, 1])))


def test_ghm_c_loss_multiclass_gradient_and_empty():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 3, generator=g, dtype=torch.float64, requires_grad=True)
    t = (torch.rand(20, 3, generator=g) > 0.8).double()
    loss, _ = ghm_c_loss(x, t, valid=torch.arange(20) % 4 != 0)
    assert loss.shape == (20, 3)
    assert (loss[::4] == 0).all()
    loss.sum().backward()
    # weights carry no gradient: ∂(w·BCE)/∂x = w · (p - t), with w = loss / BCE
    w = (loss / binary_cross_entropy(x, t)).detach()
    torch.testing.assert_close(x.grad, w * (torch.sigmoid(x.detach()) - t))
    loss, acc = ghm_c_loss(torch.zeros(0, 3), torch.zeros(0, 3))
    assert loss.shape == (0, 3) and acc.shape == (30,)


def test_ghm_r_loss_hand_values_per_level_with_running_average():
    """Hand-computed GHM-R: two levels, 10 regions, momentum 0.7 from zero; the gradient norm of
    ASL1 is |d| / sqrt(d² + μ²)."""
    mu = 0.02
    pred = torch.tensor([[0.0, 0.1, -0.5, 0.01], [0.3, 0.0, 0.0, 2.0]], requires_grad=True)
    target = torch.zeros(2, 4)
    loss, acc = ghm_r_loss(pred, target, mu=mu, bins=10, momentum=0.7, levels=torch.tensor([0, 1]), num_levels=2)
    asl1 = torch.sqrt(pred.detach() ** 2 + mu * mu) - mu
    # level 0: gr = 0, 0.981, 0.999, 0.447 -> regions 0, 9, 9, 4: R = {0: 1, 4: 1, 9: 2}, n = 3;
    #   S = 0.3·R = {0: 0.3, 4: 0.3, 9: 0.6}
    # level 1: gr = 0.998, 0, 0, 1.000 -> regions 9, 0, 0, 9: R = {0: 2, 9: 2}, n = 2;
    #   S_0 = 0.7·0.3 + 0.3·2 = 0.81, S_9 = 0.7·0.6 + 0.3·2 = 1.02, S_4 stays 0.3
    factor = torch.tensor([[1 / (3 * 0.3), 1 / (3 * 0.6), 1 / (3 * 0.6), 1 / (3 * 0.3)],
                           [1 / (2 * 1.02), 1 / (2 * 0.81), 1 / (2 * 0.81), 1 / (2 * 1.02)]])
    torch.testing.assert_close(loss, asl1 * factor)
    expected_acc = torch.zeros(10)
    expected_acc[[0, 4, 9]] = torch.tensor([0.81, 0.3, 1.02])
    torch.testing.assert_close(acc, expected_acc)
    # the weights carry no gradient: d(w·ASL1)/dd = w · d / sqrt(d² + μ²)
    loss.sum().backward()
    d = pred.detach()
    torch.testing.assert_close(pred.grad, factor * d / torch.sqrt(d * d + mu * mu))
    # no EMA, one histogram: R = {0: 3, 4: 1, 9: 4}, n = 3, weight 1 / (3 · R)
    flat, acc0 = ghm_r_loss(pred.detach(), target, mu=mu, bins=10, momentum=0.0)
    r = torch.tensor([[3.0, 4, 4, 1], [4, 3, 3, 4]])
    torch.testing.assert_close(flat, asl1 / (3 * r))
    assert float(acc0.abs().sum()) == 0.0
    # no positives: an empty loss, the running average unchanged
    empty, acc2 = ghm_r_loss(torch.zeros(0, 4), torch.zeros(0, 4), acc_sum=acc, levels=torch.zeros(0, dtype=torch.long),
                             num_levels=2)
    assert empty.shape == (0, 4)
    torch.testing.assert_close(acc2, acc)


# ---------------------------------------------------------------------------------------------
# Box losses
# ---------------------------------------------------------------------------------------------


def test_smooth_l1_and_l1_hand_values():
    target = torch.zeros(1, 4)
    pred = torch.tensor([[0.05, 0.2, -1.0, 0.0]])
    # β = 1/9: 0.5·0.05²·9 = 0.01125 ; 0.2 - 1/18 ; 1 - 1/18 ; 0
    expected = 0.01125 + (0.2 - 1 / 18) + (1.0 - 1 / 18)
    out = smooth_l1(pred, target)
    assert out.shape == (1,)
    torch.testing.assert_close(out, torch.tensor([expected]))
    torch.testing.assert_close(smooth_l1(pred, target, beta=0.0), torch.tensor([1.25]))
    torch.testing.assert_close(l1(pred, target), torch.tensor([1.25]))
    # β = 1: all |d| < 1 except -1.0 -> 0.5·(0.0025 + 0.04) + (1 - 0.5)
    torch.testing.assert_close(smooth_l1(pred, target, beta=1.0), torch.tensor([0.02125 + 0.5]))
    assert smooth_l1(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0,)


def test_giou_loss_hand_values():
    pred = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    target = torch.tensor([[0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 3.0, 1.0], [1.0, 1.0, 3.0, 3.0]])
    # identical -> 0 ; disjoint: IoU 0, hull 3, union 2 -> GIoU -1/3 -> 4/3 ;
    # overlap: inter 1, union 7, hull 9 -> GIoU 1/7 - 2/9 -> 1 - 1/7 + 2/9
    expected = torch.tensor([0.0, 4 / 3, 1 - 1 / 7 + 2 / 9])
    torch.testing.assert_close(giou_loss(pred, target), expected)
    assert giou_loss(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0,)


# ---------------------------------------------------------------------------------------------
# CUDA
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@requires_cuda
def test_losses_cuda_match_cpu():
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g)
    t = (torch.rand(64, 5, generator=g) > 0.8).float()
    torch.testing.assert_close(sigmoid_focal_loss(x.to(dev), t.to(dev)).cpu(), sigmoid_focal_loss(x, t))
    loss_c, acc_c = ghm_c_loss(x, t)
    loss_g, acc_g = ghm_c_loss(x.to(dev), t.to(dev))
    torch.testing.assert_close(loss_g.cpu(), loss_c)
    torch.testing.assert_close(acc_g.cpu(), acc_c)
    logits, targets = _ghm_example()
    loss, _ = ghm_c_loss(logits.to(dev), targets.to(dev), bins=10, momentum=0.0)
    bce = binary_cross_entropy(logits, targets)
    torch.testing.assert_close(loss.cpu(), bce * torch.tensor([[1 / 6], [1 / 6], [1 / 6], [1 / 4], [1 / 4]]))
