"""Does a detector find the objects but name them wrongly? Class-aware vs class-agnostic AP.

For each run directory (a ``swdet train`` run with ``predictions_val.json``), against the val
split's ground truth:

- ``AP``: COCO box AP as usual (a detection counts only with the right class);
- ``AP agnostic``: the same with every class merged into one (a box counts wherever it is, whatever
  its label): the localization-and-objectness part of the detector;
- ``class acc``: over the GT boxes that some detection covers at IoU >= 0.5, the share whose
  highest-scoring covering detection carries the GT's class.

A method whose ``AP agnostic`` is close to the baseline's while its ``AP`` and ``class acc`` are far
below has learnt *where* objects are but not *which* they are (COCO's error analysis calls this
the confusion with other classes).

    python benchmarks/class_confusion.py --data data/synth runs/methods/retinanet/focal/seed0 \\
        runs/methods/retinanet/ghm/seed0

Results: ``benchmarks/results/class_confusion.{json,md}`` (``--out`` changes the stem).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from _results import write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from swdet.boxes import box_iou  # noqa: E402
from swdet.config import DataConfig  # noqa: E402
from swdet.data.splits import find_split  # noqa: E402
from swdet.evaluation import evaluate_detections, load_predictions_json  # noqa: E402
from swdet.table import format_table  # noqa: E402


def agnostic_gt(gt: dict) -> dict:
    """The ground truth with every category merged into category 1."""
    return {**gt, "categories": [{"id": 1, "name": "object"}],
            "annotations": [{**a, "category_id": 1} for a in gt["annotations"]]}


def class_accuracy(gt: dict, preds: list[dict], iou_thr: float = 0.5) -> float | None:
    """Share of covered GT boxes whose best-scoring covering detection has the GT's class."""
    import torch

    by_img: dict[int, list[dict]] = {}
    for p in preds:
        by_img.setdefault(p["image_id"], []).append(p)
    hits = total = 0
    for img_id, anns in _group(gt["annotations"]).items():
        dets = by_img.get(img_id, [])
        anns = [a for a in anns if not a.get("iscrowd", 0)]
        if not dets or not anns:
            continue
        xyxy = lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]]  # noqa: E731
        iou = box_iou(torch.tensor([xyxy(a["bbox"]) for a in anns], dtype=torch.float64),
                      torch.tensor([xyxy(d["bbox"]) for d in dets], dtype=torch.float64)).numpy()
        scores = np.array([d["score"] for d in dets])
        for i, a in enumerate(anns):
            cover = np.flatnonzero(iou[i] >= iou_thr)
            if len(cover):
                total += 1
                hits += dets[cover[np.argmax(scores[cover])]]["category_id"] == a["category_id"]
    return hits / total if total else None


def _group(anns: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for a in anns:
        out.setdefault(a["image_id"], []).append(a)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run directories with predictions_val.json")
    ap.add_argument("--data", type=Path, required=True, help="dataset folder (its val split is the truth)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "class_confusion")
    args = ap.parse_args()
    ann_path, _ = find_split(DataConfig(root=str(args.data)), "val")
    gt = json.loads(Path(ann_path).read_text())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        agn_path = Path(tmp) / "agnostic.json"
        agn_path.write_text(json.dumps(agnostic_gt(gt)))
        for run in args.runs:
            preds = load_predictions_json(run / "predictions_val.json")
            aware = evaluate_detections(ann_path, preds).stats
            agn = evaluate_detections(agn_path, [{**p, "category_id": 1} for p in preds]).stats
            acc = class_accuracy(gt, preds)
            pts = lambda v: f"{100 * v:.1f}"  # noqa: E731
            rows.append({"run": str(run), "AP": pts(aware["AP"]), "AP agnostic": pts(agn["AP"]),
                         "AP50": pts(aware["AP50"]), "AP50 agnostic": pts(agn["AP50"]),
                         "class acc": None if acc is None else f"{acc:.3f}"})
    title = "Class-aware vs class-agnostic AP (points) on the val split; class acc: covered GTs labelled right"
    print(format_table(rows, title=title))
    write_results(args.out, {"rows": rows, "command": "python " + " ".join(sys.argv)},
                  format_table(rows, title=title, markdown=True) + "\n\n`python " + " ".join(sys.argv) + "`\n")


if __name__ == "__main__":
    main()
