"""TensorRT side of export: the static compatibility check (our graphs pass, bad graphs are
flagged), engine sidecars, the missing-dependency message, and -- where TensorRT and a GPU
exist -- a real engine build compared with ONNX Runtime."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import swdet.config
from swdet.artifact import build_metadata, save_artifact
from swdet.config import PostprocessConfig
from swdet.deploy.engine_meta import check_engine_sidecar, engine_sidecar, sidecar_path, write_engine_sidecar
from swdet.errors import MissingDependency, SwdetError
from swdet.export import check_tensorrt_compat, export_onnx, format_problems
from swdet.export.tensorrt_build import build_engine, import_tensorrt, resolve_profile
from swdet.models import build_model
from swdet.deploy.onnx_meta import set_onnx_metadata

IMGSZ = 128

try:
    import tensorrt  # noqa: F401

    HAVE_TRT = True
except ImportError:
    HAVE_TRT = False
requires_trt_gpu = pytest.mark.skipif(
    not HAVE_TRT or not torch.cuda.is_available(),
    reason="TensorRT is not installed" if not HAVE_TRT else "TensorRT needs a CUDA GPU and none is available")


def make_artifact(path):
    torch.manual_seed(0)
    cfg = swdet.config.model_preset("retinanet_tiny")
    cfg.num_classes, cfg.imgsz = 3, IMGSZ
    model = build_model(cfg)
    with torch.no_grad():
        model.head.set_prior(0.2)
        model.head.cls_logits.weight.normal_(std=0.05)
    save_artifact(path, model, build_metadata(cfg, PostprocessConfig(), class_names=["a", "b", "c"],
                                              category_ids=[1, 2, 3], method=["focal"]))
    return path


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return make_artifact(tmp_path_factory.mktemp("artifact"))


@pytest.fixture(scope="module")
def fp32_onnx(artifact, tmp_path_factory):
    return export_onnx(artifact, tmp_path_factory.mktemp("onnx") / "fp32.onnx")


def errors(problems):
    return [p for p in problems if p.severity == "error"]


# ---------------------------------------------------------------------------------------------
# Our graphs pass


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("nms", ["onnx", "efficient"])
@pytest.mark.parametrize("batch", ["dynamic", 2])
def test_our_exports_pass_the_static_check(artifact, tmp_path, precision, nms, batch):
    path = export_onnx(artifact, tmp_path / "m.onnx", precision=precision, nms=nms, batch=batch)
    problems = check_tensorrt_compat(path)
    assert not errors(problems), format_problems(problems)
    assert check_tensorrt_compat(onnx.load(str(path))) == problems  # proto or path


# ---------------------------------------------------------------------------------------------
# Bad graphs are flagged


def _model(nodes, inputs, outputs, inits=(), opset=17, extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _flag(model, op: str, words: str, severity: str = "error"):
    found = [p for p in check_tensorrt_compat(model) if p.op == op and p.severity == severity and words in p.message]
    assert found, format_problems(check_tensorrt_compat(model))
    return found


def test_unsupported_op_is_an_error():
    m = _model([helper.make_node("Unique", ["x"], ["y"], name="uniq")], [_vi("x", [4])], [_vi("y", None)],
               opset=17)
    (p,) = _flag(m, "Unique", "not supported")
    assert p.node == "uniq" and "uniq (Unique)" in format_problems([p])
    m = _model([helper.make_node("FancyOp", ["x"], ["y"], name="f")], [_vi("x", [4])], [_vi("y", [4])])
    _flag(m, "FancyOp", "support matrix")
    m = _model([helper.make_node("FusedConv", ["x"], ["y"], name="fc", domain="com.microsoft")],
               [_vi("x", [4])], [_vi("y", [4])], extra_opsets=[helper.make_opsetid("com.microsoft", 1)])
    _flag(m, "FusedConv", "com.microsoft")


def test_dynamic_spatial_dim_is_an_error():
    m = _model([helper.make_node("Relu", ["images"], ["y"])], [_vi("images", ["batch", 3, "h", 64])],
               [_vi("y", ["batch", 3, "h", 64])])
    found = [p for p in check_tensorrt_compat(m) if p.severity == "error" and p.node == "images"]
    assert len(found) == 1 and "dimension 2" in found[0].message
    ok = _model([helper.make_node("Relu", ["images"], ["y"])], [_vi("images", ["batch", 3, 64, 64])],
                [_vi("y", ["batch", 3, 64, 64])])
    assert not errors(check_tensorrt_compat(ok))


def test_opset_range():
    relu = [helper.make_node("Relu", ["x"], ["y"])]
    assert any("opset 8" in p.message for p in errors(check_tensorrt_compat(_model(relu, [_vi("x", [2])], [_vi("y", [2])], opset=8))))
    warn = check_tensorrt_compat(_model(relu, [_vi("x", [2])], [_vi("y", [2])], opset=21))
    assert not errors(warn) and any("opset 21" in p.message for p in warn)


def test_topk_restrictions():
    x, y, i = _vi("x", [1, 5000]), _vi("v", None), _vi("i", None, TensorProto.INT64)
    dyn = _model([helper.make_node("TopK", ["x", "k"], ["v", "i"], name="t")], [x, _vi("k", [1], TensorProto.INT64)],
                 [y, i])
    _flag(dyn, "TopK", "no visible bound", severity="warning")  # a run-time K with no clamp
    clamp = [helper.make_node("Min", ["k", "cap"], ["kc"], name="min"),
             helper.make_node("TopK", ["x", "kc"], ["v", "i"], name="t")]
    k_in = [x, _vi("k", [1], TensorProto.INT64)]
    for cap, ok in ((1000, True), (5000, False)):
        m = _model(clamp, k_in, [y, i], inits=[numpy_helper.from_array(np.array([cap], np.int64), "cap")])
        found = [p for p in check_tensorrt_compat(m) if p.op == "TopK"]
        assert (not found) if ok else ("may reach 5000" in found[0].message and found[0].severity == "error")
    big = _model([helper.make_node("TopK", ["x", "k"], ["v", "i"])], [x], [y, i],
                 inits=[numpy_helper.from_array(np.array([4000], np.int64), "k")])
    _flag(big, "TopK", "K < 3840")
    unsorted = _model([helper.make_node("TopK", ["x", "k"], ["v", "i"], sorted=0)], [x], [y, i],
                      inits=[numpy_helper.from_array(np.array([10], np.int64), "k")])
    _flag(unsorted, "TopK", "sorted")


def test_nms_inputs_must_be_constant():
    nodes = [helper.make_node("NonMaxSuppression", ["boxes", "scores", "max", "iou", "thr"], ["sel"], name="nms")]
    inits = [numpy_helper.from_array(np.array([10], np.int64), "max"),
             numpy_helper.from_array(np.array([0.05], np.float32), "thr")]
    m = _model(nodes, [_vi("boxes", [1, 100, 4]), _vi("scores", [1, 3, 100]), _vi("iou", [1])],
               [_vi("sel", None, TensorProto.INT64)], inits=inits)
    (p,) = _flag(m, "NonMaxSuppression", "iou_threshold")
    assert p.node == "nms"


def _qdq_conv(zero_point=0, scale_shape=(), w_axis=0, act_scale_shape=()):
    """x -> Q -> DQ -> Conv(DQ(w_int8)) with configurable scales and zero points."""
    w = np.random.default_rng(0).integers(-127, 127, (8, 3, 3, 3)).astype(np.int8)
    inits = [numpy_helper.from_array(np.full(act_scale_shape, 0.02, np.float32), "x_scale"),
             numpy_helper.from_array(np.full(act_scale_shape, zero_point, np.int8), "x_zp"),
             numpy_helper.from_array(w, "w_q"),
             numpy_helper.from_array(np.full(scale_shape, 0.01, np.float32), "w_scale"),
             numpy_helper.from_array(np.zeros(scale_shape, np.int8), "w_zp")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"], name="q_x"),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xdq"], name="dq_x"),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="dq_w",
                              **({"axis": w_axis} if scale_shape else {})),
             helper.make_node("Conv", ["xdq", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    return _model(nodes, [_vi("x", [1, 3, 16, 16])], [_vi("y", [1, 8, 16, 16])], inits=inits)


def test_qdq_rules():
    assert not errors(check_tensorrt_compat(_qdq_conv()))  # per-tensor, zero points 0
    assert not errors(check_tensorrt_compat(_qdq_conv(scale_shape=(8,), w_axis=0)))  # per-channel weights
    _flag(_qdq_conv(zero_point=3), "QuantizeLinear", "non-zero zero point")
    _flag(_qdq_conv(scale_shape=(3,), w_axis=1), "DequantizeLinear", "output-channel axis 0")
    _flag(_qdq_conv(act_scale_shape=(3,)), "QuantizeLinear", "per-channel scale on an activation")


def test_qdq_pairs_and_int8_tensors():
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")]
    lone_q = _model([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
                     helper.make_node("Cast", ["q"], ["y"], to=TensorProto.FLOAT)],
                    [_vi("x", [4])], [_vi("y", [4])], inits=inits)
    _flag(lone_q, "QuantizeLinear", "Q/DQ pairs")
    cast8 = _model([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.INT8, name="c")], [_vi("x", [4])],
                   [_vi("y", [4], TensorProto.INT8)])
    _flag(cast8, "Cast", "INT8")


def test_quantization_inside_postprocessing_is_an_error(fp32_onnx):
    model = onnx.load(str(fp32_onnx))
    g = model.graph
    (out,) = [o for o in g.output if o.name == "det_scores"]
    producer = next(n for n in g.node if "det_scores" in n.output)
    producer.output[0] = "det_scores_f"
    g.initializer.extend([numpy_helper.from_array(np.array(0.01, np.float32), "post/qs"),
                          numpy_helper.from_array(np.array(0, np.int8), "post/qz")])
    g.node.extend([helper.make_node("QuantizeLinear", ["det_scores_f", "post/qs", "post/qz"], ["q"], name="post/q"),
                   helper.make_node("DequantizeLinear", ["q", "post/qs", "post/qz"], ["det_scores"], name="post/dq")])
    found = [p for p in check_tensorrt_compat(model) if "post-processing" in p.message]
    assert {p.node for p in found} == {"post/q", "post/dq"}


def _efficient_node(**overrides):
    attrs = dict(background_class=-1, box_coding=0, score_activation=0, class_agnostic=0, max_output_boxes=100,
                 iou_threshold=0.5, score_threshold=0.05, plugin_version="1")
    attrs.update(overrides)
    attrs = {k: v for k, v in attrs.items() if v is not None}
    node = helper.make_node("EfficientNMS_TRT", ["boxes", "scores"], ["n", "b", "s", "c"], name="enms",
                            domain="TRT", **attrs)
    return _model([node], [_vi("boxes", [1, 50, 4]), _vi("scores", [1, 50, 3])],
                  [_vi("n", [1, 1], TensorProto.INT32), _vi("b", [1, 100, 4]), _vi("s", [1, 100]),
                   _vi("c", [1, 100], TensorProto.INT32)], extra_opsets=[helper.make_opsetid("TRT", 1)])


def test_efficient_nms_attributes_are_validated():
    assert not errors(check_tensorrt_compat(_efficient_node()))
    _flag(_efficient_node(iou_threshold=0.0), "EfficientNMS_TRT", "iou_threshold")
    _flag(_efficient_node(score_activation=2), "EfficientNMS_TRT", "score_activation")
    _flag(_efficient_node(box_coding=None), "EfficientNMS_TRT", "missing attribute box_coding")
    _flag(_efficient_node(plugin_version="2"), "EfficientNMS_TRT", "plugin_version")
    _flag(_efficient_node(max_output_boxes=1.5), "EfficientNMS_TRT", "max_output_boxes must be a int")
    _flag(_efficient_node(score_threshold=-0.1), "EfficientNMS_TRT", "score_threshold")


def test_resize_and_scatter_restrictions():
    roi, scales = numpy_helper.from_array(np.zeros(0, np.float32), "roi"), numpy_helper.from_array(
        np.array([1, 1, 2, 2], np.float32), "scales")
    cubic = _model([helper.make_node("Resize", ["x", "roi", "scales"], ["y"], mode="cubic")],
                   [_vi("x", [1, 1, 4, 4])], [_vi("y", [1, 1, 8, 8])], inits=[roi, scales])
    _flag(cubic, "Resize", "mode")
    add = _model([helper.make_node("ScatterND", ["x", "i", "u"], ["y"], reduction="add")],
                 [_vi("x", [4]), _vi("i", [1, 1], TensorProto.INT64), _vi("u", [1])], [_vi("y", [4])])
    _flag(add, "ScatterND", "reduction")


def test_format_problems():
    assert format_problems([]) == "TensorRT static check: no problems"
    text = format_problems(check_tensorrt_compat(_qdq_conv(zero_point=3)))
    assert text.splitlines()[0].startswith("TensorRT static check: ") and "error(s)" in text
    assert any(line.strip().startswith("error: q_x (QuantizeLinear)") for line in text.splitlines())


# ---------------------------------------------------------------------------------------------
# Engine build: pure-Python parts


def test_resolve_profile():
    assert resolve_profile(["batch", 3, 64, 64]) == {"min": [1, 3, 64, 64], "opt": [8, 3, 64, 64],
                                                     "max": [32, 3, 64, 64]}
    assert resolve_profile([None, 3, 64, 64], 2, None, 4)["opt"] == [4, 3, 64, 64]
    assert resolve_profile([2, 3, 64, 64]) == {k: [2, 3, 64, 64] for k in ("min", "opt", "max")}
    with pytest.raises(SwdetError, match="fixed batch of 2"):
        resolve_profile([2, 3, 64, 64], max_batch=8)
    with pytest.raises(SwdetError, match="min <= opt <= max"):
        resolve_profile([None, 3, 64, 64], 4, 2, 8)
    with pytest.raises(SwdetError, match="only the batch"):
        resolve_profile([None, 3, None, 64])


def _sidecar(tmp_path, version="10.3.0", gpu="NVIDIA H100 80GB HBM3", cc="9.0"):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not really an engine")
    meta = {"format": "swdet-model", "postprocess": {"max_det": 100}}
    side = engine_sidecar(meta, tensorrt_version=version, gpu=gpu, compute_capability=cc, precision="fp16",
                          profile=resolve_profile(["batch", 3, 64, 64]), onnx_sha256="ab" * 32, onnx_name="m.onnx")
    assert write_engine_sidecar(engine, side) == sidecar_path(engine) == tmp_path / "m.engine.json"
    return engine


def test_engine_sidecar_roundtrip_and_mismatch(tmp_path):
    engine = _sidecar(tmp_path)
    data = check_engine_sidecar(engine, tensorrt_version="10.3.0", gpu="NVIDIA H100 80GB HBM3", compute_capability="9.0")
    assert data["engine"]["precision"] == "fp16" and data["engine"]["input"]["max"] == [32, 3, 64, 64]
    assert data["format"] == "swdet-model"
    with pytest.raises(SwdetError, match=r"built with TensorRT 10\.3\.0, this machine has TensorRT 10\.8\.0") as e:
        check_engine_sidecar(engine, tensorrt_version="10.8.0", gpu="NVIDIA H100 80GB HBM3", compute_capability="9.0")
    assert "\n" not in str(e.value)
    with pytest.raises(SwdetError, match="compute capability 9.0"):
        check_engine_sidecar(engine, tensorrt_version="10.3.0", gpu="NVIDIA A100", compute_capability="8.0")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        check_engine_sidecar(engine, tensorrt_version="10.3.0", gpu="NVIDIA H100 PCIe", compute_capability="9.0")
    assert any("H100 PCIe" in str(x.message) for x in w)
    sidecar_path(engine).unlink()
    with pytest.raises(SwdetError, match="no sidecar"):
        check_engine_sidecar(engine, tensorrt_version="10.3.0", gpu="x", compute_capability="9.0")


def test_missing_tensorrt_is_a_one_line_install_hint(monkeypatch, fp32_onnx, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(MissingDependency) as e:
        import_tensorrt()
    assert str(e.value) == ('tensorrt is not installed (needed for building engines); install it with: '
                            'pip install "swdet[tensorrt]"')
    with pytest.raises(MissingDependency):
        build_engine(fp32_onnx, tmp_path / "m.engine")
    assert not (tmp_path / "m.engine").exists()


def test_build_refuses_graphs_with_static_errors(fp32_onnx, tmp_path):
    model = onnx.load(str(fp32_onnx))
    for n in model.graph.node:
        if n.op_type == "TopK":
            keep = [a for a in n.attribute if a.name != "sorted"]
            del n.attribute[:]
            n.attribute.extend(keep + [helper.make_attribute("sorted", 0)])
            break
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(SwdetError, match="not buildable by TensorRT.*sorted"):
        build_engine(bad, tmp_path / "bad.engine")
    plain = tmp_path / "plain.onnx"
    del model.metadata_props[:]
    onnx.save(model, str(plain))
    with pytest.raises(SwdetError, match="no swdet metadata"):
        build_engine(plain, tmp_path / "plain.engine")
    set_onnx_metadata(model, {"format": "swdet-model"})  # metadata back: then the TopK error again
    onnx.save(model, str(plain))
    with pytest.raises(SwdetError, match="sorted"):
        build_engine(plain, tmp_path / "plain.engine")


# ---------------------------------------------------------------------------------------------
# Real builds (TensorRT + CUDA)


def _run_engine(engine_path, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Minimal TensorRT 10 execution with torch-owned CUDA memory and stream."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    engine = trt.Runtime(logger).deserialize_cuda_engine(engine_path.read_bytes())
    ctx = engine.create_execution_context()
    x = x.cuda().contiguous()
    ctx.set_input_shape("images", tuple(x.shape))
    outs = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            dtype = torch.int32 if engine.get_tensor_dtype(name) == trt.DataType.INT32 else torch.float32
            outs[name] = torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=dtype, device="cuda")
            ctx.set_tensor_address(name, outs[name].data_ptr())
    ctx.set_tensor_address("images", x.data_ptr())
    stream = torch.cuda.current_stream()
    assert ctx.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return {k: v.cpu().numpy() for k, v in outs.items()}


@pytest.mark.tensorrt
@pytest.mark.gpu
@requires_trt_gpu
@pytest.mark.parametrize("nms", ["onnx", "efficient"])
def test_engine_build_and_run_matches_onnx(artifact, tmp_path, nms):
    import onnxruntime as ort

    path = export_onnx(artifact, tmp_path / f"{nms}.onnx", nms=nms)
    engine = build_engine(path, tmp_path / f"{nms}.engine", max_batch=4, opt_batch=2,
                          timing_cache=tmp_path / "timing.cache", progress=False)
    assert engine.is_file() and (tmp_path / "timing.cache").is_file()
    side = check_engine_sidecar(engine)  # this machine built it: must pass
    assert side["engine"]["input"]["max"] == [4, 3, IMGSZ, IMGSZ] and side["engine"]["precision"] == "fp32"
    x = torch.rand(3, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0)) * 255
    got = _run_engine(engine, x)
    ref_path = export_onnx(artifact, tmp_path / "ref.onnx")
    sess = ort.InferenceSession(str(ref_path), providers=["CPUExecutionProvider"])
    ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": x.numpy()})))
    assert got["det_boxes"].shape == ref["det_boxes"].shape
    for b in range(3):
        n_ref, n_got = int(ref["num_dets"][b, 0]), int(got["num_dets"][b, 0])
        assert abs(n_ref - n_got) <= max(2, n_ref // 20)
        for i in range(min(n_ref, 10)):  # the confident detections agree (TF32/fp32 GPU numerics)
            j = np.abs(got["det_boxes"][b, :n_got] - ref["det_boxes"][b, i]).max(1).argmin()
            assert got["det_classes"][b, j] == ref["det_classes"][b, i]
            assert np.abs(got["det_boxes"][b, j] - ref["det_boxes"][b, i]).max() < 0.5
            assert abs(got["det_scores"][b, j] - ref["det_scores"][b, i]) < 1e-2
