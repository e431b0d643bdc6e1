"""SWN: a unified sample weighting network (Cai et al., CVPR 2020), ``--method swn``.

Each sample's loss terms become (Eq. 9, with ``m = log σ``)::

    L_i = exp(-2·m_i^cls)·L_i^cls + λ·m_i^cls + exp(-2·m_i^reg)·L_i^reg + λ·m_i^reg

where ``m^cls, m^reg`` come from a small training-only network (Sec. 3.4, Fig. 3c)::

    d_i = concat(F(L_i^cls), G(L_i^reg), H(IoU_i), K(Prob_i))          (Eq. 10)
    m_i^cls = W_cls(d_i),  m_i^reg = W_reg(d_i)                        (Eq. 11)

``IoU_i`` and ``Prob_i`` (IoU of the regressed box with its GT, probability of the GT class) are 0
for negatives; the inputs are detached. ``m`` is clipped to [-2, 2], and ``m^cls`` is replaced by
its batch mean over the positives (resp. the negatives) (App. A.1.2). Fully connected layers start
from N(0, 1e-4) so the weights start uniform (Sec. 4.2); the network has its own Adam optimizer
(lr 1e-3, weight decay 1e-4, the detector's learning-rate schedule). λ = 0.5 (Table 5).

On RetinaNet every non-ignored anchor is a sample; ``L_i^cls`` is the (already weighted, e.g. by
ISR in ``pisa,swn``) classification loss summed over classes, ``L_i^reg`` the regression loss of
the positives. The sums are normalized by the number of positives like the plain loss, and each
batch-shared classification weight (m̄ of the positives, m̄ of the negatives) carries its
regularizer λ·m̄ once: summed per anchor, the dense negatives' tiny focal losses would push
their weight to the clip (our reading for dense one-stage heads; the paper's RoI head has 512
samples, where the two readings differ little).

The network is never a submodule of the detector: the trainer holds it beside the detector (in
``TrainModule.weighting``), saves it only in ``checkpoints/``, and the artifact never sees it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from swdet.train.methods.base import Method, SampleRecord
from swdet.train.weighting import swn_terms


def _input_mlp(hidden: int) -> nn.Sequential:
    """One of F, G, H, K: a scalar feature -> ``hidden`` dims."""
    return nn.Sequential(nn.Linear(1, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
                         nn.ReLU(inplace=True))


def _output_mlp(hidden: int) -> nn.Sequential:
    """W_cls or W_reg: ``d_i`` (4·hidden) -> one weight ``m``."""
    return nn.Sequential(nn.Linear(4 * hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))


class SampleWeightingNetwork(nn.Module):
    """``(L_cls, L_reg, IoU, Prob) [N] -> (m_cls [N], m_reg [N])`` (SWN Eq. 10-11, Fig. 3c)."""

    def __init__(self, hidden: int = 32, init_std: float = 1e-4):
        super().__init__()
        self.F = _input_mlp(hidden)  # classification loss
        self.G = _input_mlp(hidden)  # regression loss
        self.H = _input_mlp(hidden)  # IoU
        self.K = _input_mlp(hidden)  # probability of the GT class
        self.W_cls = _output_mlp(hidden)
        self.W_reg = _output_mlp(hidden)
        for m in self.modules():
            if isinstance(m, nn.Linear):  # Sec. 4.2: N(0, 1e-4), so the weights start uniform
                nn.init.normal_(m.weight, mean=0.0, std=init_std)
                nn.init.zeros_(m.bias)

    def features(self, cls_loss: Tensor, reg_loss: Tensor, iou: Tensor, prob: Tensor) -> Tensor:
        """Eq. 10: ``d = concat(F(L_cls), G(L_reg), H(IoU), K(Prob))`` -> ``[N, 4·hidden]``."""
        return torch.cat([self.F(cls_loss[:, None]), self.G(reg_loss[:, None]), self.H(iou[:, None]),
                          self.K(prob[:, None])], dim=1)

    def forward(self, cls_loss: Tensor, reg_loss: Tensor, iou: Tensor, prob: Tensor) -> tuple[Tensor, Tensor]:
        d = self.features(cls_loss, reg_loss, iou, prob)
        return self.W_cls(d).squeeze(1), self.W_reg(d).squeeze(1)


class SWN(Method):
    name = "swn"
    default_cls_loss = None  # on top of whatever base loss the others use (focal by default)
    heads = frozenset({"retina", "roi"})

    def __init__(self, params):
        self.params = params
        self.net = SampleWeightingNetwork(params.hidden, params.init_std)
        self._diag: dict[str, Tensor] = {}

    def module(self) -> nn.Module:
        return self.net

    def optimizer(self, module: nn.Module, fused: bool = False) -> torch.optim.Optimizer:
        """Adam, lr 1e-3, weight decay 1e-4 (Sec. 4.2); the trainer applies the detector's schedule."""
        extra = {"fused": True} if fused else {}
        return torch.optim.Adam(module.parameters(), lr=self.params.lr, weight_decay=self.params.weight_decay,
                                **extra)

    def reduce(self, rec: SampleRecord, cls_per_sample: Tensor, reg_per_sample: Tensor):
        """SWN Eq. 9 over the non-ignored samples: ``(Σ cls_terms / N1, Σ reg_terms / N2, {})``.

        ``cls_per_sample [N]`` (0 on ignored samples), ``reg_per_sample [P]`` (positives).
        """
        p = self.params
        n = rec.num_samples
        dev = cls_per_sample.device
        pos, valid = rec.pos_mask, rec.valid
        cls_loss = cls_per_sample.float()
        reg_loss = torch.zeros(n, device=dev, dtype=torch.float32).index_copy(0, rec.pos_idx, reg_per_sample.float())
        zeros = torch.zeros(n, device=dev, dtype=torch.float32)
        iou = zeros.index_copy(0, rec.pos_idx, rec.iou_after.detach().float())
        prob = zeros.index_copy(0, rec.pos_idx, rec.prob_gt.detach().float())
        m_cls, m_reg = self.net(cls_loss.detach(), reg_loss.detach(), iou, prob)
        m_cls, m_reg = m_cls.float(), m_reg.float()  # the MLP may run under autocast

        # App. A.1.2 over the *valid* samples: batch means of the clipped m_cls over the positives
        # and over the non-ignored negatives. Passing the smoothed m̄ (already within the clip) to
        # swn_terms keeps its own averaging exact: the ignored samples hold the negatives' mean.
        m_c = m_cls.clamp(-p.clip, p.clip)
        neg = valid & ~pos
        mean_pos = torch.where(pos, m_c, 0.0).sum() / max(rec.num_positives, 1)
        mean_neg = torch.where(neg, m_c, 0.0).sum() / neg.sum().clamp(min=1)
        m_bar = torch.where(pos, mean_pos, mean_neg)
        cls_terms, reg_terms = swn_terms(m_bar, m_reg, cls_loss, reg_loss, pos, lam=p.lam, clip=p.clip)
        # One regularizer per batch-shared weight: m̄_pos and m̄_neg are batch-wise (App. A.1.2),
        # so each gets λ·m̄ once, not once per anchor. Summing λ·m̄_neg over ~10^5 easy negatives
        # (focal loss ~1e-4 each) would drive exp(-2 m̄_neg) to the clip (x54.6) within ~100 steps.
        has_pos = (rec.num_positives > 0)
        weighted = torch.where(valid, cls_terms - p.lam * m_bar, 0.0)
        cls_reg = p.lam * (mean_pos * has_pos + mean_neg * (neg.sum() > 0))

        with torch.no_grad():  # SWN Fig. A.2: the mean weights exp(-2m) over training
            w_reg = torch.exp(-2.0 * m_reg.clamp(-p.clip, p.clip)[rec.pos_idx]).sum() / max(rec.num_positives, 1)
            self._diag = {"swn/w_cls_pos": torch.exp(-2.0 * mean_pos).detach(),
                          "swn/w_cls_neg": torch.exp(-2.0 * mean_neg).detach(), "swn/w_reg": w_reg}
        return weighted.sum() / rec.num_pos + cls_reg, reg_terms.sum() / rec.num_pos, {}

    def diagnostics(self) -> dict[str, Tensor]:
        """Device scalars of the last step: mean ``exp(-2m)`` of positives/negatives (cls) and of
        the positives (reg)."""
        return dict(self._diag)
