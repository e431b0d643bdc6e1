"""benchmarks/roi_diagnostic.py: the per-proposal statistics on a hand-made set, and one end-to-end
pass over a random-weights Faster R-CNN run directory."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import load_benchmark


def test_summary_of_a_hand_made_proposal_set():
    diag = load_benchmark("roi_diagnostic")
    s = {"iou_in": torch.tensor([0.55, 0.65, 0.8, 0.95, 1.0, 0.3, 0.05, 0.0]),
         "p_gt": torch.tensor([0.2, 0.4, 0.6, 0.8, 1.0, 0.0, 0.0, 0.0]),
         "acc": torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]),
         "p_fg": torch.tensor([0.5, 0.5, 0.5, 0.5, 0.5, 0.3, 0.01, 0.1]),
         "iou_out": torch.tensor([0.6, 0.7, 0.85, 0.9, 0.95, 0.0, 0.0, 0.0])}
    r = diag.summarize(s)
    lo = r["pos 0.5-0.7"]
    assert lo["count"] == 2 and lo["p_gt"] == pytest.approx(0.3) and lo["cls_acc"] == pytest.approx(0.5)
    assert lo["iou_in"] == pytest.approx(0.6) and lo["iou_out"] == pytest.approx(0.65)
    hi = r["pos 0.9-1.0"]  # IoU 1 (a GT box itself) belongs to the top bin
    assert hi["count"] == 2 and hi["p_gt"] == pytest.approx(0.9) and hi["iou_out"] == pytest.approx(0.925)
    assert r["near"] == {"count": 1, "p_fg": pytest.approx(0.3), "above_thr": 1.0}
    assert r["bg"]["count"] == 2 and r["bg"]["p_fg"] == pytest.approx(0.055) and r["bg"]["above_thr"] == 0.5
    # p_gt and IoU out rise together over the five positives
    assert r["corr_pgt_iou_out"] == pytest.approx(float(torch.corrcoef(torch.stack(
        [s["p_gt"][:5], s["iou_out"][:5]]))[0, 1]))
    assert r["corr_pgt_iou_out"] > 0.9
    # an empty group has no mean (None in the JSON, not NaN)
    pos_only = diag.summarize({k: v[:5] for k, v in s.items()})
    assert pos_only["near"] == {"count": 0, "p_fg": None, "above_thr": None}
    # runs are grouped by their parent directory, the methods.py override spelled back
    assert diag.method_label("r/ohem/seed0") == "ohem"
    assert diag.method_label("r/ohem__methods.ohem.selection-negatives/seed2") == "ohem (ohem.selection=negatives)"


def test_runs_on_a_faster_rcnn_run_directory(tmp_path, synth_data):
    """A freshly trained (2-iteration) run: every statistic present, the samplers' selections
    within the RoI batch, and the table written."""
    from swdet.cli import main

    run = tmp_path / "ohem" / "seed0"
    assert main(["train", "--data", str(synth_data), "--model", "faster_rcnn_tiny", "--method", "random", "--iters", "2",
                 "--batch-size", "2", "--imgsz", "128", "--workers", "0", "--out", str(run), "--no-eval", "--quiet"]) == 0
    stem = tmp_path / "diag"
    diag = load_benchmark("roi_diagnostic")
    assert diag.main(["--data", str(synth_data), "--batches", "1", "--batch-size", "2", "--out", str(stem), str(run)]) == 0
    rec = json.loads(stem.with_suffix(".json").read_text())["runs"][str(run)]
    assert rec["proposals"] > 0
    sel = rec["selection"]
    for mode in ("random", "ohem"):
        assert sel[mode]["pos"] + sel[mode]["neg"] <= 2 * 128  # at most roi_batch per image
        assert sel[mode]["neg"] > 0
        if sel[mode]["pos"]:  # the bins partition the selected positives; the GT boxes are in the top bin
            assert sum(sel[mode][f"pos {b}"] for b in ("0.5-0.7", "0.7-0.9", "0.9-1.0")) == pytest.approx(1.0)
            assert sel[mode]["pos IoU 1 (GT boxes)"] <= sel[mode]["pos 0.9-1.0"]
    md = stem.with_suffix(".md").read_text()
    assert "\nohem " in md and "p_gt 0.9-1.0" in md and "sampler" in md  # the run is grouped as "ohem"
