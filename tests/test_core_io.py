"""Core pieces every stage shares: atomic writes, the ONNX metadata, the engine sidecar rules,
markdown tables, and the formulas kept in one place (prior bias, θ = N_f/N, batched IoU)."""

from __future__ import annotations

import json
import math
import os
import stat

import numpy as np
import pytest
import torch

from swdet.artifact import atomic_write_bytes, atomic_write_json, threshold_record
from swdet.errors import SwdetError

from conftest import model_meta


# ----------------------------------------------------------------------------------------------
# Atomic writes


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_atomic_write_mode_follows_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        a = atomic_write_bytes(tmp_path / "sub" / "a.bin", b"payload")
        b = atomic_write_json(tmp_path / "b.json", {"x": np.float32(0.5), "n": np.int64(3), "v": np.arange(2)})
    finally:
        os.umask(old)
    want = 0o666 & ~umask  # what open() would have created, not mkstemp's 0600
    assert stat.S_IMODE(a.stat().st_mode) == want and stat.S_IMODE(b.stat().st_mode) == want
    assert a.read_bytes() == b"payload" and json.loads(b.read_text()) == {"x": 0.5, "n": 3, "v": [0, 1]}
    assert sorted(os.listdir(tmp_path)) == ["b.json", "sub"] and os.listdir(tmp_path / "sub") == ["a.bin"]


def test_atomic_write_failure_is_one_line_and_leaves_nothing(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(SwdetError) as e:
        atomic_write_json(blocker / "out.json", {"a": 1})
    msg = str(e.value)
    assert msg.startswith(f"{blocker / 'out.json'}: cannot write (") and "\n" not in msg
    target = tmp_path / "adir"
    target.mkdir()
    with pytest.raises(SwdetError, match=r"adir: cannot write \("):  # a folder in the way of the rename
        atomic_write_bytes(target, b"x")
    assert sorted(os.listdir(tmp_path)) == ["adir", "file.txt"] and not os.listdir(target)  # no temp left


def test_strict_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "m.json", {"AP": float("nan")}, allow_nan=False)
    atomic_write_json(tmp_path / "m.json", {"AP": float("nan")})  # logs may hold NaN losses
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]


# ----------------------------------------------------------------------------------------------
# ONNX metadata (one implementation for export, calib and serve)


def _tiny_proto():
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    return helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)])


def test_onnx_metadata_roundtrip_and_strict_errors(tmp_path):
    import onnx

    from swdet.deploy.onnx_meta import parse_metadata, read_onnx_metadata, require_onnx_metadata, set_onnx_metadata

    proto = _tiny_proto()
    assert read_onnx_metadata(proto) is None
    with pytest.raises(SwdetError, match="m.onnx: not an swdet model \\(no swdet metadata\\)"):
        require_onnx_metadata(proto, "m.onnx")
    meta = model_meta(64, score=np.float32(0.25))
    set_onnx_metadata(proto, meta)
    set_onnx_metadata(proto, {**meta, "again": True})  # replaces, never duplicates
    assert [p.key for p in proto.metadata_props] == ["swdet"]
    path = tmp_path / "m.onnx"
    onnx.save(proto, str(path))
    assert read_onnx_metadata(path) == require_onnx_metadata(path) == {**meta, "score": 0.25, "again": True}
    with pytest.raises(SwdetError, match="x.onnx: the swdet metadata is not valid JSON"):
        parse_metadata("{oops", "x.onnx")
    with pytest.raises(SwdetError, match="not a model description"):
        parse_metadata(json.dumps({"format": "other"}), "x.onnx")
    with pytest.raises(SwdetError, match="newer swdet"):
        parse_metadata(json.dumps(model_meta(format_version=99)), "x.onnx")
    assert read_onnx_metadata(proto) == {**meta, "score": 0.25, "again": True}  # lenient: no format check needed


def test_export_serve_and_calib_share_the_core_implementations():
    """Deployment facts live once, in swdet.deploy; the stages use them, no shims re-export them."""
    import importlib.util

    import swdet.deploy.engine_meta as E
    import swdet.deploy.onnx_meta as M
    import swdet.deploy.trt_rules as T
    import swdet.export
    from swdet.serve.runtimes import onnxruntime_runtime, tensorrt_runtime

    assert swdet.export.read_onnx_metadata is M.read_onnx_metadata
    assert onnxruntime_runtime.parse_metadata is M.parse_metadata
    assert onnxruntime_runtime.check_score_threshold is tensorrt_runtime.check_score_threshold is M.check_score_threshold
    assert swdet.export.check_tensorrt_compat is T.check_tensorrt_compat
    assert swdet.export.check_engine_sidecar is E.check_engine_sidecar
    for gone in ("swdet.export.trt_check", "swdet.serve.preprocess", "swdet.onnx_meta", "swdet.trt_rules",
                 "swdet.engine_meta", "swdet.pipeline"):
        assert importlib.util.find_spec(gone) is None, gone


# ----------------------------------------------------------------------------------------------
# Engine sidecar: one rule set, written by export, read by serve


def test_engine_sidecar_rules(tmp_path):
    from swdet.deploy.engine_meta import check_engine_sidecar, engine_sidecar, read_engine_sidecar, write_engine_sidecar

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    side = engine_sidecar(model_meta(64), tensorrt_version="10.3.0", gpu="G1",
                          compute_capability="9.0", precision="fp16", profile={"min": [1, 3, 64, 64]},
                          onnx_sha256="0" * 64, onnx_name="m.onnx")
    path = write_engine_sidecar(engine, side)
    assert path == tmp_path / "m.engine.json"
    here = {"tensorrt_version": "10.3.0", "gpu": "G1", "compute_capability": "9.0"}
    assert check_engine_sidecar(engine, **here)["engine"]["precision"] == "fp16"
    with pytest.raises(SwdetError, match=r"m.engine: engine built with TensorRT 10.3.0, this machine has TensorRT "
                                         r"10.4.0; rebuild it here with 'swdet export m.onnx --format tensorrt'"):
        check_engine_sidecar(engine, **{**here, "tensorrt_version": "10.4.0"})
    with pytest.raises(SwdetError, match=r"compute capability 9.0\), this is G2 \(8.9\)"):
        check_engine_sidecar(engine, **{**here, "gpu": "G2", "compute_capability": "8.9"})
    with pytest.warns(UserWarning, match="built on G1, running on G2 \\(same compute capability 9.0\\)"):
        check_engine_sidecar(engine, **{**here, "gpu": "G2"})
    # a hand-written flat sidecar without a capability: the GPU name stands in for it
    path.write_text(json.dumps({"format": "swdet-model", "tensorrt_version": "10.3.0", "gpu": "G1"}))
    assert read_engine_sidecar(engine)["engine"] == {"tensorrt_version": "10.3.0", "gpu": "G1"}
    check_engine_sidecar(engine, **here)
    with pytest.raises(SwdetError, match="built for GPU 'G1', this is 'G2'"):
        check_engine_sidecar(engine, **{**here, "gpu": "G2"})
    path.write_text("{")
    with pytest.raises(SwdetError, match="unreadable engine sidecar"):
        read_engine_sidecar(engine)


# ----------------------------------------------------------------------------------------------
# Markdown tables


def test_format_table_markdown():
    from swdet.table import format_table

    rows = [["fp32", "-", "1.00x", "a|b"], ["int8", 0.25, "1.52x [1.40, 1.61]", None]]
    text = format_table(rows, ["precision", "AP", "speedup", "note"], title="Results", markdown=True)
    assert text.splitlines() == [
        "Results",
        "",
        "| precision |     AP | speedup            | note |",
        "| --------- | -----: | ------------------ | ---- |",
        "| fp32      |      - | 1.00x              | a\\|b |",
        "| int8      | 0.2500 | 1.52x [1.40, 1.61] | -    |",
    ]
    plain = format_table(rows, ["precision", "AP", "speedup", "note"])
    assert "|" not in plain.splitlines()[0] and plain.splitlines()[1].startswith("---------  ")


# ----------------------------------------------------------------------------------------------
# Formulas kept in one place


def test_prior_bias_is_shared_by_the_heads_and_optimal_bias():
    import swdet.config
    from swdet.models import build_model
    from swdet.models.retinanet import prior_bias
    from swdet.train.weighting import optimal_bias, optimal_prior

    assert 1 / (1 + math.exp(-prior_bias(0.01))) == pytest.approx(0.01)
    assert prior_bias(0.01) == pytest.approx(-math.log(99))
    assert optimal_bias(37, 5000, 3) == pytest.approx(prior_bias(optimal_prior(37, 5000, 3)))
    assert torch.allclose(prior_bias(torch.tensor([0.01, 0.5], dtype=torch.float64)),
                          torch.tensor([-math.log(99), 0.0], dtype=torch.float64))
    cfg = swdet.config.model_preset("retinanet_tiny")
    cfg.num_classes = 2
    model = build_model(cfg)
    model.head.set_prior(0.2)
    assert torch.allclose(model.head.cls_logits.bias, torch.full_like(model.head.cls_logits.bias, prior_bias(0.2)))


def test_threshold_record_is_adaptive_threshold():
    from swdet.train.weighting import adaptive_threshold

    rec = threshold_record(37, 5000)
    assert rec == {"source": "sampling_free", "rule": "N_f/N", "theta": 37 / 5000, "num_fg": 37, "num_all": 5000}
    assert adaptive_threshold(37, 5000) == rec["theta"]
    for bad in ((0, 10), (11, 10), (1, 0)):
        with pytest.raises(SwdetError, match="0 < num_fg <= num_all"):
            threshold_record(*bad)


def test_batched_box_iou_equals_box_iou_per_row():
    from swdet.boxes import batched_box_iou, box_iou

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(3, 5, 2, generator=g) * 50
    a = torch.cat([xy, xy + torch.rand(3, 5, 2, generator=g) * 30], -1)
    xy = torch.rand(3, 4, 2, generator=g) * 50
    b = torch.cat([xy, xy + torch.rand(3, 4, 2, generator=g) * 30], -1)
    b[0, 0] = torch.tensor([1.0, 1.0, 1.0, 5.0])  # degenerate: IoU 0, not NaN
    got = batched_box_iou(a, b)
    assert got.shape == (3, 5, 4)
    for i in range(3):
        assert torch.allclose(got[i], box_iou(a[i], b[i]))
    assert torch.equal(got[0, :, 0], torch.zeros(5))


def test_box_iou_hand_case_and_corner_pair_form_bit_for_bit():
    """box_iou works per coordinate plane; it must equal the [N, M, 2] corner-pair form exactly
    (the assignment's positives depend on IoU ties) and stay differentiable."""
    from swdet.boxes import box_area, box_iou

    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 15.0]])
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    want = torch.tensor([[1.0, 50 / 150, 0.0], [25 / 175, 50 / 150, 0.0]])
    assert torch.allclose(box_iou(a, b), want)

    g = torch.Generator().manual_seed(1)
    xy = torch.rand(2000, 2, generator=g) * 300
    a = torch.cat([xy, xy + torch.rand(2000, 2, generator=g) * 80], 1)
    xy = torch.rand(13, 2, generator=g) * 300
    b = torch.cat([xy, xy + torch.rand(13, 2, generator=g) * 80], 1)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    corner_pairs = inter / (box_area(a)[:, None] + box_area(b)[None, :] - inter).clamp(min=1e-9)
    assert torch.equal(box_iou(a, b), corner_pairs)

    a = a[:50].clone().requires_grad_(True)
    box_iou(a, b).sum().backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_one_input_size_field_and_older_model_json_still_read(tmp_path):
    """model.json stores the input size once (model.imgsz); files written when it also had
    input.size, or (hand-written sidecars) only that, still read the same."""
    from swdet.artifact import build_metadata, input_size
    from swdet.config import PostprocessConfig, model_preset
    from swdet.serve.runtimes.base import Runtime

    cfg = model_preset("retinanet_tiny")
    cfg.imgsz = 96
    meta = build_metadata(cfg, PostprocessConfig(), class_names=["a"], category_ids=[1], method=["focal"])
    assert meta["model"]["imgsz"] == 96 and "size" not in meta["input"]
    old = {**meta, "input": {**meta["input"], "size": 96}}
    for m in (meta, old, {"format": "swdet-model", "input": {"size": 96}}):
        assert input_size(m) == 96 and Runtime(m, "m").imgsz == 96


def test_imgsz_rule_is_stated_once():
    from swdet.config import check_imgsz, load_config

    assert check_imgsz(320, "--imgsz") == 320
    for bad in (100, 32, True, 320.0):
        with pytest.raises(SwdetError, match="must be a multiple of 32, at least 64"):
            check_imgsz(bad, "--imgsz")
    with pytest.raises(SwdetError, match=r"--set: model.imgsz 100: must be a multiple of 32"):
        load_config(None, ["model.imgsz=100"])
