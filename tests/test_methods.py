"""The five weighting methods plugged into the general weighted loss, their composition rules,
the anchor statistics of Sampling-Free, and the shipped configs.

Records are built the way the trainer builds them: a real host-side assignment of small
synthetic GT boxes to a grid of anchors, then :func:`build_record` on random head outputs.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from swdet.boxes import BoxCoder
from swdet.config import MethodParams, load_config
from swdet.errors import SwdetError
from swdet.train.assign import IGNORE, TargetAssigner
from swdet.train.criterion import ClassificationLoss, WeightedLoss, build_record, regression_loss
from swdet.train.methods import build_methods
from swdet.train.methods.iou_balanced import IoUBalanced
from swdet.train.methods.noisy_anchors import NoisyAnchors
from swdet.train.methods.pisa import Pisa
from swdet.train.methods.sampling_free import SamplingFree
from swdet.train.methods.swn import SWN, SampleWeightingNetwork
from swdet.train.stats import anchor_statistics
from swdet.train.weighting import (
    carl_loss,
    cleanliness,
    cleanliness_weights,
    iou_balanced_cls_weights,
    iou_balanced_loc_weights,
    isr_weights,
)

C = 3  # classes
CANVAS = 64
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
METHODS = ["pisa", "iou_balanced", "sampling_free", "noisy_anchors", "swn"]


# ---------------------------------------------------------------------------------------------
# Synthetic batches


def grid_anchors(size: int = CANVAS, stride: int = 4, sides=(10.0, 16.0, 26.0)) -> torch.Tensor:
    c = (torch.arange(size // stride, dtype=torch.float32) + 0.5) * stride
    cy, cx = torch.meshgrid(c, c, indexing="ij")
    centres = torch.stack([cx, cy, cx, cy], -1).reshape(-1, 1, 4)
    half = torch.tensor([[-s / 2, -s / 2, s / 2, s / 2] for s in sides])
    return (centres + half[None]).reshape(-1, 4)  # [A, 4], A = 16*16*3 = 768


def random_targets(gen: torch.Generator, batch: int = 2, max_boxes: int = 3, empty: bool = False) -> list[dict]:
    out = []
    for _ in range(batch):
        n = 0 if empty else int(torch.randint(2, max_boxes + 1, (1,), generator=gen))
        wh = 10 + 20 * torch.rand(n, 2, generator=gen)
        xy = torch.rand(n, 2, generator=gen) * (CANVAS - wh)
        out.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, C, (n,), generator=gen)})
    return out


def make_record(seed: int = 0, rule: str = "max_iou", empty: bool = False, head: str = "retina",
                levels: bool = False):
    """``(rec, leaves)``: a record of 2 images x 768 anchors, and its leaf ``logits``/``deltas``;
    with ``levels`` each anchor size stands for an FPN level (3 levels)."""
    gen = torch.Generator().manual_seed(seed)
    anchors = grid_anchors()
    coder = BoxCoder()
    assigner = TargetAssigner(anchors, coder, rule=rule, topn=6)
    assign = assigner.assign(random_targets(gen, empty=empty))
    b, a = 2, len(anchors)
    logits = (torch.randn(b, a, C, generator=gen) - 2.0).requires_grad_()
    deltas = (0.2 * torch.randn(b, a, 4, generator=gen)).requires_grad_()
    lv = torch.arange(a) % 3 if levels else None
    rec = build_record(logits, deltas, anchors, assign, coder, head=head, anchor_levels=lv, num_levels=3)
    return rec, {"logits": logits, "deltas": deltas}


def criterion_for(spec: str, params: MethodParams | None = None):
    ms = build_methods(spec, params or MethodParams())
    return ms, WeightedLoss(ClassificationLoss(ms.cls_loss), ms.methods)


def base_losses(rec, kind: str = "focal", per_coordinate: bool = False):
    """The unweighted element-wise classification loss ``[N, C]`` and regression loss ``[P]``
    (``[P, 4]`` per coordinate)."""
    targets = torch.zeros_like(rec.logits, dtype=torch.float32)
    targets[rec.pos_idx, rec.pos_labels] = 1.0
    cls = ClassificationLoss(kind)(rec.logits.float(), targets, rec.valid)
    reg = regression_loss("smooth_l1", rec, 1.0 / 9)
    return cls, (reg if per_coordinate else reg.sum(1))


def test_synthetic_batch_has_positives_negatives_and_ignored():
    rec, _ = make_record()
    assert rec.num_positives > 5
    assert (~rec.valid).any() and (rec.valid & ~rec.pos_mask).any()
    assert rec.gt_ids.unique().numel() > 2 and rec.iou_after.std() > 0


# ---------------------------------------------------------------------------------------------
# Every method: finite loss and gradients, also without any positive


@pytest.mark.parametrize("spec", METHODS + ["pisa,swn", "iou_balanced,swn", "sampling_free,swn,bce"])
@pytest.mark.parametrize("empty", [False, True])
def test_loss_is_finite_with_finite_gradients(spec, empty):
    ms, crit = criterion_for(spec)
    rec, leaves = make_record(seed=1, rule=ms.assigner, empty=empty)
    assert (rec.num_positives == 0) == empty
    total, parts = crit(rec)
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in parts.values())
    total.backward()
    for t in leaves.values():
        assert t.grad is not None and torch.isfinite(t.grad).all()
    if empty and "sampling_free" in spec:
        # guided scaling targets the regression loss, 0 without positives: no classification step
        assert parts["cls"] == 0
    else:
        assert leaves["logits"].grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# PISA


def test_isr_keeps_positive_classification_loss_sum_and_follows_hlr():
    rec, _ = make_record(seed=2)
    cls, reg = base_losses(rec)
    w = Pisa(MethodParams().pisa).weights(rec, cls, reg)
    assert w.cls.shape == (rec.num_samples,)
    neg = ~rec.pos_mask
    assert torch.equal(w.cls[neg], torch.ones(int(neg.sum())))
    wp = w.cls[rec.pos_idx]
    # Eq. 3: the positives' total classification loss is unchanged ...
    torch.testing.assert_close((wp[:, None] * cls[rec.pos_idx]).sum(), cls[rec.pos_idx].sum())
    # ... and the weights are the ISR weights (Eq. 1-2) up to that one factor.
    ratio = wp / isr_weights(rec.iou_after, rec.gt_ids, rec.pos_labels, gamma=2.0, beta=0.0)
    torch.testing.assert_close(ratio, ratio[0].expand_as(ratio))
    assert wp.max() > 2 * wp.min()


def test_carl_term_value_and_gradient_into_positive_logits():
    rec, leaves = make_record(seed=3)
    cls, reg = base_losses(rec)
    w = Pisa(MethodParams().pisa).weights(rec, cls, reg)
    carl = w.extra["carl"]
    torch.testing.assert_close(carl, carl_loss(rec.prob_gt, reg, k=1.0, bias=0.1) / rec.num_pos)
    carl.backward()
    g = leaves["logits"].grad.reshape(-1, C)
    hit = torch.zeros_like(g, dtype=torch.bool)
    hit[rec.pos_idx, rec.pos_labels] = True
    assert (g[hit] != 0).all()  # the regression loss reaches the classifier of every positive
    assert (g[~hit] == 0).all()  # and nothing else
    assert leaves["deltas"].grad.abs().sum() > 0


def test_pisa_in_the_weighted_loss_adds_carl_and_keeps_the_plain_terms():
    _, crit = criterion_for("pisa")
    rec, _ = make_record(seed=4)
    total, parts = crit(rec)
    assert set(parts) == {"cls", "reg", "carl"}
    cls, reg = base_losses(rec)
    torch.testing.assert_close(parts["cls"], cls.sum() / rec.num_pos)  # Eq. 3 keeps the sum
    torch.testing.assert_close(parts["reg"], reg.sum() / rec.num_pos)
    torch.testing.assert_close(total.detach(), parts["cls"] + parts["reg"] + parts["carl"])


# ---------------------------------------------------------------------------------------------
# IoU-balanced


def test_iou_balanced_weights_only_the_gt_class_element_per_level():
    """The authors' code: ``(1 - t) + t·iou^η`` -- only a positive's ground-truth-class element is
    weighted, normalized so those elements' loss sum is unchanged within each FPN level."""
    rec, leaves = make_record(seed=5, levels=True)
    cls, reg = base_losses(rec)
    w = IoUBalanced(MethodParams().iou_balanced).weights(rec, cls, reg)
    assert w.cls is None and w.cls_gt.shape == (rec.num_positives,)
    gt = cls[rec.pos_idx, rec.pos_labels]
    lv = rec.levels[rec.pos_idx]
    assert lv.unique().numel() >= 2
    for level in lv.unique():
        on = lv == level
        torch.testing.assert_close((w.cls_gt[on] * gt[on]).sum(), gt[on].sum())
        ratio = w.cls_gt[on] / rec.iou_after[on].pow(1.5)
        torch.testing.assert_close(ratio, ratio[0].expand_as(ratio))
    torch.testing.assert_close(w.cls_gt, iou_balanced_cls_weights(rec.iou_after, gt, 1.5, lv, 3))
    # through the weighted loss: every other element (a positive's other classes, negatives) keeps
    # its plain focal loss and gradient
    _, crit = criterion_for("iou_balanced")
    total, parts = crit(rec)
    weighted = cls.clone()
    weighted[rec.pos_idx, rec.pos_labels] = w.cls_gt * gt
    torch.testing.assert_close(parts["cls"], weighted.sum() / rec.num_pos)
    total.backward()
    g = leaves["logits"].grad.reshape(-1, C).clone()
    leaves["logits"].grad = None
    plain, _ = base_losses(rec)
    (plain.sum() / rec.num_pos).backward()
    other = torch.ones_like(g, dtype=torch.bool)
    other[rec.pos_idx, rec.pos_labels] = False
    torch.testing.assert_close(g[other], leaves["logits"].grad.reshape(-1, C)[other])
    assert not torch.allclose(g[~other], leaves["logits"].grad.reshape(-1, C)[~other])


def test_iou_balanced_paper_reading_weights_every_element_over_the_batch():
    params = MethodParams().iou_balanced
    params.cls_elements, params.normalize = "all", "batch"
    rec, _ = make_record(seed=5, levels=True)
    cls, reg = base_losses(rec)
    w = IoUBalanced(params).weights(rec, cls, reg)
    torch.testing.assert_close(w.cls[rec.pos_idx], iou_balanced_cls_weights(rec.iou_after, cls[rec.pos_idx], 1.5))
    assert (w.cls[~rec.pos_mask] == 1).all()
    torch.testing.assert_close((w.cls[:, None] * cls).sum(), cls.sum())


def test_iou_balanced_w_loc_fixed_on_first_batch_and_survives_resume():
    params = MethodParams().iou_balanced
    method = IoUBalanced(params)
    rec1, _ = make_record(seed=6)
    cls1, reg1 = base_losses(rec1)
    w1 = method.weights(rec1, cls1, reg1)
    base = rec1.iou_after.pow(params.lam)
    assert method.w_loc == pytest.approx(float(reg1.detach().sum() / (base * reg1.detach()).sum()), rel=1e-5)
    torch.testing.assert_close((w1.reg * reg1).sum(), reg1.sum())  # batch 1: sum unchanged

    w_loc = method.w_loc
    rec2, _ = make_record(seed=7)
    cls2, reg2 = base_losses(rec2)
    w2 = method.weights(rec2, cls2, reg2)
    assert method.w_loc == w_loc  # fixed, not renormalized (the paper's choice over its Eq. 5)
    torch.testing.assert_close(w2.reg, iou_balanced_loc_weights(rec2.iou_after, params.lam, w_loc))
    assert not torch.allclose((w2.reg * reg2).sum(), reg2.sum())

    resumed = IoUBalanced(params)
    resumed.load_state_dict(method.state_dict())
    assert resumed.w_loc == w_loc
    torch.testing.assert_close(resumed.weights(rec2, cls2, reg2).reg, w2.reg)


def test_iou_balanced_w_loc_by_hand_and_not_fixed_without_positives():
    params = MethodParams().iou_balanced
    params.w_loc = 3.049
    rec, _ = make_record(seed=8)
    cls, reg = base_losses(rec)
    method = IoUBalanced(params)
    torch.testing.assert_close(method.weights(rec, cls, reg).reg, 3.049 * rec.iou_after.pow(1.5))
    method.load_state_dict({"w_loc": 1.0})
    assert method.w_loc == 3.049

    auto = IoUBalanced(MethodParams().iou_balanced)
    empty, _ = make_record(seed=8, empty=True)
    auto.weights(empty, *base_losses(empty))
    assert auto.w_loc is None  # undefined on a batch without positives: fixed on the next one
    auto.weights(rec, cls, reg)
    assert auto.w_loc is not None and auto.w_loc > 1


# ---------------------------------------------------------------------------------------------
# Sampling-Free


@pytest.mark.parametrize("head, factor", [("retina", 1.0), ("roi", 2.0)])
def test_guided_loss_scaling_sets_cls_to_factor_times_reg(head, factor):
    ms, crit = criterion_for("sampling_free")
    assert ms.cls_loss == "bce" and ms.sets_threshold and ms.needs_stats
    rec, leaves = make_record(seed=9, head=head)
    total, parts = crit(rec)
    torch.testing.assert_close(parts["cls"], factor * parts["reg"])
    # the gradient is the plain BCE's, times the detached ratio (Eq. 7)
    total.backward()
    g = leaves["logits"].grad.clone()
    cls, reg = base_losses(rec, "bce")
    plain = cls.sum() / rec.num_pos
    leaves["logits"].grad = None
    (plain * (factor * reg.sum() / rec.num_pos / plain).detach()).backward()
    torch.testing.assert_close(g, leaves["logits"].grad)


class _TinyDetector(nn.Module):
    def __init__(self):
        super().__init__()
        from swdet.models.retinanet import RetinaNetHead

        self.head = RetinaNetHead(8, 8, 1, num_anchors=9, num_classes=C)


def test_optimal_bias_initialization():
    model = _TinyDetector()
    method = SamplingFree(MethodParams().sampling_free)
    method.prepare(model, {"num_fg": 30, "num_all": 10000})
    prob = torch.sigmoid(model.head.cls_logits.bias.double())
    torch.testing.assert_close(prob, torch.full_like(prob, 30 / (10000 * C)))
    with pytest.raises(SwdetError, match="statistics"):
        method.prepare(model, None)
    with pytest.raises(SwdetError, match="set_prior"):
        method.prepare(nn.Linear(2, 2), {"num_fg": 30, "num_all": 10000})


def test_sampling_free_switches():
    params = MethodParams().sampling_free
    params.bias_init, params.adaptive_threshold = False, False
    method = SamplingFree(params)
    assert not method.needs_stats and not method.sets_threshold
    model = _TinyDetector()
    before = model.head.cls_logits.bias.clone()
    method.prepare(model, None)  # nothing to do
    assert torch.equal(model.head.cls_logits.bias, before)
    params.adaptive_threshold = True
    assert SamplingFree(params).sets_threshold and SamplingFree(params).needs_stats


# ---------------------------------------------------------------------------------------------
# Noisy anchors


def test_noisy_anchors_soft_targets_and_reweighting():
    ms, crit = criterion_for("noisy_anchors")
    assert ms.assigner == "topn" and ms.cls_loss == "focal"
    rec, _ = make_record(seed=10, rule="topn")
    assert rec.valid.all()  # top-N: nothing ignored
    method = ms.methods[0]
    c = cleanliness(rec.iou_after, rec.prob_gt.detach(), 0.75)
    r = cleanliness_weights(rec.iou_after, rec.prob_gt.detach(), 0.75, 1.0)
    torch.testing.assert_close(method.soft_targets(rec), c)
    targets = crit.targets(rec)
    torch.testing.assert_close(targets[rec.pos_idx, rec.pos_labels], c)
    assert targets.sum() == pytest.approx(float(c.sum()), rel=1e-5)  # negatives: 0
    cls, reg = base_losses(rec)
    w = method.weights(rec, cls, reg)
    torch.testing.assert_close(w.reg, r)
    torch.testing.assert_close(w.cls[rec.pos_idx], r)
    assert (w.cls[~rec.pos_mask] == 1).all()
    assert float(r.mean()) == pytest.approx(1.0)

    # Eq. 5-6 end to end: Σ r·FL(p, c) over positives + Σ FL(p, 0) over negatives; Σ r·smoothL1.
    _, parts = crit(rec)
    fl = ClassificationLoss("focal")(rec.logits.float(), targets, rec.valid)
    weight = torch.ones(rec.num_samples)
    weight[rec.pos_idx] = r
    torch.testing.assert_close(parts["cls"], (weight[:, None] * fl).sum() / rec.num_pos)
    torch.testing.assert_close(parts["reg"], (r * reg).sum() / rec.num_pos)


# ---------------------------------------------------------------------------------------------
# SWN


def _set_output_bias(net: SampleWeightingNetwork, m_cls: float, m_reg: float) -> None:
    with torch.no_grad():
        net.W[-1].bias.copy_(torch.tensor([m_cls, m_reg]))


def test_swn_network_init_and_optimizer():
    params = MethodParams().swn
    method = SWN(params)
    net = method.module()
    assert isinstance(net, SampleWeightingNetwork) and method.module() is net
    lin = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert len(lin) == 4 * 2 + 2  # F, G, H, K (two layers each) and W (two layers, 2 outputs)
    assert net.G[0].in_features == 4 and net.W[0].in_features == 4 * 64 and net.W[-1].out_features == 2
    assert all(float(m.weight.detach().std()) < 1e-3 for m in lin if m.weight.numel() > 8)
    m_cls, m_reg = net(torch.rand(50) * 5, torch.rand(50, 4), torch.rand(50), torch.rand(50))
    assert m_cls.shape == m_reg.shape == (50,) and m_cls.abs().max() < 1e-3  # uniform weights at start
    opt = method.optimizer(net)
    assert isinstance(opt, torch.optim.Adam)
    assert opt.defaults["lr"] == 1e-3 and opt.defaults["weight_decay"] == 1e-4
    assert not opt.defaults.get("fused")
    ms = build_methods("swn", MethodParams())
    mods = ms.modules()
    assert list(mods) == ["swn"] and mods["swn"] is ms.methods[0].module()


def test_swn_retinanet_one_weight_over_every_anchor_and_diagnostics():
    """The authors' RetinaNet head: exp(-m̄) with m̄ the mean over every anchor of the batch (the
    ignored ones too), one regularizer λ·m̄; regression weight exp(-m) per positive with the
    positives' mean regularizer; both normalized by the positives."""
    ms, crit = criterion_for("swn")
    method = ms.methods[0]
    method.pieces_on_cpu = False  # the network's output is replaced per sample below
    rec, _ = make_record(seed=11)
    assert (~rec.valid).any()
    pos, valid = rec.pos_mask, rec.valid
    m_cls = torch.where(pos, 0.2, torch.where(valid, 0.1, 1.5))
    m_reg = torch.full((rec.num_samples,), -0.2)
    method.net.forward = lambda *inputs: (m_cls, m_reg)
    _, parts = crit(rec)
    cls, reg = base_losses(rec)
    m_bar = float(m_cls.mean())  # over every anchor, ignored ones included
    lam = 0.5
    torch.testing.assert_close(parts["cls"], math.exp(-m_bar) * cls.sum() / rec.num_pos + lam * m_bar,
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts["reg"], math.exp(0.2) * reg.sum() / rec.num_pos + lam * -0.2,
                               rtol=1e-5, atol=1e-5)
    diag = ms.diagnostics()
    assert set(diag) == {"swn/w_cls_pos", "swn/w_cls_neg", "swn/w_reg"}
    assert float(diag["swn/w_cls_pos"]) == pytest.approx(math.exp(-m_bar), rel=1e-4)
    assert float(diag["swn/w_cls_neg"]) == pytest.approx(math.exp(-m_bar), rel=1e-4)
    assert float(diag["swn/w_reg"]) == pytest.approx(math.exp(0.2), rel=1e-4)


def test_swn_roi_head_positive_and_negative_means_over_sampled_rois():
    """The authors' Faster R-CNN: in a RoI head the positives and the negatives each share the
    mean of their m^cls (over the sampled RoIs, not the padding), each mean with its regularizer."""
    ms, crit = criterion_for("swn")
    method = ms.methods[0]
    assert method.groups("roi") == "pos_neg" and method.groups("retina") == "all"
    rec, _ = make_record(seed=17, head="roi")
    pos, valid = rec.pos_mask, rec.valid
    m_cls = torch.where(pos, 0.2, torch.where(valid, 0.1, 1.5))  # padding (ignored): far off
    m_reg = torch.full((rec.num_samples,), -0.1)
    method.net.forward = lambda *inputs: (m_cls, m_reg)
    _, parts = crit(rec)
    cls, reg = base_losses(rec)
    per = cls.sum(1)
    neg = valid & ~pos
    want = (math.exp(-0.2) * per[pos].sum() + math.exp(-0.1) * per[neg].sum()) / rec.num_pos \
        + 0.5 * (0.2 + 0.1)
    torch.testing.assert_close(parts["cls"], want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts["reg"], math.exp(0.1) * reg.sum() / rec.num_pos - 0.5 * 0.1,
                               rtol=1e-5, atol=1e-5)
    assert float(ms.diagnostics()["swn/w_cls_neg"]) == pytest.approx(math.exp(-0.1), rel=1e-4)


def test_swn_paper_form_is_selectable():
    params = MethodParams()
    params.swn.exp_scale, params.swn.groups = 2.0, "pos_neg"
    ms, crit = criterion_for("swn", params)
    _set_output_bias(ms.methods[0].net, 0.3, -0.2)
    rec, _ = make_record(seed=11)
    _, parts = crit(rec)
    cls, reg = base_losses(rec)
    neg = ~rec.pos_mask  # a dense head's samples are all its anchors
    assert neg.any()
    torch.testing.assert_close(parts["cls"], math.exp(-0.6) * cls.sum() / rec.num_pos + 0.5 * (0.3 + 0.3),
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(parts["reg"], math.exp(0.4) * reg.sum() / rec.num_pos - 0.5 * 0.2,
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("tasks", [["cls"], ["reg"]])
def test_swn_one_task_only_keeps_the_other_unweighted(tasks):
    """The paper's Table 4 ablation: the task left out keeps weight 1 and no regularizer."""
    params = MethodParams()
    params.swn.tasks = tasks
    ms, crit = criterion_for("swn", params)
    _set_output_bias(ms.methods[0].net, 0.3, -0.2)
    rec, _ = make_record(seed=11)
    _, parts = crit(rec)
    cls, reg = base_losses(rec)
    want_cls = (math.exp(-0.3) * cls.sum() / rec.num_pos + 0.5 * 0.3) if "cls" in tasks else cls.sum() / rec.num_pos
    want_reg = (math.exp(0.2) * reg.sum() / rec.num_pos - 0.5 * 0.2) if "reg" in tasks else reg.sum() / rec.num_pos
    torch.testing.assert_close(parts["cls"], want_cls, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(parts["reg"], want_reg, rtol=1e-4, atol=1e-4)


def test_swn_network_sees_the_per_coordinate_regression_loss():
    ms, crit = criterion_for("swn")
    swn = ms.methods[0]
    swn.pieces_on_cpu = False  # the network on every sample: the negatives' inputs are seen too
    seen = {}
    swn.net.G.register_forward_hook(lambda module, inputs, output: seen.update(reg=inputs[0].detach()))
    rec, _ = make_record(seed=15)
    crit(rec)
    _, reg4 = base_losses(rec, per_coordinate=True)
    assert seen["reg"].shape == (rec.num_samples, 4)
    torch.testing.assert_close(seen["reg"][rec.pos_idx], reg4)
    assert (seen["reg"][~rec.pos_mask] == 0).all()
    params = MethodParams()
    params.swn.reg_inputs = 1
    ms1, crit1 = criterion_for("swn", params)
    ms1.methods[0].pieces_on_cpu = False
    ms1.methods[0].net.G.register_forward_hook(lambda module, inputs, output: seen.update(reg1=inputs[0].detach()))
    crit1(rec)
    torch.testing.assert_close(seen["reg1"][rec.pos_idx, 0], reg4.sum(1))


def test_swn_clips_the_weights():
    ms, crit = criterion_for("swn")
    _set_output_bias(ms.methods[0].net, 5.0, -5.0)  # beyond the clip [-2, 2]
    rec, _ = make_record(seed=12)
    _, parts = crit(rec)
    cls, reg = base_losses(rec)
    torch.testing.assert_close(parts["cls"], math.exp(-2.0) * cls.sum() / rec.num_pos + 0.5 * 2.0,
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(parts["reg"], math.exp(2.0) * reg.sum() / rec.num_pos - 0.5 * 2.0,
                               rtol=1e-4, atol=1e-4)


def _spread_network(net: SampleWeightingNetwork, seed: int, out_scale: float) -> None:
    """Weights of a trained-looking network: kinks inside the loss range, larger outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.4)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)
        net.W[-1].weight.mul_(out_scale)


@pytest.mark.parametrize("case", ["near_init", "spread", "partly_clipped"])
def test_swn_negatives_from_the_network_pieces_equal_the_network_on_every_anchor(case):
    """The CPU path (SampleWeightingNetwork.clipped_cls_sum for the negatives) gives the loss and
    the gradients of running the network on every anchor: float64 checks the arithmetic, float32
    the trainer's precision (the issue's "same loss values to 1e-6")."""
    rec, _ = make_record(seed=21)
    cls, reg4 = base_losses(rec, per_coordinate=True)
    cls, reg4 = cls.sum(1).detach(), reg4.detach()
    state = SWN(MethodParams().swn).net.state_dict()
    if case != "near_init":
        net = SWN(MethodParams().swn).net
        _spread_network(net, 0, 1.0 if case == "partly_clipped" else 0.1)
        if case == "partly_clipped":  # shift the output so the clip at -2 cuts the negatives in two
            z = torch.zeros(rec.num_samples)
            with torch.no_grad():
                m, _ = net(cls, torch.zeros(rec.num_samples, 4), z, z)
                net.W[-1].bias[0] += -2.0 - m[~rec.pos_mask].median()
                m, _ = net(cls, torch.zeros(rec.num_samples, 4), z, z)
            assert 0.2 < float((m[~rec.pos_mask] < -2.0).float().mean()) < 0.8
        state = net.state_dict()
    out = {}
    for dtype in (torch.float64, torch.float32):
        for fast in (True, False):
            method = SWN(MethodParams().swn)
            method.net.load_state_dict(state)
            method.net.to(dtype)
            method.pieces_on_cpu = fast
            total = sum(method.reduce(rec, cls.to(dtype), reg4.to(dtype))[:2])
            total.backward()
            out[dtype, fast] = (total.detach(), [q.grad.clone() for q in method.net.parameters()])
    ref_loss, ref_grads = out[torch.float64, False]
    # float64: the same arithmetic
    torch.testing.assert_close(out[torch.float64, True][0], ref_loss, rtol=1e-10, atol=1e-10)
    for a, b in zip(out[torch.float64, True][1], ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9 * max(1e-3, float(b.abs().max())))
    # float32, the trainer's precision: the same loss value to 1e-6, gradients as close to the
    # float64 reference as the float32 network on every anchor is (or closer)
    torch.testing.assert_close(out[torch.float32, True][0], out[torch.float32, False][0], rtol=1e-6, atol=1e-6)
    for fast_g, dense_g, b in zip(out[torch.float32, True][1], out[torch.float32, False][1], ref_grads):
        scale = float(b.abs().max()) + 1e-12
        err_fast = float((fast_g.double() - b).abs().max()) / scale
        err_dense = float((dense_g.double() - b).abs().max()) / scale
        assert err_fast <= max(err_dense, 1e-5), (err_fast, err_dense)


def test_swn_gradients_reach_its_parameters_and_the_detector():
    ms, crit = criterion_for("swn")
    net = ms.methods[0].net
    rec, leaves = make_record(seed=13)
    total, _ = crit(rec)
    total.backward()
    assert leaves["logits"].grad.abs().sum() > 0 and leaves["deltas"].grad.abs().sum() > 0
    assert (net.W[-1].bias.grad.abs() > 0).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    assert any(p.grad.abs().sum() > 0 for p in net.F.parameters())
    # one Adam step moves the network's output (the weights are learned)
    ones = (torch.ones(3), torch.ones(3, 4), torch.ones(3), torch.ones(3))
    before = net(*ones)[0].detach()
    opt = ms.optimizer(ms.modules())
    opt.step()
    after = net(*ones)[0].detach()
    assert not torch.equal(before, after)


def test_pisa_then_swn_multiplies_swn_sees_isr_weighted_loss():
    ms, crit = criterion_for("swn,pisa")
    assert [m.name for m in ms.methods] == ["pisa", "swn"]  # SWN always last
    swn = ms.methods[1]
    swn.pieces_on_cpu = False  # F sees every sample's loss
    seen = {}
    def grab(module, inputs, output):
        seen["cls"] = inputs[0].detach().squeeze(1)

    swn.net.F.register_forward_hook(grab)
    _set_output_bias(swn.net, 0.25, 0.0)
    rec, _ = make_record(seed=14)
    _, parts = crit(rec)
    cls, reg = base_losses(rec)
    isr = ms.methods[0].weights(rec, cls, reg)
    weighted = (isr.cls[:, None] * cls).sum(1)
    torch.testing.assert_close(seen["cls"], weighted)
    assert not torch.allclose(weighted, cls.sum(1))
    want = math.exp(-0.25) * weighted.sum() / rec.num_pos + 0.5 * 0.25
    torch.testing.assert_close(parts["cls"], want, rtol=1e-4, atol=1e-4)
    assert "carl" in parts


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("spec", METHODS + ["pisa,swn"])
def test_methods_do_not_synchronize_with_the_gpu(spec):
    """soft_targets / weights / reduce / finalize run without a host-device sync (IoU-balanced's
    one-time w_loc excepted: it is fixed here before the check)."""
    ms = build_methods(spec, MethodParams())
    for m in ms.methods:
        if isinstance(m, SWN):
            m.net.cuda()
    rec, _ = make_record(seed=19, rule=ms.assigner)
    rec = type(rec)(**{k: (v.cuda() if torch.is_tensor(v) else v) for k, v in rec.__dict__.items()})
    cls, reg4 = base_losses(rec, per_coordinate=True)
    reg = reg4.sum(1)
    for m in ms.methods:
        if isinstance(m, IoUBalanced):
            m.weights(rec, cls, reg)  # the documented one-time sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for m in ms.methods:
            m.soft_targets(rec)
            w = m.weights(rec, cls, reg)
            if w.cls is not None:
                cls = cls * (w.cls[:, None] if w.cls.dim() == 1 else w.cls)
            if w.cls_gt is not None:
                at = (rec.pos_idx, rec.pos_labels)
                cls = cls.index_put(at, cls[at] * w.cls_gt)
            if w.reg is not None:
                reg4 = reg4 * w.reg[:, None]
                reg = reg4.sum(1)
        reduced = [m.reduce(rec, cls.sum(1), reg4) for m in ms.methods]
        losses = {"cls": cls.sum() / rec.num_pos, "reg": reg.sum() / rec.num_pos}
        for m in ms.methods:
            losses = m.finalize(losses, rec)
        ms.diagnostics()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(v).all() for v in losses.values())
    assert any(r is not None for r in reduced) == ("swn" in spec)


# ---------------------------------------------------------------------------------------------
# Composition rules


def test_build_methods_resolves_base_loss_and_assigner():
    ms = build_methods("pisa", MethodParams())
    assert ms.cls_loss == "focal" and ms.assigner == "max_iou" and not ms.warnings
    assert isinstance(build_methods("noisy_anchors", MethodParams()).methods[0], NoisyAnchors)
    ms = build_methods("sampling_free,pisa,bce", MethodParams())
    assert ms.cls_loss == "bce" and not ms.warnings


@pytest.mark.parametrize("spec, needle", [
    ("focal,bce", "both base losses"),
    ("pisa,nope", "unknown method 'nope'"),
    ("pisaa", "did you mean 'pisa'"),
    ("sampling_free,pisa", "different base losses"),
    ("pisa,pisa", "twice"),
])
def test_build_methods_errors(spec, needle):
    with pytest.raises(SwdetError, match=needle):
        build_methods(spec, MethodParams())


def test_harmful_combination_warns():
    ms = build_methods("sampling_free,focal", MethodParams())
    assert ms.cls_loss == "focal"
    assert len(ms.warnings) == 1 and "Table 3" in ms.warnings[0]
    assert not build_methods("sampling_free", MethodParams()).warnings


# ---------------------------------------------------------------------------------------------
# Anchor statistics (Sampling-Free's N_f and N)


class _FakeDataset:
    """``get_target(i)`` without images; counts the calls."""

    def __init__(self, ann_file: Path, targets: list[dict], imgsz: int = CANVAS):
        self.ann_file, self.targets, self.imgsz = str(ann_file), targets, imgsz
        self.calls = 0

    def __len__(self):
        return len(self.targets)

    def get_target(self, i):
        self.calls += 1
        return self.targets[i]


def test_anchor_statistics_counts_and_cache(tmp_path):
    ann = tmp_path / "instances_train.json"
    ann.write_text('{"images": [1]}')
    gen = torch.Generator().manual_seed(15)
    targets = random_targets(gen, batch=5) + random_targets(gen, batch=1, empty=True)
    data = _FakeDataset(ann, targets)
    assigner = TargetAssigner(grid_anchors(), BoxCoder())
    run = tmp_path / "run"

    stats = anchor_statistics(data, assigner, cache_dir=run, progress=False)
    fg = all_ = 0
    for t in targets:
        matched, _ = assigner.match(t["boxes"])
        fg += int((matched >= 0).sum())
        all_ += int((matched != IGNORE).sum())
    assert stats["num_fg"] == fg and stats["num_all"] == all_ and 0 < fg < all_
    assert stats["num_ignored"] == 6 * len(assigner.anchors) - all_
    assert stats["num_images"] == 6 and stats["num_anchors_per_image"] == len(assigner.anchors)
    assert stats["num_images_without_boxes"] == 1
    assert (run / "anchor_stats.json").is_file() and data.calls == 6

    assert anchor_statistics(data, assigner, cache_dir=run, progress=False) == stats
    assert data.calls == 6  # reused: no image matched again

    ann.write_text('{"images": [2]}')  # the annotation file changed (same size, newer)
    os.utime(ann, ns=(ann.stat().st_mtime_ns + 10**9,) * 2)
    anchor_statistics(data, assigner, cache_dir=run, progress=False)
    assert data.calls == 12

    strict = TargetAssigner(grid_anchors(), BoxCoder(), fg_iou=0.6)  # other matching thresholds
    other = anchor_statistics(data, strict, cache_dir=run, progress=False)
    assert data.calls == 18 and other["num_fg"] <= stats["num_fg"]
    anchor_statistics(data, assigner, cache_dir=run, progress=False)
    assert data.calls == 18  # both entries kept

    (run / "anchor_stats.json").write_text("{not json")
    assert anchor_statistics(data, assigner, cache_dir=run, progress=False) == stats  # corrupt cache: recount
    assert anchor_statistics(data, assigner, cache_dir=None, progress=False) == stats
    assert anchor_statistics(data, assigner, cache_dir=None, progress=False, device="cpu") == stats


@pytest.mark.gpu
@requires_cuda
def test_anchor_statistics_on_the_gpu_match_the_cpu(tmp_path):
    ann = tmp_path / "a.json"
    ann.write_text("{}")
    gen = torch.Generator().manual_seed(18)
    data = _FakeDataset(ann, random_targets(gen, batch=4) + random_targets(gen, batch=1, empty=True))
    for rule in ("max_iou", "topn"):
        assigner = TargetAssigner(grid_anchors(), BoxCoder(), rule=rule, topn=6)
        cpu = anchor_statistics(data, assigner, progress=False)
        assert anchor_statistics(data, assigner, progress=False, device="cuda") == cpu
        assert assigner.anchors.device.type == "cpu"  # the caller's assigner is untouched


def test_sampling_free_prepare_from_anchor_statistics(tmp_path):
    ann = tmp_path / "a.json"
    ann.write_text("{}")
    data = _FakeDataset(ann, random_targets(torch.Generator().manual_seed(16), batch=4))
    stats = anchor_statistics(data, TargetAssigner(grid_anchors(), BoxCoder()), progress=False)
    model = _TinyDetector()
    SamplingFree(MethodParams().sampling_free).prepare(model, stats)
    prob = torch.sigmoid(model.head.cls_logits.bias.double())
    torch.testing.assert_close(prob, torch.full_like(prob, stats["num_fg"] / (stats["num_all"] * C)))


# ---------------------------------------------------------------------------------------------
# Shipped configs


def test_every_config_loads_and_resolves_its_methods():
    every = sorted(CONFIGS.glob("*.yaml"))
    recipes = sorted((CONFIGS.parent / "benchmarks" / "configs").glob("*.yaml"))  # the benchmarks' training recipes
    assert recipes
    for f in every + recipes:  # every shipped config loads and resolves (Faster R-CNN's: tests/test_faster_rcnn.py)
        cfg = load_config(f)
        build_methods(cfg.loss.method, cfg.methods, arch=cfg.model.arch)
    files = [f for f in every if f.stem.startswith("retinanet")]
    names = {f.stem for f in files}
    for m in METHODS:
        assert f"retinanet_r50_fpn_1x_{m}" in names and f"retinanet_tiny_{m}" in names
    assert {"retinanet_r50_fpn_1x", "retinanet_tiny"} <= names
    for f in files:
        cfg = load_config(f)
        ms = build_methods(cfg.loss.method, cfg.methods, arch=cfg.model.arch)
        method = f.stem.split("_1x")[-1].split("retinanet_tiny")[-1].lstrip("_") or "focal"
        assert cfg.loss.method == [method], f.name
        assert ms.names == [method]
        if f.stem.startswith("retinanet_r50_fpn_1x"):
            t = cfg.train
            assert cfg.model.name == "retinanet_r50_fpn" and cfg.model.imgsz == 800
            assert (t.iters, t.batch_size, t.lr, t.warmup_iters) == (90000, 16, 0.01, 500)
            assert [round(s * t.iters) for s in t.steps] == [60000, 80000]
            assert cfg.data.root == "coco/"
        else:
            assert cfg.model.name == "retinanet_tiny"
    tiny = [load_config(CONFIGS / f"retinanet_tiny{'_' + m if m else ''}.yaml").train for m in [""] + METHODS]
    assert all(t == tiny[0] for t in tiny)  # the repeated training keys agree
    from swdet.cli.pipeline import TINY_RECIPE  # `swdet pipeline` trains the same recipe without the files

    recipe = load_config(None, list(TINY_RECIPE))
    shipped = load_config(CONFIGS / "retinanet_tiny.yaml")
    assert recipe.train == shipped.train and recipe.model == shipped.model
