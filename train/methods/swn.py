"""SWN: a unified sample weighting network (Cai et al., CVPR 2020), ``--method swn``.

Each sample's loss terms become (Eq. 9)::

    L_i = exp(-s·m_i^cls)·L_i^cls + λ·m_i^cls + exp(-s·m_i^reg)·L_i^reg + λ·m_i^reg

where ``m^cls, m^reg`` come from a small training-only network (Sec. 3.4, Fig. 3c)::

    d_i = concat(F(L_i^cls), G(L_i^reg), H(IoU_i), K(Prob_i))          (Eq. 10)
    (m_i^cls, m_i^reg) = W(d_i)                                        (Eq. 11)

As in the authors' code (sample-weighting-network, ``retina_head_v2.py`` and
``two_stage_swn_faster.py``): F, H, K map a scalar, G the regression loss per coordinate (4
inputs; ``reg_inputs: 1`` feeds the summed loss, the paper's ``L_i^reg``), each through two
``hidden``-wide (64) layers with ReLU; W is ``Linear(4·hidden, hidden) -> ReLU -> Linear(hidden, 2)``.
``IoU_i`` and ``Prob_i`` (IoU of the regressed box with its GT, probability of the GT class) and
the regression loss are 0 for negatives; the inputs are detached. Every layer starts from
N(0, 1e-4), so the weights start uniform (Sec. 4.2); the network has its own Adam optimizer
(lr 1e-3, weight decay 1e-4, the detector's learning-rate schedule) and the trainer's gradient
clipping covers it with the detector. ``m`` is clipped to [-2, 2]; ``s = exp_scale`` is 1 in the
code (2 in the paper's Eq. 9). λ = 0.5 (Table 5).

The classification weight is shared over the batch (``groups``,
:func:`swdet.train.weighting.swn_terms`): on RetinaNet one mean of ``m^cls`` over every anchor
(the code's ``uncertainty_prediction_cls.mean()``), in a RoI head the positives' and the
negatives' means (App. A.1.2 and the code's Faster R-CNN). The loss of the batch is
:func:`swdet.train.weighting.swn_loss`: the weighted sums normalized like the plain loss, plus
one regularizer per shared classification weight and the positives' mean regression regularizer.
Reading the paper's App. A.1.2 (two means, ``exp(-2m)``) on a dense head instead, the negatives'
focal loss (~1e-3 each) drives their shared weight to the clip ``e^4`` within ~100 steps.

The network is never a submodule of the detector: the trainer holds it beside the detector (in
``TrainModule.weighting``), saves it only in ``checkpoints/``, and the artifact never sees it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from swdet.train.methods.base import Method, SampleRecord
from swdet.train.weighting import swn_loss


def _input_mlp(inputs: int, hidden: int) -> nn.Sequential:
    """One of F, G, H, K: ``inputs`` features -> ``hidden`` dims."""
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
                         nn.ReLU(inplace=True))


class SampleWeightingNetwork(nn.Module):
    """``(L_cls [N], L_reg [N, k], IoU [N], Prob [N]) -> (m_cls [N], m_reg [N])`` (SWN Eq. 10-11)."""

    def __init__(self, hidden: int = 64, reg_inputs: int = 4, init_std: float = 1e-4):
        super().__init__()
        self.reg_inputs = reg_inputs
        self.F = _input_mlp(1, hidden)  # classification loss
        self.G = _input_mlp(reg_inputs, hidden)  # regression loss (per coordinate)
        self.H = _input_mlp(1, hidden)  # IoU
        self.K = _input_mlp(1, hidden)  # probability of the GT class
        self.W = nn.Sequential(nn.Linear(4 * hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 2))
        for m in self.modules():
            if isinstance(m, nn.Linear):  # Sec. 4.2: N(0, 1e-4), so the weights start uniform
                nn.init.normal_(m.weight, mean=0.0, std=init_std)
                nn.init.zeros_(m.bias)

    def features(self, cls_loss: Tensor, reg_loss: Tensor, iou: Tensor, prob: Tensor) -> Tensor:
        """Eq. 10: ``d = concat(F(L_cls), G(L_reg), H(IoU), K(Prob))`` -> ``[N, 4·hidden]``."""
        return torch.cat([self.F(cls_loss[:, None]), self.G(reg_loss.reshape(-1, self.reg_inputs)),
                          self.H(iou[:, None]), self.K(prob[:, None])], dim=1)

    def forward(self, cls_loss: Tensor, reg_loss: Tensor, iou: Tensor, prob: Tensor) -> tuple[Tensor, Tensor]:
        m = self.W(self.features(cls_loss, reg_loss, iou, prob))
        return m[:, 0], m[:, 1]


class SWN(Method):
    name = "swn"
    default_cls_loss = None  # on top of whatever base loss the others use (focal by default)
    heads = frozenset({"retina", "roi"})

    def __init__(self, params):
        self.params = params
        self.net = SampleWeightingNetwork(params.hidden, params.reg_inputs, params.init_std)
        self._diag: dict[str, Tensor] = {}

    def module(self) -> nn.Module:
        return self.net

    def optimizer(self, module: nn.Module, fused: bool = False) -> torch.optim.Optimizer:
        """Adam, lr 1e-3, weight decay 1e-4 (Sec. 4.2); the trainer applies the detector's schedule."""
        extra = {"fused": True} if fused else {}
        return torch.optim.Adam(module.parameters(), lr=self.params.lr, weight_decay=self.params.weight_decay,
                                **extra)

    def groups(self, head: str) -> str:
        """The batch sharing of the classification weight on ``head`` (``auto``: the code's)."""
        if self.params.groups != "auto":
            return self.params.groups
        return "pos_neg" if head == "roi" else "all"

    def reduce(self, rec: SampleRecord, cls_per_sample: Tensor, reg_elem: Tensor):
        """:func:`~swdet.train.weighting.swn_loss` over the batch's samples.

        ``cls_per_sample [N]`` (0 on ignored samples), ``reg_elem [P, k]`` (positives, per
        coordinate). A dense head's samples are all its anchors (the code averages ``m^cls`` over
        every anchor, ignored ones included); a RoI head's are the sampled RoIs (``rec.valid``).
        """
        p = self.params
        n, dev = rec.num_samples, cls_per_sample.device
        k = self.net.reg_inputs
        reg_in = reg_elem.float() if reg_elem.shape[1] == k else reg_elem.float().sum(1, keepdim=True)
        zeros = torch.zeros(n, device=dev, dtype=torch.float32)
        reg_full = torch.zeros(n, k, device=dev, dtype=torch.float32).index_copy(0, rec.pos_idx, reg_in.detach())
        iou = zeros.index_copy(0, rec.pos_idx, rec.iou_after.detach().float())
        prob = zeros.index_copy(0, rec.pos_idx, rec.prob_gt.detach().float())
        cls_loss = cls_per_sample.float()
        m_cls, m_reg = self.net(cls_loss.detach(), reg_full, iou, prob)
        reg_loss = zeros.index_copy(0, rec.pos_idx, reg_elem.float().sum(1))
        valid = rec.valid if rec.head == "roi" else None
        cls, reg, w = swn_loss(m_cls.float(), m_reg.float(), cls_loss, reg_loss, rec.pos_mask, rec.num_pos,
                               rec.num_pos, lam=p.lam, clip=p.clip, exp_scale=p.exp_scale,
                               groups=self.groups(rec.head), valid=valid)
        self._diag = {f"swn/{name}": v for name, v in w.items()}  # SWN Fig. A.2: the mean weights
        return cls, reg, {}

    def diagnostics(self) -> dict[str, Tensor]:
        """Device scalars of the last step: mean ``exp(-s·m)`` of the classification weight of
        positives and negatives (equal when shared by all) and of the positives' regression weight."""
        return dict(self._diag)
