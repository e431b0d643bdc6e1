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
    # every GroupNorm of the head (2 towers x 2 layers x 4 levels) channels-last
    assert report.group_norms == 16
    assert not [n for n in rewritten.graph.node if n.op_type == "InstanceNormalization"]
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
    # only the image stem stays float (stem="float", the default: 3 input channels)
    assert after["float"] == 1 and "stem.0" in after["float_convs"][0], after["float_convs"]
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

    def weight_bytes(path):
        return sum(len(t.SerializeToString()) for t in onnx.load(str(path)).graph.initializer)

    assert weight_bytes(after.out) < 1.02 * weight_bytes(before.out)
    assert after.size_mb < 1.1 * before.size_mb  # the channels-last GroupNorms' nodes: a few percent


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


def _group_norm_model(c: int, groups: int, hw: tuple[int, int], opset: int, after_split: bool):
    """PyTorch's GroupNorm export pattern on a [2, c, h, w] input (optionally read from a Split)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    gamma = rng.uniform(-1.5, 1.5, (c, 1, 1)).astype(np.float32)
    beta = rng.normal(size=(c, 1, 1)).astype(np.float32)
    inits = [numpy_helper.from_array(np.array([0, groups, -1], np.int64), "gshape"),
             numpy_helper.from_array(np.ones(groups, np.float32), "ones"),
             numpy_helper.from_array(np.zeros(groups, np.float32), "zeros"),
             numpy_helper.from_array(np.array([-1, c, *hw], np.int64), "back"),
             numpy_helper.from_array(gamma, "gamma"), numpy_helper.from_array(beta, "beta")]
    nodes, src = [], "x"
    if after_split:
        inits.append(numpy_helper.from_array(np.array([c], np.int64), "parts"))
        nodes.append(helper.make_node("Split", ["x", "parts"], ["xs"], axis=1))
        src = "xs"
    nodes += [helper.make_node("Reshape", [src, "gshape"], ["r"], name="gn/Reshape"),
              helper.make_node("InstanceNormalization", ["r", "ones", "zeros"], ["n"], epsilon=1e-5),
              helper.make_node("Reshape", ["n", "back"], ["r2"]),
              helper.make_node("Mul", ["r2", "gamma"], ["m"]),
              helper.make_node("Add", ["m", "beta"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, c, *hw])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, c, *hw])
    model = helper.make_model(helper.make_graph(nodes, "gn", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    return onnx.shape_inference.infer_shapes(model), gamma.ravel(), beta.ravel()


@pytest.mark.parametrize("opset, after_split", [(17, False), (18, True)])
def test_channels_last_group_norm_equals_torch(opset, after_split):
    """The channels-last GroupNorm computes torch's ``GroupNorm`` (float32 rounding), with the
    reductions' axes as attributes (opset < 18) or inputs (18+); a one-part ``Split`` goes first
    unless the input already is a ``Split`` output; no NCHW-only op is left."""
    import torch

    from swdet.calib import channels_last_group_norms
    from swdet.calib.fusion import RewriteReport

    c, groups, hw = 12, 3, (5, 7)
    model, gamma, beta = _group_norm_model(c, groups, hw, opset, after_split)
    report = RewriteReport()
    out = channels_last_group_norms(model, report)
    onnx.checker.check_model(out, full_check=True)
    ops = [n.op_type for n in out.graph.node]
    assert report.group_norms == 1 and "InstanceNormalization" not in ops
    assert ops.count("Split") == 1 and ops.count("Transpose") == 2
    x = np.random.default_rng(2).normal(3.0, 2.0, (2, c, *hw)).astype(np.float32)
    gn = torch.nn.GroupNorm(groups, c)
    with torch.no_grad():
        gn.weight.copy_(torch.from_numpy(gamma))
        gn.bias.copy_(torch.from_numpy(beta))
        ref = gn(torch.from_numpy(x)).numpy()
    import onnxruntime as ort

    got = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    assert not np.allclose(got, x)  # it normalized


def test_two_group_norms_in_one_module_get_their_own_names():
    """Two GroupNorms whose nodes share a module prefix (``gn/Reshape``, ``gn/Reshape_1``): both
    rewritten, with distinct node and tensor names (the checker rejects duplicates)."""
    from swdet.calib import channels_last_group_norms
    from swdet.calib.fusion import RewriteReport

    model, _, _ = _group_norm_model(8, 2, (4, 4), 17, False)
    g = model.graph
    second = [onnx.NodeProto() for _ in range(5)]
    for dst, src in zip(second, [n for n in g.node if n.op_type != "Split"]):
        dst.CopyFrom(src)
        dst.input[0] = {"x": "y"}.get(dst.input[0], dst.input[0] + "_2")
        dst.output[0] = dst.output[0] + "_2" if dst.output[0] != "y" else "y2"
        dst.name = (dst.name + "_1") if dst.name else ""
    g.node.extend(second)
    g.output[0].name = "y2"
    model = onnx.shape_inference.infer_shapes(model)
    report = RewriteReport()
    out = channels_last_group_norms(model, report)
    assert report.group_norms == 2
    onnx.checker.check_model(out, full_check=True)
    names = [n.name for n in out.graph.node if n.name]
    assert len(names) == len(set(names))


def test_channels_last_group_norm_leaves_other_patterns():
    """A ``Reshape -> InstanceNormalization`` with a learned InstanceNorm scale is not PyTorch's
    GroupNorm pattern: left as it is."""
    from onnx import numpy_helper

    from swdet.calib import channels_last_group_norms

    model, _, _ = _group_norm_model(8, 2, (4, 4), 17, False)
    for t in model.graph.initializer:
        if t.name == "ones":
            t.CopyFrom(numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "ones"))
    out = channels_last_group_norms(model)
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in model.graph.node]


def test_group_norms_keep_the_int8_layout(flavours, fp32_onnx, synth_data, tmp_path, monkeypatch):
    """In ONNX Runtime's optimized graph of the default flavour the head's GroupNorms run without
    ``InstanceNormalization`` and without a transpose pair around each: fewer ``Transpose`` nodes
    than the same calibration with the GroupNorms left as exported, and no more Q/DQ nodes."""
    import swdet.calib.fusion as F
    from swdet.calib import calibrate, ort_conv_counts

    monkeypatch.setattr(F, "channels_last_group_norms", lambda model, report=None: model)
    legacy = calibrate(fp32_onnx, synth_data / "train", tmp_path / "gn.onnx", num_images=4, method="minmax",
                       cache=tmp_path / "gn.npz", verify=False)
    new, old = (ort_conv_counts(r.out)["ops"] for r in (flavours[1], legacy))
    assert "InstanceNormalization" in old and "InstanceNormalization" not in new
    assert new["Transpose"] <= old["Transpose"] - 2 * 16 + 8  # 16 GroupNorms; 8 one-part Splits
    qdq = ("QuantizeLinear", "DequantizeLinear")
    assert sum(new.get(k, 0) for k in qdq) <= sum(old.get(k, 0) for k in qdq)


def test_int8_forks_are_exact_and_leave_no_float_relu(flavours, fp32_onnx, synth_data, tmp_path, monkeypatch):
    """A block output read by two quantizers forks on int8 (``LeakyRelu -> Q/DQ -> Tile -> Q/DQ
    -> Split``): the outputs equal those of the same calibration without the forks, bit for bit,
    and ONNX Runtime runs no float ReLU and fewer Q/DQ nodes."""
    import swdet.calib.quantize as Q
    from swdet.calib import calibrate, ort_conv_counts
    from swdet.calib.quantize import split_network
    from swdet.deploy.onnx_meta import read_onnx_metadata
    from swdet.preprocess import list_images, prepare_batch

    after = onnx.load(str(flavours[1].out))
    forks = read_onnx_metadata(after)["calibration"]["int8_forks"]
    assert forks > 0 and forks == sum(1 for n in after.graph.node if n.op_type == "Tile")
    monkeypatch.setattr(Q, "_int8_forks", lambda model: 0)
    plain = calibrate(fp32_onnx, synth_data / "train", tmp_path / "plain.onnx", num_images=4, method="minmax",
                      cache=flavours[1].cache, verify=False)
    plain_model = onnx.load(str(plain.out))
    x = prepare_batch(list_images(synth_data / "val")[:4], IMGSZ).images.astype(np.float32)
    s_fork, s_plain = split_network(after), split_network(plain_model)
    for a, b in zip(_run(s_fork.network, s_fork.boundary, x), _run(s_plain.network, s_plain.boundary, x)):
        np.testing.assert_array_equal(a, b)
    ops_fork, ops_plain = ort_conv_counts(after)["ops"], ort_conv_counts(plain_model)["ops"]
    assert ops_plain.get("Relu", 0) >= forks and ops_fork.get("Relu", 0) == ops_plain["Relu"] - forks
    qdq = ("QuantizeLinear", "DequantizeLinear")
    assert sum(ops_fork.get(k, 0) for k in qdq) < sum(ops_plain.get(k, 0) for k in qdq)
    assert ops_fork.get("Tile", 0) == forks  # the Tiles run on int8 (no Q/DQ around them left)


def test_int8_forks_only_where_every_reader_quantizes_at_one_scale():
    """No fork for a ReLU read by one Q, by Qs of different scales, or by a float op."""
    from onnx import TensorProto, helper

    from swdet.calib.quantize import _int8_forks

    s = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    s2 = helper.make_tensor("s2", TensorProto.FLOAT, [], [0.2])
    z = helper.make_tensor("z", TensorProto.INT8, [], [0])
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"])]
    outs = []
    for name, readers in (("fork", ("s", "s")), ("one", ("s",)), ("two_scales", ("s", "s2")), ("float", ())):
        nodes.append(helper.make_node("Relu", ["xd"], [f"{name}_y"], name=name))
        for i, sc in enumerate(readers):
            nodes.append(helper.make_node("QuantizeLinear", [f"{name}_y", sc, "z"], [f"{name}_q{i}"]))
            outs.append(helper.make_tensor_value_info(f"{name}_q{i}", TensorProto.INT8, [1, 4]))
        if not readers:
            nodes += [helper.make_node("QuantizeLinear", [f"{name}_y", "s", "z"], [f"{name}_q"]),
                      helper.make_node("Abs", [f"{name}_y"], [f"{name}_abs"])]
            outs += [helper.make_tensor_value_info(f"{name}_q", TensorProto.INT8, [1, 4]),
                     helper.make_tensor_value_info(f"{name}_abs", TensorProto.FLOAT, [1, 4])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], outs, [s, s2, z]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model = onnx.shape_inference.infer_shapes(model)
    assert _int8_forks(model) == 1
    kinds = {n.name: n.op_type for n in model.graph.node if n.name in ("fork", "one", "two_scales", "float")}
    assert kinds == {"fork": "LeakyRelu", "one": "Relu", "two_scales": "Relu", "float": "Relu"}
    onnx.checker.check_model(model, full_check=True)
    import onnxruntime as ort

    xv = np.array([[-1.0, 0.05, 0.31, 2.0]], np.float32)
    got = dict(zip([o.name for o in model.graph.output],
                   ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": xv})))
    np.testing.assert_array_equal(got["fork_q0"], got["fork_q1"])
    np.testing.assert_array_equal(got["fork_q0"], got["one_q0"])  # the fork quantizes as the plain ReLU does
