"""verify(): structure identity, post-processing settings, latency rule, accuracy through export."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from test_serve_helpers import export_onnx, make_artifact, make_toy_onnx, write_coco

from swdet.errors import SwdetError
from swdet.serve.bench import interleaved_latency
from swdet.serve.runtimes import load_runtime
from swdet.serve.verify import format_verify_report, same_cost, summarize_onnx, verify

FAST = {"rounds": 3, "iters": 1, "warmup": 1, "batch_size": 2}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_verify")
    base = make_artifact(root / "base", seed=0)
    cand = make_artifact(root / "cand", seed=1)  # other weights, same architecture
    return {
        "root": root, "base": base, "cand": cand,
        "base_onnx": export_onnx(base, root / "base.onnx"),
        "cand_onnx": export_onnx(cand, root / "cand.onnx"),
        "big_onnx": export_onnx(cand, root / "cand160.onnx", imgsz=160),
        "thr_onnx": export_onnx(cand, root / "cand_thr.onnx", score_threshold=0.3),
    }


def _row(report, check):
    return next(r for r in report.rows if r.check == check)


def test_same_architecture_other_weights_is_ok(exported):
    rep = verify(exported["base_onnx"], exported["cand_onnx"], **FAST)
    assert rep.ok, format_verify_report(rep)
    for check in ("graph ops", "initializers (names, shapes)", "parameters (model.json)", "input", "score_threshold"):
        assert _row(rep, check).status == "same"
    assert _row(rep, "latency (ms, median)").status in ("same", "warn")  # identical graphs: never a failure
    lat = rep.latency
    assert lat["rounds"] == 3 and len(lat["round_ratios"]) == 3 and lat["band"][0] <= lat["ratio"] <= lat["band"][1]
    d = rep.to_dict()
    assert d["ok"] is True and json.dumps(d)
    assert format_verify_report(rep).splitlines()[-1].startswith("OK")


def test_different_input_size_is_not_ok(exported):
    rep = verify(exported["base_onnx"], exported["big_onnx"], rounds=0)
    assert not rep.ok
    row = _row(rep, "input")
    assert row.status == "differs" and row.baseline.endswith("128x128") and row.candidate.endswith("160x160")
    assert _row(rep, "latency (ms, median)").status == "skipped"
    text = format_verify_report(rep)
    assert text.splitlines()[-1].startswith("FAILED") and "input differs" in text


def test_threshold_difference_is_a_warning_that_latency_decides(exported):
    rep = verify(exported["cand_onnx"], exported["thr_onnx"], rounds=0)
    thr = _row(rep, "score_threshold")
    assert thr.status == "warn" and thr.baseline == pytest.approx(0.05) and thr.candidate == pytest.approx(0.3)
    assert _row(rep, "graph ops").status == "same"
    assert _row(rep, "latency (ms, median)").status == "undecided" and not rep.ok  # not measured: undecided
    rep = verify(exported["cand_onnx"], exported["thr_onnx"], **FAST)
    lat = _row(rep, "latency (ms, median)")
    assert lat.status in ("same", "differs")
    assert rep.ok == (lat.status == "same") == same_cost(rep.latency)


def test_same_cost_rule():
    assert same_cost({"ratio": 1.2, "band": [0.9, 1.4]})  # band contains 1
    assert same_cost({"ratio": 1.04, "band": [1.03, 1.05]})  # tight band, within 5 %
    assert not same_cost({"ratio": 1.2, "band": [1.1, 1.3]})
    assert not same_cost({"ratio": 0.8, "band": [0.7, 0.9]})


def test_structure_differences_are_named(exported, tmp_path):
    a, b = summarize_onnx(exported["base_onnx"]), summarize_onnx(exported["big_onnx"])
    assert a.ops == b.ops  # same network, larger input: only the shapes/anchors differ
    assert a.input_shape[1:] == [3, 128, 128] and isinstance(a.input_shape[0], str)
    toy = make_toy_onnx(tmp_path / "toy.onnx", imgsz=128)
    rep = verify(exported["base_onnx"], toy, rounds=0)
    assert _row(rep, "graph ops").status == "differs" and "Conv" in _row(rep, "graph ops").note
    assert _row(rep, "initializers (names, shapes)").status == "differs"


def test_bad_inputs(exported, tmp_path):
    trunc = tmp_path / "t.onnx"
    trunc.write_bytes(exported["base_onnx"].read_bytes()[:1000])
    with pytest.raises(SwdetError, match="not a valid ONNX model"):
        verify(exported["base_onnx"], trunc, rounds=0)
    with pytest.raises(SwdetError, match="no swdet metadata"):
        verify(exported["base_onnx"], make_toy_onnx(tmp_path / "p.onnx", meta=False), rounds=0)
    with pytest.raises(SwdetError, match="export run directories first"):
        verify(exported["base"], exported["base_onnx"], rounds=0)
    with pytest.raises(SwdetError, match="--ann and --images go together"):
        verify(exported["base_onnx"], exported["base_onnx"], ann="x.json", rounds=0)


def test_accuracy_through_export(exported, tmp_path):
    ann, images = write_coco(tmp_path / "coco", n=4)
    rep = verify(exported["base_onnx"], exported["cand_onnx"], baseline_source=exported["base"],
                 candidate_source=exported["cand"], ann=ann, images=images, rounds=0, batch_size=2)
    for label in ("baseline", "candidate"):
        acc = rep.accuracy[label]
        assert abs(acc["delta"]) <= 0.002 and acc["ok"]
        assert _row(rep, f"{label} AP: torch -> onnx").status == "same"
    assert rep.ok
    # without the torch sources the accuracy rows are skipped, not failed
    rep = verify(exported["base_onnx"], exported["cand_onnx"], ann=ann, images=images, rounds=0, batch_size=2)
    assert _row(rep, "baseline AP: onnx vs torch").status == "skipped" and rep.ok


def test_interleaved_latency_shape(exported):
    a = load_runtime(exported["base_onnx"])
    b = load_runtime(exported["cand_onnx"])
    res = interleaved_latency(a, b, batch_size=1, rounds=4, iters=2, warmup=1)
    assert res["rounds"] == 4 and len(res["round_ratios"]) == 4
    assert res["ratio"] == pytest.approx(float(np.median(res["round_ratios"])), abs=1e-3)
    assert res["band"][0] <= res["ratio"] <= res["band"][1]
    assert res["a_ms"]["median"] > 0 and res["b_ms"]["median"] > 0


def test_copied_file_is_identical(exported, tmp_path):
    copy = tmp_path / "copy.onnx"
    shutil.copy(exported["base_onnx"], copy)
    rep = verify(exported["base_onnx"], copy, rounds=0)
    assert rep.ok and all(r.status in ("same", "skipped") for r in rep.rows)
