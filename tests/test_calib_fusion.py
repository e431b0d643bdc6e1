"""The int8 graph rewrites (swdet.calib.fusion): exact in FP32, TensorRT-valid once quantized,
and more convolutions run as int8 by ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

IMGSZ = 128


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory):
    """A random-weights retinanet_tiny (3 classes, 128 px) exported to ONNX, dynamic batch."""
    import swdet.artifact
    import swdet.config
    import swdet.models
    import torch
    from swdet.export import export_onnx

    cfg = swdet.config.model_preset("retinanet_tiny")
    cfg.num_classes, cfg.imgsz = 3, IMGSZ
    torch.manual_seed(0)
    m = swdet.models.build_model(cfg)
    m.head.set_prior(0.2)
    d = tmp_path_factory.mktemp("fusion_art")
    swdet.artifact.save_artifact(d, m, swdet.artifact.build_metadata(
        cfg, swdet.config.PostprocessConfig(), class_names=["a", "b", "c"], category_ids=[1, 2, 5],
        method=["focal"]))
    return export_onnx(d, d / "m.onnx")


@pytest.fixture(scope="module")
def network(fp32_onnx, tmp_path_factory):
    """The pre-processed FP32 network (what calibration rewrites) and its boundary."""
    from swdet.calib import preprocess_network, split_network

    split = split_network(onnx.load(str(fp32_onnx)))
    return preprocess_network(split.network, tmp_path_factory.mktemp("fusion_pre")), split.boundary


@pytest.fixture(scope="module")
def flavours(fp32_onnx, synth_data, tmp_path_factory):
    """The same model calibrated without the rewrite (float head outputs, the previous graph)
    and with it (the default)."""
    from swdet.calib import calibrate

    d = tmp_path_factory.mktemp("fusion_out")
    before = calibrate(fp32_onnx, synth_data / "train", d / "before.onnx", num_images=4, method="minmax",
                       cache=d / "before.npz", rewrite=False, head_outputs="float")
    after = calibrate(fp32_onnx, synth_data / "train", d / "after.onnx", num_images=4, method="minmax",
                      cache=d / "after.npz")
    return before, after


def _run(model: onnx.ModelProto, names, images):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(list(names), {"images": images})


def test_rewrite_is_exact_in_fp32(network):
    from swdet.calib import rewrite_for_int8
    from swdet.calib.quantize import prediction_convs

    net, boundary = network
    rewritten, report = rewrite_for_int8(net, keep=prediction_convs(net, boundary))
    images = np.random.default_rng(0).uniform(0, 255, (2, 3, IMGSZ, IMGSZ)).astype(np.float32)
    for a, b in zip(_run(net, boundary, images), _run(rewritten, boundary, images)):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    # the head towers' first convolutions, merged on every level (4 levels on retinanet_tiny)
    assert len(report.merged) == 4 and all(len(g) == 2 for g in report.merged)
    assert report.duplicated and report.extra_macs_per_image > 0
    # every convolution output now has one reader
    readers: dict[str, int] = {}
    for n in rewritten.graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    convs = [n for n in rewritten.graph.node if n.op_type == "Conv"]
    assert len(convs) == 45 - 4 + sum(report.duplicated.values())
    assert all(readers.get(n.output[0]) == 1 for n in convs)
    onnx.checker.check_model(rewritten, full_check=True)


def test_rewrite_is_a_fixpoint(network):
    from swdet.calib import merge_sibling_convs, rewrite_for_int8
    from swdet.calib.quantize import prediction_convs

    net, boundary = network
    once, _ = rewrite_for_int8(net, keep=prediction_convs(net, boundary))
    twice, report = rewrite_for_int8(once, keep=prediction_convs(net, boundary))
    assert not report.merged and not report.duplicated
    assert merge_sibling_convs(once).graph.node == once.graph.node
    assert [n.name for n in twice.graph.node] == [n.name for n in once.graph.node]


def test_rewritten_int8_model_passes_the_tensorrt_static_check(flavours):
    from swdet.calib import zero_points
    from swdet.export import check_tensorrt_compat, format_problems

    for res in flavours:
        model = onnx.load(str(res.out))
        problems = check_tensorrt_compat(model)
        assert not [p for p in problems if p.severity == "error"], format_problems(problems)
        zps = zero_points(model)
        assert zps and all(t == onnx.TensorProto.INT8 and not np.any(v) for _, t, v in zps)


def test_conv_counts_improve_on_retinanet_tiny(flavours):
    from swdet.calib import ort_conv_counts

    before, after = (ort_conv_counts(r.out) for r in flavours)
    assert before["float"] > 0  # the FPN outputs read twice and the prediction convolutions
    assert after["float"] < before["float"] and after["int8"] > before["int8"]
    assert after["float"] == 0, after["float_convs"]
    assert after["total"] == before["total"] - 4 + 1  # 4 merged pairs, the top lateral duplicated


def test_metadata_records_the_flavour(flavours):
    from swdet.deploy.onnx_meta import read_onnx_metadata

    before, after = (read_onnx_metadata(onnx.load(str(r.out)))["calibration"] for r in flavours)
    assert before["head_outputs"] == "float" and before["rewrite"] is None and before["float_output_convs"]
    assert after["head_outputs"] == "int8" and after["rewrite"]["merged"] and not after["float_output_convs"]
    # the ReLUs written as int8 lookups: none without the rewrites, and as many as the graph holds
    lookups = sum(1 for n in onnx.load(str(flavours[1].out)).graph.node if n.op_type == "LeakyRelu")
    assert before["lookup_relus"] == 0 and after["lookup_relus"] == lookups > 0


def test_int8_outputs_track_fp32(flavours, fp32_onnx, synth_data):
    """Both flavours' head outputs stay close to FP32 on real images (the rewrite and the int8
    head outputs keep the numbers)."""
    from swdet.calib.quantize import split_network
    from swdet.calib.report import snr_db
    from swdet.preprocess import list_images, prepare_batch

    x = prepare_batch(list_images(synth_data / "val")[:4], IMGSZ).images.astype(np.float32)
    ref_split = split_network(onnx.load(str(fp32_onnx)))
    ref = _run(ref_split.network, ref_split.boundary, x)
    for res in flavours:
        s = split_network(onnx.load(str(res.out)))
        assert snr_db(ref, _run(s.network, s.boundary, x)) > 15.0


def test_bad_head_outputs_is_one_line(fp32_onnx, synth_data, tmp_path):
    from swdet.calib import calibrate
    from swdet.errors import SwdetError

    with pytest.raises(SwdetError, match="--head-outputs") as e:
        calibrate(fp32_onnx, synth_data / "train", tmp_path / "x.onnx", head_outputs="int4")
    assert "\n" not in str(e.value)


def test_rewrite_keeps_the_size(flavours):
    """Levels that share the head's weights share the merged weights too (no copy per level)."""
    before, after = flavours
    assert after.size_mb < 1.02 * before.size_mb


def test_relus_between_quantizers_run_as_int8_lookups(flavours, synth_data):
    """The default flavour turns ``DQ -> Relu -> Q`` into ``DQ -> LeakyRelu(0) -> Q``: the outputs
    equal those of the same graph with ``Relu`` put back, and ONNX Runtime runs each such ReLU as
    an int8 ``QLinearLeakyRelu`` instead of a float ReLU between a DQ and a Q."""
    from swdet.calib import ort_conv_counts
    from swdet.calib.quantize import split_network
    from swdet.preprocess import list_images, prepare_batch

    before, after = (onnx.load(str(r.out)) for r in flavours)
    leaky = [n for n in after.graph.node if n.op_type == "LeakyRelu"]
    assert leaky and all(a.f == 0.0 for n in leaky for a in n.attribute if a.name == "alpha")
    assert not [n for n in before.graph.node if n.op_type == "LeakyRelu"]  # --no-rewrite: unchanged
    relu = onnx.ModelProto()
    relu.CopyFrom(after)
    for n in relu.graph.node:
        if n.op_type == "LeakyRelu":
            n.op_type = "Relu"
            del n.attribute[:]
    x = prepare_batch(list_images(synth_data / "val")[:4], IMGSZ).images.astype(np.float32)
    s_after, s_relu = split_network(after), split_network(relu)
    for a, b in zip(_run(s_after.network, s_after.boundary, x), _run(s_relu.network, s_relu.boundary, x)):
        np.testing.assert_array_equal(a, b)
    ops_after, ops_relu = ort_conv_counts(after)["ops"], ort_conv_counts(relu)["ops"]
    assert ops_after.get("QLinearLeakyRelu", 0) == len(leaky) and "QLinearLeakyRelu" not in ops_relu
    assert ops_after.get("Relu", 0) == ops_relu.get("Relu", 0) - len(leaky)
    assert ops_after["DequantizeLinear"] < ops_relu["DequantizeLinear"]


def test_lookup_relus_only_between_one_dq_and_one_q():
    """A ReLU becomes ``LeakyRelu(0)`` only between an activation DQ and a single Q: one read by
    two quantizers, one after a float op, and one writing a graph output stay ``Relu``."""
    from onnx import TensorProto, helper

    from swdet.calib.quantize import _lookup_relus

    s = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    z = helper.make_tensor("z", TensorProto.INT8, [], [0])
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Relu", ["xd"], ["a"], name="one_q"),
             helper.make_node("QuantizeLinear", ["a", "s", "z"], ["aq"]),
             helper.make_node("Relu", ["xd"], ["b"], name="two_q"),
             helper.make_node("QuantizeLinear", ["b", "s", "z"], ["bq1"]),
             helper.make_node("QuantizeLinear", ["b", "s", "z"], ["bq2"]),
             helper.make_node("Abs", ["x"], ["c0"]),
             helper.make_node("Relu", ["c0"], ["c"], name="after_float"),
             helper.make_node("QuantizeLinear", ["c", "s", "z"], ["cq"]),
             helper.make_node("Relu", ["xd"], ["out"], name="graph_output")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    outs = [helper.make_tensor_value_info(n, TensorProto.INT8, [1, 4]) for n in ("aq", "bq1", "bq2", "cq")]
    outs.append(helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4]))
    model = helper.make_model(helper.make_graph(nodes, "g", [x], outs, [s, z]))
    assert _lookup_relus(model) == 1
    kinds = {n.name: n.op_type for n in model.graph.node if n.name}
    assert kinds == {"one_q": "LeakyRelu", "two_q": "Relu", "after_float": "Relu", "graph_output": "Relu"}
