"""benchmarks/roofline.py: its quick mode runs end to end and writes the JSON and Markdown the
README quotes; the peak models compute what they claim."""

from __future__ import annotations

import json

import numpy as np

from conftest import load_benchmark


def _load():
    return load_benchmark("roofline")


def test_quick_mode_writes_json_and_markdown(tmp_path):
    roofline = _load()
    stem = tmp_path / "roofline"
    assert roofline.main(["--quick", "--out", str(stem)]) == 0
    r = json.loads(stem.with_suffix(".json").read_text())
    assert r["quick"] and r["model"] == "retinanet_tiny" and r["model_gflop_per_image"] > 0
    items = {row["item"] for row in r["rows"]}
    assert {"fp32 model", "int8 model", "peak fp32 Conv", "peak int8 QLinearConv",
            "peak int8 MatMulInteger"} <= items
    for row in r["rows"]:
        assert row["gflops"]["min"] <= row["gflops"]["median"] <= row["gflops"]["max"]
    assert "int8 model / fp32 model (speedup)" in r["ratios"]
    counts = r["conv_counts"]
    assert counts["int8"]["float"] < counts["int8 (no rewrite, float heads)"]["float"]
    md = stem.with_suffix(".md").read_text()
    assert "fp32 model / fp32 Conv peak" in md and "Quick setting" in md


def test_peak_models_agree_with_numpy():
    """The three peak items compute the same convolution (up to the int8 rounding)."""
    import onnxruntime as ort

    roofline = _load()
    models = roofline.peak_models(batch=1, channels=8, size=6)
    assert roofline.conv_flops(1, 8, 6) == 2 * 8 * 8 * 9 * 36
    m, feeds = models["int8 MatMulInteger"]
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, feeds)
    w = next(t for t in m.graph.initializer if t.name == "w")
    from onnx import numpy_helper

    ref = (feeds["a"].astype(np.int64) - 128) @ numpy_helper.to_array(w).astype(np.int64)
    np.testing.assert_array_equal(y, ref)
    for name in ("fp32 Conv", "int8 QLinearConv"):
        m, feeds = models[name]
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        (y,) = sess.run(None, feeds)
        assert y.shape == (1, 8, 6, 6)
