"""ONNX export with baked post-processing: the graph follows the contract, passes the ONNX
checker, carries the metadata, and ONNX Runtime gives the same detections as the torch
Predictor on random-weights models (docs/design.md, "ONNX contract")."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import swdet.config
from swdet.artifact import build_metadata, load_artifact, postprocess_from_meta, save_artifact
from swdet.config import PostprocessConfig
from swdet.errors import SwdetError
from swdet.export import export_onnx, read_onnx_metadata
from swdet.export.onnx_postprocess import EFFICIENT_NMS_OP, TRT_DOMAIN
from swdet.models import Predictor, build_model

IMGSZ = 128
NUM_CLASSES = 3


def make_artifact(path, *, seed: int = 0, imgsz: int = IMGSZ, post: PostprocessConfig | None = None,
                  threshold: dict | None = None, head_norm: str | None = None):
    """A random-weights retinanet_tiny artifact whose scores spread over (0, 1) (few ties);
    ``head_norm="bn"``: per-level BatchNorm head with random running statistics and affines."""
    torch.manual_seed(seed)
    cfg = swdet.config.model_preset("retinanet_tiny")
    cfg.num_classes, cfg.imgsz = NUM_CLASSES, imgsz
    if head_norm:
        cfg.head_norm = head_norm
    model = build_model(cfg)
    with torch.no_grad():
        for m in model.head.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
        model.head.set_prior(0.2)
        model.head.cls_logits.weight.normal_(std=0.05)
        model.head.bbox_pred.weight.normal_(std=0.02)
    meta = build_metadata(cfg, post or PostprocessConfig(), class_names=["a", "b", "c"], category_ids=[1, 5, 9],
                          method=["focal"], threshold=threshold)
    save_artifact(path, model, meta)
    return path


def images(batch: int, seed: int = 1, size: int = IMGSZ) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=g) * 255


def run_ort(path, x: torch.Tensor) -> dict[str, np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {"images": x.numpy()})))


def torch_reference(artifact, x: torch.Tensor, **post_overrides) -> dict[str, np.ndarray]:
    model, meta = load_artifact(artifact)
    post = postprocess_from_meta(meta)
    for k, v in post_overrides.items():
        setattr(post, k, v)
    return {k: v.numpy() for k, v in Predictor(model, post)(x).items()}


def assert_same_detections(ref: dict, out: dict, box_tol: float = 1e-3, score_tol: float = 1e-5) -> None:
    """Same num_dets; per image, each torch detection has an ONNX one of the same class with
    boxes within ``box_tol`` px and score within ``score_tol`` (one-to-one); padding is zero."""
    assert out["num_dets"].dtype == np.int32 and out["det_classes"].dtype == np.int32
    assert out["det_boxes"].dtype == np.float32 and out["det_scores"].dtype == np.float32
    np.testing.assert_array_equal(out["num_dets"], ref["num_dets"])
    k = ref["det_scores"].shape[1]
    assert out["det_boxes"].shape == ref["det_boxes"].shape and out["det_scores"].shape[1] == k
    for b, n in enumerate(ref["num_dets"][:, 0]):
        used = set()
        for i in range(n):
            cand = [j for j in range(n) if j not in used and out["det_classes"][b, j] == ref["det_classes"][b, i]]
            assert cand, f"image {b}: no detection of class {ref['det_classes'][b, i]} left"
            diffs = [np.abs(out["det_boxes"][b, j] - ref["det_boxes"][b, i]).max() for j in cand]
            j = cand[int(np.argmin(diffs))]
            assert min(diffs) <= box_tol, f"image {b} det {i}: box off by {min(diffs)}"
            assert abs(out["det_scores"][b, j] - ref["det_scores"][b, i]) <= score_tol
            used.add(j)
        assert not out["det_boxes"][b, n:].any() and not out["det_scores"][b, n:].any()
        assert not out["det_classes"][b, n:].any()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return make_artifact(tmp_path_factory.mktemp("artifact"))


@pytest.fixture(scope="module")
def dynamic_onnx(artifact, tmp_path_factory):
    return export_onnx(artifact, tmp_path_factory.mktemp("onnx") / "model.onnx")


# ---------------------------------------------------------------------------------------------
# Graph contract


def test_graph_passes_checker_and_follows_contract(dynamic_onnx):
    model = onnx.load(str(dynamic_onnx))
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)

    def sig(v):
        t = v.type.tensor_type
        return t.elem_type, [d.dim_param or d.dim_value for d in t.shape.dim]

    (inp,) = model.graph.input
    assert inp.name == "images" and sig(inp) == (onnx.TensorProto.FLOAT, ["batch", 3, IMGSZ, IMGSZ])
    outs = {o.name: sig(o) for o in model.graph.output}
    assert outs == {
        "num_dets": (onnx.TensorProto.INT32, ["batch", 1]),
        "det_boxes": (onnx.TensorProto.FLOAT, ["batch", 100, 4]),
        "det_scores": (onnx.TensorProto.FLOAT, ["batch", 100]),
        "det_classes": (onnx.TensorProto.INT32, ["batch", 100]),
    }
    ops = {n.op_type for n in model.graph.node}
    assert "NonMaxSuppression" in ops and "TopK" in ops
    assert not ops & {"Loop", "If", "Scan", "Constant", "Identity"}  # no loops; tidy graph
    # normalization is inside the graph: the first ops consume the raw 0-255 input
    first = [n.op_type for n in model.graph.node if "images" in n.input]
    assert first and set(first) <= {"Sub", "Mul", "Div", "Cast"}


def test_network_part_has_no_float_to_float_cast(dynamic_onnx, artifact, tmp_path):
    """The network's float32 outputs are not cast to float32 again (a no-op ONNX Runtime keeps
    after an INT8 model's DequantizeLinear); an fp16 export still casts them to float32."""
    from swdet.calib import split_network

    net = split_network(onnx.load(str(dynamic_onnx))).network
    assert not [n.name for n in net.graph.node if n.op_type == "Cast"]
    fp16 = split_network(onnx.load(str(export_onnx(artifact, tmp_path / "h.onnx", precision="fp16")))).network
    to_float = [n for n in fp16.graph.node if n.op_type == "Cast"
                and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in n.attribute)]
    assert len(to_float) >= len(fp16.graph.output)


def test_metadata_props_roundtrip(artifact, dynamic_onnx):
    _, meta = load_artifact(artifact)
    stored = read_onnx_metadata(dynamic_onnx)
    props = {p.key: p.value for p in onnx.load(str(dynamic_onnx)).metadata_props}
    assert json.loads(props["swdet"]) == stored
    for key in ("format", "classes", "threshold", "training", "model"):
        assert stored[key] == meta[key]
    assert stored["model"]["imgsz"] == IMGSZ and "size" not in stored["input"]  # one input-size field
    exp = stored["export"]
    assert exp["score_threshold"] == pytest.approx(meta["postprocess"]["score_threshold"])
    assert (exp["nms"], exp["precision"], exp["batch"], exp["opset"], exp["imgsz"]) == ("onnx", "fp32", "dynamic", 17, IMGSZ)
    assert exp["threshold_source"] == "auto" and exp["exporter"] in ("torchscript", "dynamo")


# ---------------------------------------------------------------------------------------------
# Same detections as torch


@pytest.mark.parametrize("batch", [1, 3])
def test_dynamic_batch_matches_torch(artifact, dynamic_onnx, batch):
    x = images(batch, seed=batch)
    ref = torch_reference(artifact, x)
    assert ref["num_dets"].min() > 10  # the comparison is about real detections
    assert_same_detections(ref, run_ort(dynamic_onnx, x))


def test_batchnorm_head_folds_into_the_convolutions(tmp_path):
    """``model.head_norm: bn``: each level's BatchNorm (running statistics) folds into that level's
    convolution at export -- no normalization op is left, one convolution per (level, tower layer)
    -- and ONNX Runtime gives the torch detections."""
    art = make_artifact(tmp_path / "bn", head_norm="bn")
    path = export_onnx(art, tmp_path / "bn.onnx")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert not {"BatchNormalization", "InstanceNormalization", "GroupNormalization"} & set(ops)
    gn_ops = [n.op_type for n in onnx.load(str(export_onnx(make_artifact(tmp_path / "gn"), tmp_path / "gn.onnx"))).graph.node]
    assert ops.count("Conv") == gn_ops.count("Conv") and "InstanceNormalization" in gn_ops
    x = images(2, seed=11)
    ref = torch_reference(art, x)
    assert ref["num_dets"].min() > 10
    assert_same_detections(ref, run_ort(path, x), box_tol=2e-3, score_tol=1e-4)


def test_batchnorm_head_has_one_normalization_per_level(tmp_path):
    """Each FPN level goes through its own BatchNorm: changing one level's running statistics in
    the classification tower changes that level's logits only."""
    model, _ = load_artifact(make_artifact(tmp_path / "bn", head_norm="bn"))
    x = images(1, seed=5)
    with torch.no_grad():
        before = model(x)["cls_logits"]
        model.head.cls_subnet.norms[0][2].running_mean.add_(1.0)  # first tower layer, level 2
        after = model(x)["cls_logits"]
    changed = [not torch.equal(a, b) for a, b in zip(before, after)]
    assert changed == [False, False, True, False]


def test_fixed_batch_matches_torch_and_rejects_other_sizes(artifact, tmp_path):
    path = export_onnx(artifact, tmp_path / "b2.onnx", batch=2)
    (inp,) = onnx.load(str(path)).graph.input
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [2, 3, IMGSZ, IMGSZ]
    x = images(2, seed=7)
    assert_same_detections(torch_reference(artifact, x), run_ort(path, x))
    with pytest.raises(Exception):
        run_ort(path, images(3))


def test_threshold_zero_and_high(artifact, tmp_path):
    x = images(2, seed=11)
    zero = export_onnx(artifact, tmp_path / "t0.onnx", score_threshold=0.0)
    ref = torch_reference(artifact, x, score_threshold=0.0)
    assert (ref["num_dets"] == 100).all()
    assert_same_detections(ref, run_ort(zero, x))
    # a threshold that keeps only a handful: halfway inside a clear gap of the torch scores
    scores = np.sort(torch_reference(artifact, x, score_threshold=0.0, max_det=1000)["det_scores"].ravel())[::-1]
    gaps = np.diff(scores[:40])  # negative
    i = int(np.argmin(gaps[3:])) + 3
    thr = float((scores[i] + scores[i + 1]) / 2)
    high = export_onnx(artifact, tmp_path / "th.onnx", score_threshold=thr)
    ref = torch_reference(artifact, x, score_threshold=thr)
    assert 0 < ref["num_dets"].sum() < 60
    assert_same_detections(ref, run_ort(high, x))
    # above every score: no detections, all padding
    none = export_onnx(artifact, tmp_path / "t1.onnx", score_threshold=0.99)
    out = run_ort(none, x)
    assert (out["num_dets"] == 0).all() and not out["det_boxes"].any() and not out["det_scores"].any()


def test_few_candidates_padded_to_max_det(artifact, tmp_path):
    # 4 levels x 3 candidates = 12 candidates < K = 50: rows past num_dets are zero padding
    x = images(3, seed=5)
    path = export_onnx(artifact, tmp_path / "few.onnx", pre_nms_topk=3, max_det=50, score_threshold=0.0)
    ref = torch_reference(artifact, x, pre_nms_topk=3, max_det=50, score_threshold=0.0)
    out = run_ort(path, x)
    assert out["det_boxes"].shape == (3, 50, 4) and ref["num_dets"].max() <= 12
    assert_same_detections(ref, out)


def _level_topk_k_is_constant(path) -> list[bool]:
    model = onnx.load(str(path))
    inits = {t.name for t in model.graph.initializer}
    return [n.input[1] in inits for n in model.graph.node if n.op_type == "TopK" and "level_topk" in n.name]


def test_threshold_first_topk_is_data_dependent_and_exact(artifact, tmp_path):
    """θ > 0: each level's K is computed in the graph from the pairs above θ (Sampling-Free's
    cheaper post-processing); θ = 0 keeps the constant K. Same detections as torch either way,
    also when K and the candidates fall below max_det."""
    x = images(3, seed=21)
    scores = np.sort(torch_reference(artifact, x, score_threshold=0.0, max_det=1000)["det_scores"].ravel())[::-1]
    i = int(np.argmin(np.diff(scores[20:80]))) + 20  # the clearest gap: no score sits on θ
    thr = float((scores[i] + scores[i + 1]) / 2)
    static = export_onnx(artifact, tmp_path / "s.onnx", score_threshold=0.0)
    dynamic = export_onnx(artifact, tmp_path / "d.onnx", score_threshold=thr)
    assert all(_level_topk_k_is_constant(static)) and len(_level_topk_k_is_constant(static)) >= 4
    assert not any(_level_topk_k_is_constant(dynamic))
    ref = torch_reference(artifact, x, score_threshold=thr)
    assert 0 < ref["num_dets"].sum() and ref["num_dets"].min() < ref["num_dets"].max()  # images differ
    assert_same_detections(ref, run_ort(dynamic, x))
    few = export_onnx(artifact, tmp_path / "f.onnx", pre_nms_topk=3, max_det=50, score_threshold=thr)
    ref = torch_reference(artifact, x, pre_nms_topk=3, max_det=50, score_threshold=thr)
    out = run_ort(few, x)
    assert out["det_boxes"].shape == (3, 50, 4)
    assert_same_detections(ref, out)


def test_threshold_first_batch_mates_do_not_change_detections(artifact, tmp_path):
    """θ > 0: each level's run-time K (and the grouped anchor stage's group and anchor counts)
    is the most over the batch; an image's detections do not depend on its batch mates (a
    black image among random ones: different numbers of passing anchors per image)."""
    x = images(4, seed=33)
    x[1] = 0.0
    scores = np.sort(torch_reference(artifact, x, score_threshold=0.0, max_det=1000)["det_scores"].ravel())[::-1]
    i = int(np.argmin(np.diff(scores[40:120]))) + 40
    thr = float((scores[i] + scores[i + 1]) / 2)
    path = export_onnx(artifact, tmp_path / "d.onnx", score_threshold=thr)
    ref = torch_reference(artifact, x, score_threshold=thr)
    out = run_ort(path, x)
    assert_same_detections(ref, out)
    for b in range(len(x)):
        single = run_ort(path, x[b:b + 1])
        for key in out:
            np.testing.assert_array_equal(single[key][0], out[key][b])


def test_many_candidates_small_max_det(artifact, tmp_path):
    x = images(2, seed=6)
    path = export_onnx(artifact, tmp_path / "many.onnx", pre_nms_topk=2000, max_det=7, score_threshold=0.0)
    ref = torch_reference(artifact, x, pre_nms_topk=2000, max_det=7, score_threshold=0.0)
    assert (ref["num_dets"] == 7).all()
    assert_same_detections(ref, run_ort(path, x))


def test_imgsz_override_regenerates_anchors(artifact, tmp_path):
    size = 160
    path = export_onnx(artifact, tmp_path / "s160.onnx", imgsz=size)
    assert read_onnx_metadata(path)["model"]["imgsz"] == size
    model, meta = load_artifact(artifact)
    model = copy.deepcopy(model)
    model.cfg.imgsz = size  # the Predictor builds its anchors for cfg.imgsz
    x = images(2, seed=3, size=size)
    ref = {k: v.numpy() for k, v in Predictor(model, postprocess_from_meta(meta))(x).items()}
    assert_same_detections(ref, run_ort(path, x))


def test_auto_threshold_is_model_json_theta(tmp_path):
    theta = 0.6375  # e.g. a Sampling-Free θ = N_f/N written by training
    art = make_artifact(tmp_path / "sf", post=PostprocessConfig(score_threshold=theta),
                        threshold={"source": "sampling_free", "rule": "N_f/N", "theta": theta,
                                   "num_fg": 6375, "num_all": 10000})
    path = export_onnx(art, tmp_path / "sf.onnx")
    meta = read_onnx_metadata(path)
    assert meta["export"]["score_threshold"] == pytest.approx(theta)
    assert meta["threshold"]["source"] == "sampling_free"
    x = images(2, seed=9)
    ref = torch_reference(art, x)
    out = run_ort(path, x)
    assert 0 < ref["num_dets"].sum() and ref["num_dets"].max() < 100
    assert_same_detections(ref, out)
    assert (out["det_scores"][out["det_scores"] > 0] > theta).all()


def test_dynamo_exporter_path(artifact, tmp_path):
    if not hasattr(torch.onnx, "export") or "dynamo" not in torch.onnx.export.__code__.co_varnames:
        pytest.skip("this torch has no dynamo ONNX exporter")
    pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    path = export_onnx(artifact, tmp_path / "dynamo.onnx", exporter="dynamo")
    assert read_onnx_metadata(path)["export"]["exporter"] == "dynamo"
    x = images(2, seed=4)
    assert_same_detections(torch_reference(artifact, x), run_ort(path, x))


# ---------------------------------------------------------------------------------------------
# FP16 and EfficientNMS


def _iou(a, b):
    lt, rb = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = np.clip(rb - lt, 0, None).prod()
    area = lambda r: np.clip(r[2:] - r[:2], 0, None).prod()  # noqa: E731
    return inter / max(area(a) + area(b) - inter, 1e-9)


def test_fp16_runs_in_onnxruntime_and_is_close(artifact, tmp_path):
    path = export_onnx(artifact, tmp_path / "fp16.onnx", precision="fp16")
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    inits = {t.name: t for t in model.graph.initializer}
    assert all(inits[n.input[1]].data_type == onnx.TensorProto.FLOAT16 for n in convs)
    assert read_onnx_metadata(path)["export"]["precision"] == "fp16"
    x = images(2, seed=8)
    ref = torch_reference(artifact, x)
    out = run_ort(path, x)
    assert out["det_boxes"].dtype == np.float32
    for b in range(2):
        n_ref, n_out = int(ref["num_dets"][b, 0]), int(out["num_dets"][b, 0])
        assert abs(n_ref - n_out) <= max(2, n_ref // 20)
        top = min(n_ref, 20)  # the confident ones must survive fp16
        matched = sum(any(out["det_classes"][b, j] == ref["det_classes"][b, i]
                          and _iou(out["det_boxes"][b, j], ref["det_boxes"][b, i]) > 0.9 for j in range(n_out))
                      for i in range(top))
        assert matched >= int(0.9 * top)


def test_efficient_nms_node(artifact, tmp_path):
    path = export_onnx(artifact, tmp_path / "eff.onnx", nms="efficient", batch=4, max_det=50)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert any(o.domain == TRT_DOMAIN for o in model.opset_import)
    (node,) = [n for n in model.graph.node if n.op_type == EFFICIENT_NMS_OP]
    assert node.domain == TRT_DOMAIN and "NonMaxSuppression" not in {n.op_type for n in model.graph.node}
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["background_class"] == -1 and attrs["box_coding"] == 0 and attrs["score_activation"] == 0
    assert attrs["class_agnostic"] == 0 and attrs["max_output_boxes"] == 50
    assert attrs["iou_threshold"] == pytest.approx(0.5) and attrs["score_threshold"] == pytest.approx(0.05)
    assert attrs["plugin_version"] == b"1"
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.value_info}
    boxes, scores = shapes[node.input[0]], shapes[node.input[1]]
    assert boxes[0] == 4 and boxes[2] == 4 and scores == [4, boxes[1], NUM_CLASSES]
    assert [shapes[o] for o in node.output] == [[4, 1], [4, 50, 4], [4, 50], [4, 50]]
    assert {o.name for o in model.graph.output} == {"num_dets", "det_boxes", "det_scores", "det_classes"}
    assert read_onnx_metadata(path)["export"]["nms"] == "efficient"


def test_bad_options_are_one_line_errors(artifact, tmp_path):
    bad = [dict(imgsz=100), dict(batch=0), dict(batch="seven"), dict(score_threshold=1.5),
           dict(score_threshold="high"), dict(nms="fast"), dict(precision="int8"), dict(opset=9),
           dict(max_det=0)]
    for kwargs in bad:
        with pytest.raises(SwdetError) as e:
            export_onnx(artifact, tmp_path / "x.onnx", **kwargs)
        assert "\n" not in str(e.value)
    assert not (tmp_path / "x.onnx").exists()
