"""benchmarks/int8_profile.py: its quick mode profiles the FP32 and the INT8 graph of a tiny
random model and writes a JSON whose sections and kinds add up to each graph's total."""

from __future__ import annotations

import json

from conftest import load_benchmark


def test_quick_mode_profiles_both_graphs(tmp_path):
    prof = load_benchmark("int8_profile")
    stem = tmp_path / "int8_profile"
    argv = ["--model", "retinanet_tiny", "--imgsz", "128", "--batch", "2", "--threads", "1", "--quick",
            "--out", str(stem)]
    assert prof.main(argv) == 0
    r = json.loads(stem.with_suffix(".json").read_text())
    assert r["quick"] and r["model"] == "retinanet_tiny" and r["imgsz"] == 128 and r["runs"] == 3
    assert set(r["graphs"]) == {"fp32", "int8"}
    for name, g in r["graphs"].items():
        assert g["kernel_ms"] > 0 and g["run_ms"] > 0, name
        for key in ("by_section", "by_kind", "by_op"):  # each a partition of the kernel time
            assert abs(sum(g[key].values()) - g["kernel_ms"]) <= 0.001 * len(g[key]) + 1e-9, (name, key)
        assert "unassigned" not in g["by_section"], name
        assert set(g["by_section"]) <= {"input normalization", "backbone", "fpn", "head: cls tower",
                                        "head: box tower", "head: outputs", "post-processing"}, name
        assert {"backbone", "fpn", "head: cls tower", "head: box tower", "post-processing"} <= set(g["by_section"])
    f32, i8 = r["graphs"]["fp32"], r["graphs"]["int8"]
    # ORT runs every convolution of the FP32 graph as float and, after swdet calib's rewrites,
    # every one of the INT8 graph as int8 but the image stem (calib's stem="float")
    assert f32["conv_counts"]["int8"] == 0 and f32["conv_counts"]["float"] == f32["conv_counts"]["total"] > 0
    assert i8["conv_counts"]["float"] == 1 and i8["conv_counts"]["int8"] == i8["conv_counts"]["total"] - 1 > 0
    assert i8["by_kind"]["Q/DQ"] > 0 and "Q/DQ" not in f32["by_kind"]
    assert i8["by_kind"]["int8 conv"] > i8["by_kind"]["float conv"] > 0
    md = stem.with_suffix(".md").read_text()
    assert "under profiling" in md and "Quick setting" in md and "| head: cls tower" in md
