"""How a trained Faster R-CNN's box head treats *every* proposal, not only the RoIs it trained on.

A sampler's training diagnostics describe the RoIs it selects: OHEM's are its hardest, random
sampling's a uniform draw, so the two cannot be compared. This benchmark scores the same thing
for every run: on ``--batches`` val batches (no augmentation), the detector's own test-time
proposals (``FasterRCNN.propose``, the RPN's top ``rpn_post_nms_topk``) go through its box head,
and each proposal is grouped by its best IoU with a ground-truth box:

- positives, IoU >= 0.5, in bins ``[0.5, 0.7)``, ``[0.7, 0.9)``, ``[0.9, 1]``: the mean softmax
  probability of the GT class (``p_gt``), the share whose best foreground class is the GT's
  (``cls acc``), and the IoU with its GT after the box head's regression with the GT class's
  deltas (``IoU out``; ``IoU in`` is the proposal's);
- near negatives, IoU ``[0.1, 0.5)``, and background, IoU < 0.1: the mean of the highest
  foreground probability (``p_fg``) and the share above 0.05 (the export's score threshold);
- over all positives: the Pearson correlation of ``p_gt`` with ``IoU out`` (does the score rank
  boxes by how well they end up localized? what AP75 rewards).

And what each sampler would train on at that point: on ``--batches`` *train* batches (no
augmentation), the training-time candidates (proposals + GT boxes, matched as in training) are
sampled by random sampling and by OHEM (the run's ``methods.ohem`` selection) with the run's own
weights; the table gives the share of the selected positives per IoU bin (the GT boxes
themselves are the IoU-1 candidates) and the share of near-object negatives (IoU >= 0.1) among
the selected negatives. The box regression of a two-stage detector learns only from the
positives its sampler selects.

Runs are grouped by method (the run directory's parent name, e.g. ``.../ohem/seed0`` -> ``ohem``,
``.../ohem__methods.ohem.selection-negatives/seed0`` -> ``ohem (ohem.selection=negatives)``);
the table shows the mean over a method's runs and each run is kept in the JSON.

    python benchmarks/roi_diagnostic.py --data data/synth \\
        runs/methods/faster_rcnn-long/random/seed{0,1,2} runs/methods/faster_rcnn-long/ohem/seed{0,1,2}

Results: ``benchmarks/results/roi_diagnostic.{json,md}`` (``--out`` changes the stem).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from _results import write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from swdet.artifact import load_artifact, resolve_artifact  # noqa: E402
from swdet.boxes import BoxCoder, box_iou, elementwise_iou  # noqa: E402
from swdet.config import config_from_dict  # noqa: E402
from swdet.models.faster_rcnn import ROI_BOX_WEIGHTS  # noqa: E402
from swdet.table import format_table  # noqa: E402
from swdet.train.engine import build_dataset  # noqa: E402
from swdet.train.methods import build_methods  # noqa: E402
from swdet.train.rcnn_loss import FasterRCNNLoss  # noqa: E402

POS_BINS = ((0.5, 0.7), (0.7, 0.9), (0.9, 1.01))
NEG_GROUPS = {"near": (0.1, 0.5), "bg": (0.0, 0.1)}
SCORE_THR = 0.05


def score_proposals(model, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
    """Every valid test-time proposal of the batch, concatenated over images: its best IoU with a
    GT (``iou_in``), the GT class probability and whether the best foreground class is the GT's
    (positives), its highest foreground probability, and its IoU after regression (``iou_out``)."""
    out = model(images)
    proposals, valid = model.propose(out, training=False)
    cls, box = model.box_forward(out["features"], proposals)
    probs = torch.softmax(cls.float(), -1)
    c = probs.shape[-1] - 1
    coder = BoxCoder(ROI_BOX_WEIGHTS)
    rows = []
    for b, t in enumerate(targets):
        keep = valid[b]
        props, p, d = proposals[b][keep], probs[b][keep], box[b][keep].float()
        n = props.shape[0]
        gt = t["boxes"].float()
        if len(gt):
            best, gi = box_iou(props, gt).max(1)
            label = t["labels"][gi].long()
        else:
            best, gi, label = props.new_zeros(n), torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
        ar = torch.arange(n)
        pred = coder.decode(props, d[ar, label])
        iou_out = elementwise_iou(pred, gt[gi]) if len(gt) else props.new_zeros(n)
        rows.append({"iou_in": best, "p_gt": p[ar, label], "acc": (p[:, :c].argmax(1) == label).float(),
                     "p_fg": p[:, :c].max(1).values, "iou_out": iou_out})
    return {k: torch.cat([r[k] for r in rows]) for k in rows[0]}


def _mean(x: torch.Tensor) -> float | None:
    """Mean of a possibly empty selection (None when empty: an empty group has no mean)."""
    return float(x.float().mean()) if x.numel() else None


def summarize(s: dict[str, torch.Tensor]) -> dict:
    """The grouped statistics of :func:`score_proposals`'s output (module docstring)."""
    res: dict = {"proposals": int(s["iou_in"].numel())}
    for lo, hi in POS_BINS:
        m = (s["iou_in"] >= lo) & (s["iou_in"] < hi)
        key = f"pos {lo:.1f}-{min(hi, 1.0):.1f}"
        res[key] = {"count": int(m.sum()), "p_gt": _mean(s["p_gt"][m]), "cls_acc": _mean(s["acc"][m]),
                    "iou_in": _mean(s["iou_in"][m]), "iou_out": _mean(s["iou_out"][m])}
    for name, (lo, hi) in NEG_GROUPS.items():
        m = (s["iou_in"] >= lo) & (s["iou_in"] < hi)
        res[name] = {"count": int(m.sum()), "p_fg": _mean(s["p_fg"][m]), "above_thr": _mean(s["p_fg"][m] > SCORE_THR)}
    pos = s["iou_in"] >= 0.5
    x, y = s["p_gt"][pos], s["iou_out"][pos]
    res["corr_pgt_iou_out"] = float(torch.corrcoef(torch.stack([x, y]))[0, 1]) if int(pos.sum()) > 2 else None
    return res


def selection_shares(model, loss: FasterRCNNLoss, images: torch.Tensor, targets: list[dict]) -> dict[str, dict]:
    """IoU of the RoIs random sampling and OHEM select from one batch's training candidates:
    ``{sampler: {"pos": IoU of the selected positives, "neg": of the selected negatives}}``."""
    out = model(images)
    out["proposals"], out["proposal_valid"] = model.propose(out, training=True)
    out["box_head"] = lambda rois: model.box_forward(out["features"], rois)
    assign = loss.assigner.assign(targets)
    cand = loss.roi_candidates(out, assign)
    res = {}
    for mode in ("random", "ohem"):
        loss.roi_mode = mode
        index, ok = loss.sample(out, cand, assign)
        labels = torch.gather(cand.labels, 1, index)[ok]
        iou = torch.gather(cand.iou, 1, index)[ok]
        res[mode] = {"pos": iou[labels >= 0], "neg": iou[labels == -1]}
    return res


def selection_summary(parts: list[dict]) -> dict:
    out = {}
    for mode in ("random", "ohem"):
        pos = torch.cat([p[mode]["pos"] for p in parts])
        neg = torch.cat([p[mode]["neg"] for p in parts])
        out[mode] = {"pos": int(pos.numel()), "neg": int(neg.numel()),
                     **{f"pos {lo:.1f}-{min(hi, 1.0):.1f}": float(((pos >= lo) & (pos < hi)).float().mean())
                        for lo, hi in POS_BINS},
                     "pos IoU 1 (GT boxes)": float((pos > 0.999).float().mean()),
                     "neg near": float((neg >= 0.1).float().mean())}
    return out


@torch.no_grad()
def measure(run: Path, data: Path, batches: int, batch_size: int) -> dict:
    cfg = config_from_dict(json.loads((run / "config.json").read_text()), str(run / "config.json"))
    cfg.data.root = str(data)
    model, _ = load_artifact(run)
    if batches <= 0:  # the whole val split, and as many train images
        batches = -(-len(build_dataset(cfg, "val", train=False)) // batch_size)
    parts = [score_proposals(model, images, targets) for images, targets in _batches(cfg, "val", batches, batch_size)]
    res = summarize({k: torch.cat([p[k] for p in parts]) for k in parts[0]})
    loss = FasterRCNNLoss(cfg, build_methods(["ohem"], cfg.methods, arch="faster_rcnn"), torch.device("cpu"))
    res["selection"] = selection_summary([selection_shares(model, loss, images, targets)
                                          for images, targets in _batches(cfg, "train", batches, batch_size)])
    return res


def _batches(cfg, split: str, batches: int, batch_size: int):
    ds = build_dataset(cfg, split, train=False)
    n = min(len(ds), batches * batch_size)
    for start in range(0, n, batch_size):
        samples = [ds[i] for i in range(start, min(start + batch_size, n))]
        yield torch.stack([x[0] for x in samples]), [x[1] for x in samples]


def method_label(run: str) -> str:
    """The method a run belongs to: its parent directory, overrides shortened
    (``ohem__methods.ohem.selection-negatives`` -> ``ohem (ohem.selection=negatives)``)."""
    name = Path(run).parent.name
    base, _, spec = name.partition("__")
    spec = "+".join(p.removeprefix("methods.").replace("-", "=", 1) for p in spec.split("+")) if spec else ""
    return f"{base} ({spec})" if spec else base


def table_rows(records: dict[str, dict]) -> list[dict]:
    """One row per method: the mean over its runs."""
    by_method: dict[str, list[dict]] = {}
    for run, res in records.items():
        by_method.setdefault(method_label(run), []).append(res)
    rows = []
    def mean(xs):  # over the runs where the group is not empty
        xs = [x for x in xs if x is not None]
        return sum(xs) / len(xs) if xs else float("nan")
    for method, rs in by_method.items():
        row = {"method": method, "runs": len(rs)}
        for lo, hi in POS_BINS:
            k = f"pos {lo:.1f}-{min(hi, 1.0):.1f}"
            row[f"p_gt {k[4:]}"] = round(mean([r[k]["p_gt"] for r in rs]), 3)
        for lo, hi in POS_BINS:
            k = f"pos {lo:.1f}-{min(hi, 1.0):.1f}"
            row[f"IoU in/out {k[4:]}"] = (f"{mean([r[k]['iou_in'] for r in rs]):.3f}/"
                                          f"{mean([r[k]['iou_out'] for r in rs]):.3f}")
        row["cls acc pos"] = round(mean([r[f"pos {lo:.1f}-{min(hi, 1.0):.1f}"]["cls_acc"] for r in rs
                                         for lo, hi in POS_BINS]), 3)
        for name in NEG_GROUPS:
            row[f"p_fg {name}"] = round(mean([r[name]["p_fg"] for r in rs]), 4)
            row[f"{name} >{SCORE_THR}"] = round(mean([r[name]["above_thr"] for r in rs]), 4)
        row["corr p_gt~IoU out"] = round(mean([r["corr_pgt_iou_out"] for r in rs]), 3)
        rows.append(row)
    return rows


def selection_rows(records: dict[str, dict]) -> list[dict]:
    """One row per (method whose weights score the candidates, sampler): mean over the runs."""
    by_method: dict[str, list[dict]] = {}
    for run, res in records.items():
        by_method.setdefault(method_label(run), []).append(res["selection"])
    rows = []
    for method, rs in by_method.items():
        for mode in ("random", "ohem"):
            keys = [k for k in rs[0][mode] if k not in ("pos", "neg")]
            rows.append({"weights": method, "sampler": mode, "positives": round(sum(r[mode]["pos"] for r in rs) / len(rs)),
                         **{k: round(sum(r[mode][k] for r in rs) / len(rs), 3) for k in keys}})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--batches", type=int, default=0, help="batches per split (0: the whole val split, and as "
                    "many train images)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "roi_diagnostic")
    args = ap.parse_args(argv)
    for run in args.runs:  # fail before the long loop, not after it
        resolve_artifact(run)
    torch.manual_seed(0)
    records = {str(run): measure(run, args.data, args.batches, args.batch_size) for run in args.runs}
    first = next(iter(records.values()))
    what = "the whole val split" if args.batches <= 0 else f"{args.batches} val batches of {args.batch_size}"
    title = (f"Faster R-CNN box head on every test-time proposal of {what} ({first['proposals']} proposals for "
             f"the first run), mean over each method's runs; "
             f"p_gt: GT-class probability of positives by IoU; IoU in/out: before/after the box regression; "
             f"p_fg: highest foreground probability of negatives (near: IoU 0.1-0.5, bg: < 0.1)")
    sel_title = ("share of the RoIs each sampler selects from the training candidates (proposals + GT boxes) "
                 "with the run's weights, by IoU: positives per bin (IoU 1: the GT boxes), negatives near an object "
                 "(IoU >= 0.1); mean over each method's runs; positives: how many it selects from as many train images as val "
                 "images above")
    text = (format_table(table_rows(records), title=title) + "\n\n"
            + format_table(selection_rows(records), title=sel_title))
    print(text)
    write_results(args.out, {"runs": records}, text, fenced=True, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
