"""Training diagnostics: how the papers show that each method works.

Accumulated on the device every step (no synchronization) and summarized every logging interval:

- mean score of positives by IoU bin of the regressed box (IoU-balanced Fig. 2, PISA Fig. 9);
- mean score by IoU-HLR rank bucket (PISA Fig. 8);
- Pearson correlation between score and IoU over positives (noisy anchors Table 7 measures it on
  detections before NMS; :func:`prenms_score_iou_correlation` does that at evaluation).
"""

from __future__ import annotations

import torch
from torch import Tensor

IOU_BINS = torch.tensor([0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0001])
RANK_BINS = torch.tensor([0, 5, 10, 20, 50, 100, 10**9])


def iou_bin_labels() -> list[str]:
    b = IOU_BINS.tolist()
    return [f"{b[i]:.1f}-{min(b[i + 1], 1.0):.1f}" for i in range(len(b) - 1)]


def rank_bin_labels() -> list[str]:
    b = RANK_BINS.tolist()
    return [f"{b[i]}-{b[i + 1] - 1}" if b[i + 1] < 10**9 else f"{b[i]}+" for i in range(len(b) - 1)]


class Diagnostics:
    def __init__(self, device):
        self.device = device
        self.iou_edges = IOU_BINS.to(device)
        self.rank_edges = RANK_BINS.to(device)
        self.reset(total=True)

    def reset(self, total: bool = False) -> None:
        z = lambda n: torch.zeros(n, device=self.device, dtype=torch.float64)  # noqa: E731
        self.iou_sum, self.iou_cnt = z(len(IOU_BINS) - 1), z(len(IOU_BINS) - 1)
        self.rank_sum, self.rank_cnt = z(len(RANK_BINS) - 1), z(len(RANK_BINS) - 1)
        self.moments = z(6)  # n, Σx, Σy, Σxy, Σx², Σy²
        if total:
            self.totals = None

    @torch.no_grad()
    def update(self, rec) -> None:
        from swdet.train.weighting import iou_hlr_rank

        if rec.num_positives == 0:
            return
        score = rec.prob_gt.detach().double()
        iou = rec.iou_after.double()
        b = (torch.bucketize(iou, self.iou_edges.double(), right=True) - 1).clamp(0, len(IOU_BINS) - 2)
        self.iou_sum.index_add_(0, b, score)
        self.iou_cnt.index_add_(0, b, torch.ones_like(score))
        rank = iou_hlr_rank(rec.iou_after, rec.gt_ids, rec.pos_labels)
        r = (torch.bucketize(rank, self.rank_edges, right=True) - 1).clamp(0, len(RANK_BINS) - 2)
        self.rank_sum.index_add_(0, r, score)
        self.rank_cnt.index_add_(0, r, torch.ones_like(score))
        self.moments += torch.stack([torch.ones_like(score).sum(), score.sum(), iou.sum(), (score * iou).sum(),
                                     (score * score).sum(), (iou * iou).sum()])

    @staticmethod
    def _corr(m: list[float]) -> float:
        n, sx, sy, sxy, sxx, syy = m
        if n < 2:
            return float("nan")  # undefined: reported as null
        cov = sxy / n - sx * sy / n**2
        vx, vy = sxx / n - (sx / n) ** 2, syy / n - (sy / n) ** 2
        return cov / max(1e-12, (vx * vy) ** 0.5)

    def summary(self, keep: bool = False) -> dict[str, float]:
        """Means over the interval since the last call (one synchronization), then reset.
        ``keep`` adds the interval to the run summary (the engine keeps the last quarter)."""
        data = torch.cat([self.iou_sum, self.iou_cnt, self.rank_sum, self.rank_cnt, self.moments]).cpu()
        if keep:
            self.totals = data if self.totals is None else self.totals + data
        out = self._format(data)
        self.reset()
        return out

    def _format(self, data: Tensor) -> dict[str, float]:
        k, r = len(IOU_BINS) - 1, len(RANK_BINS) - 1
        isum, icnt = data[:k], data[k:2 * k]
        rsum, rcnt = data[2 * k:2 * k + r], data[2 * k + r:2 * k + 2 * r]
        out = {}
        for name, s, c in zip(iou_bin_labels(), isum.tolist(), icnt.tolist()):
            out[f"diag/score_iou_{name}"] = s / c if c else None
        for name, s, c in zip(rank_bin_labels(), rsum.tolist(), rcnt.tolist()):
            out[f"diag/score_rank_{name}"] = s / c if c else None
        corr = self._corr(data[-6:].tolist())
        out["diag/score_iou_corr"] = None if corr != corr else corr  # JSON has no NaN
        return out

    def final_summary(self) -> dict[str, float]:
        """Over the kept intervals (what ``metrics.json`` records)."""
        if self.totals is None:
            return {}
        return self._format(self.totals)


@torch.no_grad()
def prenms_score_iou_correlation(predictor, dataset, *, max_images: int = 200, min_score: float = 0.05,
                                 batch_size: int = 8) -> float | None:
    """Pearson correlation between score and localization of detections *before NMS* (noisy
    anchors, Table 7): every top-k candidate with ``score > min_score`` on up to ``max_images``
    evaluation images, paired with its IoU to the best-overlapping GT box (0 if none).

    RetinaNet only (two-stage models return None): the candidates come from
    :func:`swdet.models.postprocess.select_candidates`, the first half of the post-processing.
    """
    from swdet.boxes import box_iou
    from swdet.data.loader import collate
    from swdet.models.postprocess import select_candidates

    if hasattr(predictor.model, "postprocess"):
        return None
    n = min(len(dataset), max_images)
    xs, ys = [], []
    for start in range(0, n, batch_size):
        images, targets = collate([dataset[i] for i in range(start, min(n, start + batch_size))])
        out = predictor.model(images.to(predictor.device))
        boxes, scores, _ = select_candidates(out["cls_logits"], out["bbox_deltas"], predictor.anchors,
                                             predictor.box_coder, predictor.post.pre_nms_topk, predictor.cfg.imgsz)
        for b, t in enumerate(targets):
            keep = scores[b] > min_score
            cand = boxes[b][keep].cpu()
            gt = t["boxes"].float()
            iou = box_iou(cand, gt).max(dim=1).values if len(gt) and len(cand) else torch.zeros(len(cand))
            xs.append(scores[b][keep].cpu().double())
            ys.append(iou.double())
    if not xs:
        return None
    x, y = torch.cat(xs), torch.cat(ys)
    if len(x) < 2 or float(x.std()) == 0 or float(y.std()) == 0:
        return None
    return float(torch.corrcoef(torch.stack([x, y]))[0, 1])
