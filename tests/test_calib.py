"""INT8 calibration (swdet.calib): the Q/DQ model contract, the statistics cache, exclusions,
the sensitivity report and the entropy search."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

IMGSZ = 128


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory):
    """A random-weights retinanet_tiny (3 classes, 128 px) exported to ONNX, dynamic batch."""
    from swdet.export import export_onnx

    import swdet.artifact
    import swdet.config
    import swdet.models

    cfg = swdet.config.model_preset("retinanet_tiny")
    cfg.num_classes, cfg.imgsz = 3, IMGSZ
    m = swdet.models.build_model(cfg)
    m.head.set_prior(0.2)
    d = tmp_path_factory.mktemp("calib_art")
    swdet.artifact.save_artifact(d, m, swdet.artifact.build_metadata(
        cfg, swdet.config.PostprocessConfig(), class_names=["a", "b", "c"], category_ids=[1, 2, 5],
        method=["focal"]))
    return export_onnx(d, d / "m.onnx")


@pytest.fixture(scope="module")
def calib_images(synth_data):
    return synth_data / "train"


@pytest.fixture(scope="module")
def int8(fp32_onnx, calib_images, tmp_path_factory):
    """minmax calibration on 6 images (the fast method; every method shares the same graph)."""
    from swdet.calib import calibrate

    out = tmp_path_factory.mktemp("calib_out") / "m.int8.onnx"
    cache = out.with_name("m.calib.npz")
    result = calibrate(fp32_onnx, calib_images, out, num_images=6, method="minmax", cache=cache)
    return result


def _network_outputs(path, images):
    """The net/* boundary tensors of a (quantized or not) swdet model, by running its network part."""
    import onnxruntime as ort
    from swdet.calib.quantize import split_network

    split = split_network(onnx.load(str(path)))
    sess = ort.InferenceSession(split.network.SerializeToString(), providers=["CPUExecutionProvider"])
    return split.boundary, sess.run(split.boundary, {"images": images.astype(np.float32)})


def _images(folder, n):
    from swdet.preprocess import list_images, prepare_batch

    return prepare_batch(list_images(folder)[:n], IMGSZ).images


# ----------------------------------------------------------------------------------------------
# The Q/DQ model


def test_qdq_model_passes_checker_and_tensorrt_static_check(int8):
    from swdet.export import check_tensorrt_compat, format_problems

    model = onnx.load(str(int8.out))
    onnx.checker.check_model(model, full_check=True)
    problems = check_tensorrt_compat(model)
    assert not [p for p in problems if p.severity == "error"], format_problems(problems)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 20 and ops.count("DequantizeLinear") > 40


def test_zero_points_are_int8_zero_and_weights_int8_per_channel(int8):
    from swdet.calib import zero_points

    model = onnx.load(str(int8.out))
    zps = zero_points(model)
    assert zps
    for name, dtype, values in zps:
        assert dtype == TensorProto.INT8, name
        assert not np.any(values), name
    inits = {t.name: t for t in model.graph.initializer}
    conv_weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                      and inits[n.input[0]].data_type == TensorProto.INT8 and len(inits[n.input[0]].dims) == 4]
    dq_out = {n.output[0] for n in conv_weight_dq}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    # every conv has int8 weights (head levels share them) but the image stem's (stem="float")
    stem = [c for c in convs if c.input[1] not in dq_out]
    assert len(stem) == 1 and "stem.0" in stem[0].name and inits[stem[0].input[1]].data_type == TensorProto.FLOAT
    for dq in conv_weight_dq:
        scale = numpy_helper.to_array(inits[dq.input[1]])
        assert scale.shape == (inits[dq.input[0]].dims[0],)  # one scale per output channel
        assert {a.name: a.i for a in dq.attribute}.get("axis", 1) == 0


def test_post_processing_stays_float(int8, fp32_onnx):
    """No Q/DQ at or after the post-processing; its nodes are the fp32 export's, unchanged."""
    from swdet.deploy.trt_rules import _Graph, _post_region

    model = onnx.load(str(int8.out))
    post = _post_region(_Graph(model))
    assert post
    qdq = {n.name for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    assert not (qdq & post)
    original = [(n.op_type, list(n.input), list(n.output)) for n in onnx.load(str(fp32_onnx)).graph.node
                if n.name.startswith("post/")]
    now = [(n.op_type, list(n.input), list(n.output)) for n in model.graph.node if n.name.startswith("post/")]
    assert now == original
    # the head's prediction convs read int8; by default (head_outputs="int8") their output is one
    # Q -> DQ pair, dequantized before the shape ops that lead to the float net/* tensors
    producers = {o: n for n in model.graph.node for o in n.output}
    for b in [o for n in model.graph.node for o in n.output if o.startswith("net/")]:
        n = producers[b]
        path = []
        while n.op_type != "Conv":
            path.append(n.op_type)
            n = producers[n.input[0]]
        assert producers[n.input[1]].op_type == "DequantizeLinear"
        assert path[-2:] == ["DequantizeLinear", "QuantizeLinear"]
        assert not {"QuantizeLinear", "DequantizeLinear"} & set(path[:-2])


def test_metadata_marks_int8_and_calibration(int8):
    from swdet.export import read_onnx_metadata

    meta = read_onnx_metadata(int8.out)
    assert meta["export"]["precision"] == "int8"
    cal = meta["calibration"]
    assert cal["method"] == "minmax" and cal["num_images"] == 6 and cal["per_channel"] is True
    assert cal["stem"] == "float" and len(cal["excluded"]) == 1 and "stem.0" in cal["excluded"][0]


def test_runs_at_batch_1_and_8_and_tracks_fp32(int8, fp32_onnx, synth_data):
    from swdet.calib.report import snr_db
    from swdet.serve.runtimes import load_runtime

    rt = load_runtime(int8.out, device="cpu")
    assert rt.precision == "int8"
    x = _images(synth_data / "val", 8)
    for b in (1, 8):
        out = rt.infer(x[:b])
        assert out["det_boxes"].shape[0] == b and out["num_dets"].shape == (b, 1)
        assert np.isfinite(out["det_scores"]).all()
    _names, ref = _network_outputs(fp32_onnx, x)
    _, q = _network_outputs(int8.out, x)
    # int8 is close to fp32 (random weights: the bar is loose, a broken scale gives ~0 dB)
    assert snr_db(ref, q) > 15.0


def test_size_is_about_a_quarter(int8):
    assert int8.size_mb < 0.45 * int8.fp32_size_mb


# ----------------------------------------------------------------------------------------------
# Cache, methods, options


def test_cache_reused_for_other_settings_without_images(fp32_onnx, calib_images, tmp_path, int8, monkeypatch):
    """Another method, exclusion and per-tensor weights come from the cache: the images are not
    decoded again (select_images must not be called)."""
    from swdet.calib import calibrate, stats
    from swdet.export import check_tensorrt_compat

    def no_images(*a, **k):
        raise AssertionError("images were decoded again")

    monkeypatch.setattr(stats, "select_images", no_images)
    out = tmp_path / "p.onnx"
    r = calibrate(fp32_onnx, calib_images, out, num_images=6, method="percentile", percentile=99.9,
                  per_channel=False, exclude=["*layer1/conv1/conv*"], cache=int8.cache)
    assert r.cache_hit
    assert not [p for p in check_tensorrt_compat(out) if p.severity == "error"]
    model = onnx.load(str(out))
    inits = {t.name: t for t in model.graph.initializer}
    w_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
            and len(inits[n.input[0]].dims) == 4]
    assert w_dq and all(numpy_helper.to_array(inits[n.input[1]]).size == 1 for n in w_dq)  # per tensor
    excluded = [n for n in model.graph.node if "layer1/conv1" in n.name and n.op_type == "Conv"]
    assert excluded and all(i in inits and inits[i].data_type == TensorProto.FLOAT for i in excluded[0].input[1:])
    assert r.excluded[0] == excluded[0].name and len(r.excluded) == 2 and "stem.0" in r.excluded[1]
    # scales differ from the minmax model's (a different method was really applied)
    a = sorted(float(numpy_helper.to_array(t)) for t in onnx.load(str(int8.out)).graph.initializer
               if t.name.endswith("_scale") and not t.dims)
    b = sorted(float(numpy_helper.to_array(t)) for t in inits.values() if t.name.endswith("_scale") and not t.dims)
    assert a != b


def test_cache_key_changes_with_the_images(fp32_onnx, synth_data, tmp_path, int8):
    from swdet.calib import calibrate

    r = calibrate(fp32_onnx, synth_data / "val", tmp_path / "v.onnx", num_images=3, method="minmax",
                  cache=tmp_path / "c.npz")
    assert not r.cache_hit
    r2 = calibrate(fp32_onnx, synth_data / "val", tmp_path / "v.onnx", num_images=4, method="minmax",
                   cache=tmp_path / "c.npz")
    assert not r2.cache_hit  # another --num-images is another selection
    r3 = calibrate(fp32_onnx, synth_data / "val", tmp_path / "v.onnx", num_images=4, method="minmax",
                   cache=tmp_path / "c.npz")
    assert r3.cache_hit and r3.num_images == 4


def test_method_ranges_from_one_cache(int8):
    """Same statistics, three methods: entropy and percentile clip inside min-max."""
    from swdet.calib import load_cache

    stats = load_cache(int8.cache)
    assert stats is not None and stats.num_images == 6
    mm = stats.amax("minmax")
    pc = stats.amax("percentile", 99.9)
    en = stats.amax("entropy")
    assert set(mm) == set(pc) == set(en)
    for t in mm:
        assert 0 < pc[t] <= mm[t] * (1 + 1e-6)
        assert 0 < en[t] <= mm[t] * (1 + 1e-6)
    assert any(en[t] < 0.99 * mm[t] for t in mm)  # entropy clips outliers somewhere


def _qdq_error(x: np.ndarray, amax: float) -> float:
    """Mean squared error of symmetric INT8 fake quantization with clipping threshold ``amax``."""
    s = amax / 127
    return float(np.mean((np.clip(np.round(x / s), -127, 127) * s - x) ** 2))


def test_entropy_search_clips_heavy_tails_not_bounded_data():
    """The KL search on |x|: a heavy-tailed tensor is clipped well inside its maximum, to a
    lower INT8 error than min-max; a bounded uniform one keeps (nearly) its whole range."""
    from onnxruntime.quantization.calibrate import HistogramCollector
    from swdet.calib.stats import ABS_BINS, Q_BINS, entropy_threshold

    rng = np.random.default_rng(0)
    gauss = np.abs(rng.standard_normal(200_000)).astype(np.float32)
    data = {"relu_laplace": np.maximum(rng.laplace(size=200_000), 0).astype(np.float32),
            "outlier": np.concatenate([gauss, np.float32([40.0])]),
            "uniform": rng.uniform(-1, 1, size=200_000).astype(np.float32)}
    c = HistogramCollector("percentile", True, ABS_BINS, Q_BINS, 99.99, "same")
    with contextlib.redirect_stdout(io.StringIO()):
        c.collect(data)
        c.collect({k: 1.3 * v for k, v in data.items()})  # widens the histogram (appended bins)
    for name in ("relu_laplace", "outlier"):
        x = np.concatenate([data[name], 1.3 * data[name]])
        amax, top = entropy_threshold(c.histogram_dict[name], Q_BINS), float(np.abs(x).max())
        assert amax < (0.95 if name == "relu_laplace" else 0.25) * top, name
        assert _qdq_error(x, amax) < 0.95 * _qdq_error(x, top), name
    assert entropy_threshold(c.histogram_dict["uniform"], Q_BINS) > 0.9 * 1.3


def test_report_lists_every_layer_worst_first(fp32_onnx, calib_images, tmp_path, int8):
    from swdet.calib import calibrate
    from swdet.calib.report import format_report

    r = calibrate(fp32_onnx, calib_images, tmp_path / "r.onnx", num_images=6, method="minmax", cache=int8.cache,
                  report=True, report_images=2, exclude=["/net/backbone/layer1/Add"])
    rows = r.report
    layers = [x for x in rows if x["layer"] != "(all layers)"]
    convs = [n for n in onnx.load(str(tmp_path / "r.onnx")).graph.node if n.op_type == "Conv"]
    assert len([x for x in layers if x["op"] == "Conv"]) == len(convs) - 1  # the float stem is not listed
    assert not [x for x in layers if "stem.0" in x["layer"] and x["op"] == "Conv"]
    assert "/net/backbone/layer1/Add" not in [x["layer"] for x in layers]
    snrs = [x["snr_db"] for x in layers]
    assert snrs == sorted(snrs)
    assert rows[-1]["layer"] == "(all layers)" and rows[-1]["snr_db"] <= max(snrs)
    assert r.report_path.is_file() and "snr" in format_report(rows)


def test_efficient_nms_export_is_calibrated(fp32_onnx, calib_images, tmp_path, int8):
    """An EfficientNMS_TRT export (TensorRT only) calibrates: only its network runs in ORT."""
    from swdet.calib import calibrate
    from swdet.export import check_tensorrt_compat, export_onnx

    src = export_onnx(fp32_onnx.parent, tmp_path / "eff.onnx", nms="efficient")
    out = tmp_path / "eff.int8.onnx"
    calibrate(src, calib_images, out, num_images=2, method="minmax", cache=tmp_path / "eff.npz")
    model = onnx.load(str(out))
    assert any(n.op_type == "EfficientNMS_TRT" for n in model.graph.node)
    assert not [p for p in check_tensorrt_compat(model) if p.severity == "error"]


def test_export_check_only_accepts_the_int8_model(int8):
    from swdet.cli import main

    assert main(["export", str(int8.out), "--check-only"]) == 0


def test_calib_never_imports_export_serve_or_train(fp32_onnx, calib_images, tmp_path):
    """calib may be imported by export, so it must not import export (a cycle), nor serve or
    train (docs/design.md, Layout): what it shares with them is core (swdet.deploy.onnx_meta,
    swdet.deploy.trt_rules, swdet.preprocess)."""
    from conftest import assert_layer_boundary

    out = tmp_path / "m.int8.onnx"
    code = f"""
import sys
import swdet.calib, swdet.calib.quantize, swdet.calib.stats, swdet.calib.report
from swdet.calib import calibrate
r = calibrate({str(fp32_onnx)!r}, {str(calib_images)!r}, {str(out)!r}, num_images=2, method="minmax",
              cache={str(tmp_path / "c.npz")!r}, report=True, report_images=1)
assert r.out.is_file()
bad = sorted(m for m in sys.modules if m.startswith(("swdet.export", "swdet.serve", "swdet.train")))
print("BAD", bad)
"""
    assert_layer_boundary(code, "swdet.calib", ("swdet.export", "swdet.serve", "swdet.train"))
