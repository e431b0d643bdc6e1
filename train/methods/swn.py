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
``tasks`` limits the weighting to the classification or the regression loss (the paper's Table 4).
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


def _piece_of(edges: Tensor, x: Tensor) -> Tensor:
    """Index of the piece of sorted unique ``edges [M+1]`` that holds each ``x``: pieces are the
    points and the open intervals between them, ``2k`` = the point ``e_k``, ``2k+1`` = ``(e_k, e_k+1)``."""
    left = torch.searchsorted(edges, x)
    right = torch.searchsorted(edges, x, right=True)
    return torch.where(right > left, 2 * left, 2 * right - 1).clamp(0, 2 * edges.numel() - 2)


def _split_at_zeros(edges: Tensor, slope: Tensor, offset: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Refine the pieces of sorted unique ``edges`` (:func:`_piece_of`) so that no affine function
    ``slope[p, u]·x + offset[p, u]`` of piece ``p`` changes sign inside a piece:
    ``(new_edges, parent, pattern)``, ``parent`` the old piece of each new piece and ``pattern``
    the signs (> 0) at a point of it (the point itself for a point piece, so an input exactly on a
    kink gets ReLU'(0) = 0, as autograd gives it). Host-side compaction: the CPU path only."""
    lo, hi = edges[:-1, None], edges[1:, None]
    interval = slope[1::2]
    safe = torch.where(interval != 0, interval, torch.ones_like(interval))
    cross = -offset[1::2] / safe
    inside = (interval != 0) & (cross > lo) & (cross < hi)
    new = torch.unique(torch.cat([edges, cross[inside]]))  # sorted
    rep = torch.stack([new, torch.cat([(new[:-1] + new[1:]) / 2, new[-1:]])], 1).reshape(-1)[:-1]
    parent = _piece_of(edges, rep)
    pattern = slope[parent] * rep[:, None] + offset[parent] > 0
    return new, parent, pattern


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

    def clipped_cls_sum(self, x: Tensor, weight: Tensor, clip: float) -> Tensor:
        """``Σ_i weight_i · clamp(m^cls(x_i, 0, 0, 0), -clip, clip)`` for many scalar losses ``x``
        at once, exactly and without running the network per sample.

        A negative's inputs are ``(L^cls, 0, 0, 0)``: only the classification loss varies, so
        ``m^cls`` is a function of one scalar made of ReLU layers,
        ``x -> w_o·relu(W_1F·relu(W_F2·relu(w_F1·x + b_F1) + b_F2) + c) + b_o`` (``c`` holds the
        constant features G(0), H(0), K(0) through W's first layer): piecewise affine in ``x``.
        Its pieces are found layer by layer (where a unit's pre-activation, affine on the current
        piece, crosses 0; then where ``m`` crosses ±clip), each piece ``q`` carries its affine form
        ``α_q·x + β_q`` (or the constant ±clip) as a differentiable function of the parameters,
        and the sum needs only each piece's ``Σ weight`` and ``Σ weight·x``::

            Σ_i w_i·clamp(m(x_i)) = Σ_q [clipped_q ? ±clip·S0_q : α_q·S1_q + β_q·S0_q]

        The value and the parameters' gradients equal running the network on every ``x_i``
        (up to float rounding; tested); the cost is a sort of ``x`` into the pieces instead of
        ``4·hidden²`` multiply-adds per sample. The pieces are compacted on the host, so this is
        the CPU path (``SWN.reduce``); on CUDA the dense network runs without a synchronization.
        """
        dtype = x.dtype
        x = x.detach()
        weight = weight.detach().to(torch.float64)
        lin1, lin2, lin3, lin4 = self.F[0], self.F[2], self.W[0], self.W[2]
        hidden = lin2.out_features
        zero = torch.zeros(1, device=x.device, dtype=dtype)
        with torch.no_grad():  # one interval over the data, between two points
            edges = (torch.unique(torch.stack([x.min(), x.max()])) if x.numel()
                     else torch.zeros(1, device=x.device, dtype=dtype))
        # constants: the other three input networks at 0, through W's first layer
        g = self.G(torch.zeros(1, self.reg_inputs, device=x.device, dtype=dtype))
        c = lin3.bias + (torch.cat([g, self.H(zero[:, None]), self.K(zero[:, None])], 1)
                         @ lin3.weight[:, hidden:].t()).squeeze(0)
        pieces = 2 * edges.numel() - 1
        slope = lin1.weight[:, 0][None].expand(pieces, -1)  # F's first pre-activation, on every piece
        offset = lin1.bias[None].expand(pieces, -1)
        for weight_t, bias in ((lin2.weight, lin2.bias), (lin3.weight[:, :hidden], c)):
            with torch.no_grad():
                edges, parent, pattern = _split_at_zeros(edges, slope, offset)
            slope = (pattern * slope[parent]) @ weight_t.t()
            offset = (pattern * offset[parent]) @ weight_t.t() + bias
        with torch.no_grad():
            edges, parent, pattern = _split_at_zeros(edges, slope, offset)
        w_o, b_o = lin4.weight[0], lin4.bias[0]
        alpha = (pattern * slope[parent]) @ w_o
        beta = (pattern * offset[parent]) @ w_o + b_o
        with torch.no_grad():  # where m crosses ±clip: hi = m > clip, lo = m < -clip
            a, b = alpha.detach()[:, None], beta.detach()[:, None]
            edges, parent, out = _split_at_zeros(edges, torch.cat([a, -a], 1), torch.cat([b - clip, -b - clip], 1))
            hi, lo = out[:, 0], out[:, 1]
            q = _piece_of(edges, x)
            s0 = torch.zeros(2 * edges.numel() - 1, device=x.device, dtype=torch.float64).index_add_(0, q, weight)
            s1 = torch.zeros_like(s0).index_add_(0, q, weight * x.double())
        alpha, beta = alpha[parent].double(), beta[parent].double()
        value = torch.where(hi, clip * s0, torch.where(lo, -clip * s0, alpha * s1 + beta * s0))
        return value.sum().to(dtype)


class SWN(Method):
    name = "swn"
    default_cls_loss = None  # on top of whatever base loss the others use (focal by default)
    heads = frozenset({"retina", "roi"})
    # dense heads on the CPU: the negatives' mean m^cls from the network's linear pieces
    # (SampleWeightingNetwork.clipped_cls_sum); False runs the network on every sample
    pieces_on_cpu = True

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
        m_cls, m_reg = self.predict(rec, cls_per_sample, reg_elem)
        # Table 4's ablation: a task the network does not weight keeps exp(0) = 1, no regularizer
        if "cls" not in p.tasks:
            m_cls = torch.zeros_like(m_cls)
        if "reg" not in p.tasks:
            m_reg = torch.zeros_like(m_reg)
        cls_loss = cls_per_sample.to(m_cls.dtype)
        reg_loss = torch.zeros_like(m_cls).index_copy(0, rec.pos_idx, reg_elem.to(m_cls.dtype).sum(1))
        valid = rec.valid if rec.head == "roi" else None
        cls, reg, w = swn_loss(m_cls, m_reg, cls_loss, reg_loss, rec.pos_mask, rec.num_pos,
                               rec.num_pos, lam=p.lam, clip=p.clip, exp_scale=p.exp_scale,
                               groups=self.groups(rec.head), valid=valid)
        self._diag = {f"swn/{name}": v for name, v in w.items()}  # SWN Fig. A.2: the mean weights
        return cls, reg, {}

    def predict(self, rec: SampleRecord, cls_per_sample: Tensor, reg_elem: Tensor) -> tuple[Tensor, Tensor]:
        """``(m_cls [N], m_reg [N])`` as :func:`swn_loss` needs them (``m_reg`` 0 off the positives).

        Inputs (detached): the classification loss, the positives' regression loss per coordinate
        (``reg_inputs: 1``: summed), IoU and GT-class probability; all but the first are 0 for
        negatives. On a dense head on the CPU the negatives -- every anchor but a few hundred
        positives -- only enter :func:`swn_loss` through the mean of their clipped ``m^cls``, so
        it is computed exactly by :meth:`SampleWeightingNetwork.clipped_cls_sum` and stands in
        for each of them (same loss and gradients; the network runs on the positives only).
        """
        n, dev = rec.num_samples, cls_per_sample.device
        dtype = next(self.net.parameters()).dtype  # float32 (float64 in the exactness tests)
        reg_in = reg_elem.detach().to(dtype)
        if reg_in.shape[1] != self.net.reg_inputs:
            reg_in = reg_in.sum(1, keepdim=True)
        cls_loss = cls_per_sample.detach().to(dtype)
        iou, prob = rec.iou_after.detach().to(dtype), rec.prob_gt.detach().to(dtype)
        zeros = torch.zeros(n, device=dev, dtype=dtype)
        if rec.head != "roi" and dev.type == "cpu" and self.pieces_on_cpu:
            m_cls_p, m_reg_p = self.net(cls_loss[rec.pos_idx], reg_in, iou, prob)
            neg = (~rec.pos_mask).float()
            neg_mean = self.net.clipped_cls_sum(cls_loss, neg, self.params.clip) / neg.sum().clamp(min=1)
            m_cls = torch.where(rec.pos_mask, zeros.index_copy(0, rec.pos_idx, m_cls_p.to(dtype)), neg_mean)
            return m_cls, zeros.index_copy(0, rec.pos_idx, m_reg_p.to(dtype))

        def full(v: Tensor) -> Tensor:
            return torch.zeros((n, *v.shape[1:]), device=dev, dtype=dtype).index_copy(0, rec.pos_idx, v)

        m_cls, m_reg = self.net(cls_loss, full(reg_in), full(iou), full(prob))
        return m_cls.to(dtype), m_reg.to(dtype)  # the MLP may run under autocast

    def diagnostics(self) -> dict[str, Tensor]:
        """Device scalars of the last step: mean ``exp(-s·m)`` of the classification weight of
        positives and negatives (equal when shared by all) and of the positives' regression weight."""
        return dict(self._diag)
