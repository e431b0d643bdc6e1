"""Where each classification loss spends its gradient: GHM-C vs focal on the same anchors.

For a trained run directory, on ``--batches`` val batches (no augmentation), the logits of every
anchor and class element are split into groups:

- ``pos``: the ground-truth class element of a positive anchor;
- ``confusion``: the other class elements of a positive anchor (what teaches *which* class);
- ``near``: every element of a negative anchor whose best IoU with a GT is in [0.1, 0.4)
  (what teaches *where*: the neighbours of an object);
- ``background``: every element of the other negative anchors.

For each loss the per-element gradient magnitude ``|∂L/∂z|`` is summed per group and shown as a
share of the total (``share``), with the mean per element relative to a positive element's
(``per_elem/pos``). Focal: ``∂FL/∂z`` of ``Σ FL / N_pos`` (α 0.25, γ 2); GHM-C: ``(p - t) / (n_l·S)``
(``swdet.train.losses.ghm_c_loss`` with the run's bins, momentum 0: the batch's own histogram).
Both are evaluated at the *same* logits, so the table shows how each loss would steer that
detector, not how it trained.

    python benchmarks/ghm_budget.py --data data/synth runs/methods/retinanet/focal/seed2 \\
        runs/methods/retinanet/ghm/seed2

Results: ``benchmarks/results/ghm_budget.{json,md}``.
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

from swdet.artifact import load_artifact  # noqa: E402
from swdet.boxes import box_iou  # noqa: E402
from swdet.config import config_from_dict  # noqa: E402
from swdet.table import format_table  # noqa: E402
from swdet.train import losses as L  # noqa: E402
from swdet.train.engine import build_dataset  # noqa: E402
from swdet.train.methods import build_methods  # noqa: E402
from swdet.train.retina_loss import RetinaNetLoss  # noqa: E402

GROUPS = ("pos", "confusion", "near", "background")


def element_groups(labels: torch.Tensor, best_iou: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[N, C]`` group index (0..3 as in GROUPS, -1 ignored) of every anchor x class element."""
    n = labels.shape[0]
    g = torch.full((n, num_classes), 3, dtype=torch.int64)
    near = (labels == -1) & (best_iou >= 0.1) & (best_iou < 0.4)
    g[near] = 2
    pos = labels >= 0
    g[pos] = 1
    g[pos.nonzero().squeeze(1), labels[pos]] = 0
    g[labels == -2] = -1
    return g


def grad_shares(grad: torch.Tensor, groups: torch.Tensor) -> dict:
    mag = grad.abs()
    total = float(mag[groups >= 0].sum())
    out = {}
    pos_mean = float(mag[groups == 0].mean())
    for i, name in enumerate(GROUPS):
        sel = groups == i
        out[name] = {"share": float(mag[sel].sum()) / total, "count": int(sel.sum()),
                     "per_elem/pos": float(mag[sel].mean()) / pos_mean if sel.any() else None}
    return out


def measure(run: Path, data: Path, batches: int, batch_size: int) -> dict:
    cfg = config_from_dict(json.loads((run / "config.json").read_text()), str(run / "config.json"))
    cfg.data.root = str(data)
    model, _ = load_artifact(run)
    loss = RetinaNetLoss(cfg, build_methods(["focal"], cfg.methods), torch.device("cpu"))
    levels = loss.anchor_levels
    ds = build_dataset(cfg, "val", train=False)
    grads: dict[str, list[torch.Tensor]] = {"focal": [], "ghm": []}
    all_groups, all_probs = [], []
    for b in range(batches):
        samples = [ds[i] for i in range(b * batch_size, (b + 1) * batch_size)]
        images = torch.stack([s[0] for s in samples])
        targets = [s[1] for s in samples]
        assign = loss.assigner.assign(targets)
        with torch.no_grad():
            logits = torch.cat(model(images)["cls_logits"], 1)  # [B, A, C]
        bsz, a, c = logits.shape
        best = torch.zeros(bsz, a)
        for i, t in enumerate(targets):  # a handful of images: best IoU of each anchor
            if len(t["boxes"]):
                best[i] = box_iou(loss.anchors, t["boxes"].float()).max(1).values
        labels = assign.labels.reshape(-1)
        all_groups.append(element_groups(labels, best.reshape(-1), c))
        z = logits.reshape(-1, c).clone().requires_grad_(True)
        onehot = torch.zeros_like(z)
        pos = labels >= 0
        onehot[pos.nonzero().squeeze(1), labels[pos]] = 1.0
        valid = labels != -2
        fl = (L.sigmoid_focal_loss(z, onehot, 0.25, 2.0) * valid[:, None]).sum() / max(int(pos.sum()), 1)
        grads["focal"].append(torch.autograd.grad(fl, z)[0])
        gl, _ = L.ghm_c_loss(z, onehot, valid, bins=cfg.methods.ghm.bins, momentum=0.0,
                             levels=levels.repeat(bsz), num_levels=int(levels.max()) + 1)
        grads["ghm"].append(torch.autograd.grad(gl.sum(), z)[0])
        all_probs.append(torch.sigmoid(z.detach()))
    groups = torch.cat(all_groups)
    probs = torch.cat(all_probs)
    out = {name: grad_shares(torch.cat(g), groups) for name, g in grads.items()}
    out["mean_score"] = {name: float(probs[groups == i].mean()) for i, name in enumerate(GROUPS)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ghm_budget")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows, records = [], {}
    for run in args.runs:
        res = measure(run, args.data, args.batches, args.batch_size)
        records[str(run)] = res
        for loss in ("focal", "ghm"):
            row = {"run": str(run), "loss": loss}
            for g in GROUPS:
                row[f"{g} share"] = round(res[loss][g]["share"], 4)
                pe = res[loss][g]["per_elem/pos"]
                row[f"{g} /pos"] = None if pe is None else float(f"{pe:.3g}")
            rows.append(row)
        rows.append({"run": str(run), "loss": "mean score",
                     **{f"{g} share": round(res["mean_score"][g], 4) for g in GROUPS}})
    counts = {g: next(iter(records.values()))["focal"][g]["count"] for g in GROUPS}
    title = (f"classification gradient |dL/dz| per group: share of the total and mean per element relative "
             f"to a positive element ({args.batches} val batches of {args.batch_size}; elements: {counts}); "
             f"'mean score' rows: the detector's mean sigmoid score per group")
    text = format_table(rows, title=title)
    print(text)
    write_results(args.out, {"groups": list(GROUPS), "counts": counts, "runs": records}, text, fenced=True,
                  indent=1)


if __name__ == "__main__":
    main()
