"""Faster R-CNN: every two-stage method trains faster_rcnn_tiny, the sampling baselines draw what they
should, each method touches only its heads, and the ONNX export gives the torch detections and
passes the TensorRT static check (docs/design.md: the method table and the ONNX contract)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from swdet.export import export_onnx
from swdet.train.assign import IGNORE, NEGATIVE
from swdet.train.methods import FASTER_RCNN_METHODS, build_methods
from swdet.train.rcnn_loss import sample_hardest, sample_hardest_nms, sample_labels, sample_random
from swdet.deploy.trt_rules import check_tensorrt_compat, format_problems, has_errors
from test_export_onnx import assert_same_detections, run_ort

from swdet.artifact import build_metadata, load_artifact, postprocess_from_meta, save_artifact
from swdet.cli import main
from swdet.config import PostprocessConfig, load_config, model_preset
from swdet.errors import SwdetError
from swdet.models import Predictor, build_model
from swdet.models.faster_rcnn import cluster_nms_keep, map_roi_levels, multilevel_roi_align

IMGSZ = 128
TRAIN = ["--model", "faster_rcnn_tiny", "--imgsz", str(IMGSZ), "--batch-size", "4", "--workers", "0", "--quiet",
         "--set", "train.log_every=2", "--set", "train.warmup_iters=2"]
LOSS_KEYS = ("rpn_cls", "rpn_reg", "roi_cls", "roi_reg")


@pytest.fixture(scope="module")
def rcnn_runs(synth_data, tmp_path_factory):
    """One 4-iteration faster_rcnn_tiny run per two-stage method (``random`` and ``swn`` evaluated)."""
    root = tmp_path_factory.mktemp("rcnn_runs")
    runs = {}
    for method in FASTER_RCNN_METHODS:
        out = root / method
        extra = [] if method in ("random", "swn") else ["--no-eval"]
        rc = main(["train", "--data", str(synth_data), "--iters", "4", "--out", str(out), "--method", method,
                   *TRAIN, *extra])
        assert rc == 0, method
        runs[method] = out
    return runs


# ---------------------------------------------------------------------------------------------
# Training


@pytest.mark.parametrize("method", FASTER_RCNN_METHODS)
def test_every_method_trains_with_finite_losses_and_the_baseline_parameters(rcnn_runs, method):
    from safetensors.torch import load_file

    run = rcnn_runs[method]
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [2, 4]
    for r in rows:
        for k in LOSS_KEYS:
            assert r[k] is not None and math.isfinite(r[k]), (method, k, r[k])
        assert r["skipped_steps"] == 0
    if method == "pisa":  # CARL is a RoI-head term only
        assert all(math.isfinite(r["roi_carl"]) for r in rows) and not any("rpn_carl" in r for r in rows)
    if method == "swn":
        assert all(r["swn/w_reg"] is not None for r in rows)
    state = load_file(str(run / "model.safetensors"))
    base = load_file(str(rcnn_runs["random"] / "model.safetensors"))
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in base.items()}
    assert not any(k.startswith(("weighting", "swn")) for k in state)
    meta = json.loads((run / "model.json").read_text())
    assert meta["model"]["arch"] == "faster_rcnn" and meta["training"]["method"] == [method]


def test_sampling_free_threshold_comes_from_the_rpn_anchors(rcnn_runs):
    meta = json.loads((rcnn_runs["sampling_free"] / "model.json").read_text())
    thr = meta["threshold"]
    assert thr["source"] == "sampling_free" and 0 < thr["theta"] < 0.05
    assert thr["theta"] == pytest.approx(thr["num_fg"] / thr["num_all"])
    assert meta["postprocess"]["score_threshold"] == pytest.approx(thr["theta"])


def _trainer(synth_data, tmp_path, method, *extra):
    from swdet.train.engine import Trainer

    cfg = load_config(None, ["model=faster_rcnn_tiny", f"model.imgsz={IMGSZ}", f"data.root={synth_data}",
                             "train.iters=2", "train.batch_size=2", "data.workers=0", f"loss.method={method}", *extra])
    trainer = Trainer(cfg, tmp_path / method, progress=False)
    trainer.setup()
    return trainer


def test_sampling_free_bias_init_only_in_the_rpn(synth_data, tmp_path):
    trainer = _trainer(synth_data, tmp_path, "sampling_free")
    det = trainer.module.detector
    pi = trainer.stats["num_fg"] / trainer.stats["num_all"]  # C = 1: the RPN's objectness
    want = -math.log((1 - pi) / pi)
    assert torch.allclose(det.rpn_head.cls_logits.bias, torch.full_like(det.rpn_head.cls_logits.bias, want))
    assert torch.count_nonzero(det.box_head.cls_score.bias) == 0  # Sec. 3.2: not in the RoI head
    loss = trainer.loss
    assert loss.rpn_dense and loss.roi_mode == "all"
    assert [m.name for m in loss.rpn_methods] == [m.name for m in loss.roi_methods] == ["sampling_free"]
    # noisy anchors: a focal-loss RPN on every anchor starts at the focal prior 0.01; the RoI head untouched
    noisy = _trainer(synth_data, tmp_path, "noisy_anchors").module.detector
    assert torch.allclose(noisy.rpn_head.cls_logits.bias, torch.full_like(noisy.rpn_head.cls_logits.bias,
                                                                           -math.log(99.0)))
    assert torch.count_nonzero(noisy.box_head.cls_score.bias) == 0
    base = _trainer(synth_data, tmp_path, "random").module.detector
    assert torch.count_nonzero(base.rpn_head.cls_logits.bias) == 0


@pytest.mark.parametrize("heads, rpn_dense, roi_mode", [("[rpn]", True, "random"), ("[roi]", False, "all")])
def test_sampling_free_in_one_head_only(synth_data, tmp_path, heads, rpn_dense, roi_mode):
    """The paper's Table 4 ablation: Sampling-Free in the RPN only or the RoI head only; the other
    head keeps random sampling, its plain loss and (RPN) its plain initialization."""
    trainer = _trainer(synth_data, tmp_path, "sampling_free", f"methods.sampling_free.heads={heads}")
    loss = trainer.loss
    assert loss.rpn_dense == rpn_dense and loss.roi_mode == roi_mode
    assert [m.name for m in loss.rpn_methods] == (["sampling_free"] if rpn_dense else [])
    assert [m.name for m in loss.roi_methods] == (["sampling_free"] if roi_mode == "all" else [])
    bias = trainer.module.detector.rpn_head.cls_logits.bias
    assert (torch.count_nonzero(bias) > 0) == rpn_dense  # the optimal bias only where it trains densely


def _batch(trainer):
    from swdet.data.loader import iterate_batches

    _, (images, _, assign) = next(iter(iterate_batches(trainer.loader, start_iter=0,
                                                       iters_per_epoch=trainer.iters_per_epoch)))
    return images, assign


def test_each_method_sees_only_its_heads(synth_data, tmp_path):
    """SWN and PISA weight the RoI head only (the RPN loss equals the baseline's on the same
    batch); noisy anchors the RPN only (the RoI loss equals the baseline's)."""
    base = _trainer(synth_data, tmp_path, "random")
    images, _ = _batch(base)
    base.module.detector.train()
    outputs = base.module.detector(images)

    def losses(method):
        t = base if method == "random" else _trainer(synth_data, tmp_path, method)
        _, a = _batch(t)
        seen = []
        for m in t.loss.rpn_methods + t.loss.roi_methods:
            for hook in ("weights", "reduce", "soft_targets"):
                orig = getattr(m, hook)

                def wrapped(rec, *args, _orig=orig, _name=m.name):
                    seen.append((_name, rec.head))
                    return _orig(rec, *args)
                setattr(m, hook, wrapped)
        torch.manual_seed(0)  # the same RoI sample for every method
        _, parts = t.loss(outputs, a.to("cpu"), 0)
        return parts, seen

    ref, _ = losses("random")
    for method, head in (("swn", "roi"), ("pisa", "roi"), ("noisy_anchors", "rpn")):
        parts, seen = losses(method)
        assert seen and {h for _, h in seen} == {head}, (method, seen)
        other = "rpn" if head == "roi" else "roi"
        for k in (f"{other}_cls", f"{other}_reg"):
            assert torch.equal(parts[k], ref[k]), (method, k)
        if method == "pisa":  # ISR keeps the loss value (Eq. 3); CARL is the visible term
            assert "roi_carl" in parts and "roi_carl" not in ref and "rpn_carl" not in parts
        if method == "noisy_anchors":
            assert not torch.equal(parts["rpn_cls"], ref["rpn_cls"])


@pytest.mark.parametrize("args, needle", [
    (["--method", "iou_balanced"], "does not apply to faster_rcnn"),
    (["--method", "pisa,iou_balanced"], "does not apply to faster_rcnn"),
])
def test_single_stage_methods_are_refused(synth_data, tmp_path, capsys, args, needle):
    rc = main(["train", "--data", str(synth_data), "--out", str(tmp_path / "x"), "--iters", "1", *TRAIN, *args])
    err = capsys.readouterr().err
    assert rc != 0 and needle in err and len(err.strip().splitlines()) == 1


def test_configs_are_the_papers_setup():
    from pathlib import Path

    configs = Path(__file__).resolve().parents[1] / "configs"
    for method in FASTER_RCNN_METHODS:
        for stem in (f"faster_rcnn_tiny_{method}", f"faster_rcnn_r50_fpn_1x_{method}"):
            cfg = load_config(configs / f"{stem}.yaml")
            assert cfg.loss.method == [method] and build_methods(cfg.loss.method, cfg.methods, "faster_rcnn")
            r = cfg.rcnn
            roi_batch = 128 if "tiny" in stem else 512  # the tiny trains on 300 proposals, not 2000
            assert (r.rpn_batch, r.rpn_pos_fraction, r.roi_batch, r.roi_pos_fraction) == (256, 0.5, roi_batch, 0.25)
            if stem.startswith("faster_rcnn_r50"):
                t = cfg.train
                assert cfg.model.name == "faster_rcnn_r50_fpn" and cfg.model.backbone == "resnet50"
                assert (t.iters, t.batch_size, t.lr) == (90000, 16, 0.02)
                assert [round(s * t.iters) for s in t.steps] == [60000, 80000]
            else:
                assert cfg.model.name == "faster_rcnn_tiny"
    # the preset's RoI batch without a config file; a config's own value still wins
    assert load_config(None, ["model=faster_rcnn_tiny"]).rcnn.roi_batch == 128
    assert load_config(None, ["model=faster_rcnn_tiny", "rcnn.roi_batch=64"]).rcnn.roi_batch == 64
    assert load_config(None, ["model=faster_rcnn_r50_fpn"]).rcnn.roi_batch == 512


# ---------------------------------------------------------------------------------------------
# Sampling


def test_rpn_sampling_256_at_most_half_positive():
    g = torch.Generator().manual_seed(0)
    labels = torch.full((5000,), NEGATIVE)
    labels[:400] = 0
    labels[400:900] = IGNORE
    out = sample_labels(labels, 256, 0.5, g)
    assert int((out >= 0).sum()) == 128 and int((out == NEGATIVE).sum()) == 128
    assert ((out == IGNORE) | (out == labels)).all()  # sampled anchors keep their label
    few = labels.clone()
    few[10:400] = NEGATIVE  # 10 positives: all of them, and 246 negatives
    out = sample_labels(few, 256, 0.5, g)
    assert int((out >= 0).sum()) == 10 and int((out == NEGATIVE).sum()) == 246


def test_rpn_assigner_draws_256_per_image(synth_data, tmp_path):
    trainer = _trainer(synth_data, tmp_path, "random")
    _, assign = _batch(trainer)
    lab = assign.rpn.labels
    per_image = (lab != IGNORE).sum(1)
    assert (per_image == 256).all() and ((lab >= 0).sum(1) <= 128).all()
    assert int(assign.rpn_count) == int(per_image.sum())
    assert assign.rpn.pos_idx.numel() == int((lab >= 0).sum())


def test_roi_sampling_512_at_most_a_quarter_foreground():
    torch.manual_seed(0)
    b, m = 3, 2000
    labels = torch.full((b, m), NEGATIVE)
    labels[0, :600] = 2  # many foreground: 128 of them
    labels[1, :50] = 1  # few foreground: all of them
    labels[2, :1990] = IGNORE  # few candidates at all: everything valid
    labels[2, 1990:1995] = 0
    idx, ok = sample_random(labels, 512, 0.25)
    assert idx.shape == (b, 512)
    picked = torch.gather(labels, 1, idx)
    n_pos = ((picked >= 0) & ok).sum(1).tolist()
    n_all = ok.sum(1).tolist()
    assert n_pos == [128, 50, 5] and n_all == [512, 512, 10]
    assert not (ok & (picked == IGNORE)).any()
    for row, k in zip(idx, n_all):  # no RoI twice
        assert row[:k].unique().numel() == k


def test_ohem_selection_on_a_crafted_roi_set():
    """mmdetection's OHEMSampler: the hardest foreground by classification loss up to the
    fraction, then the hardest background; the paper: NMS 0.7 over the RoIs ranked by cls + box
    loss, then the hardest of any kind."""
    rois = torch.tensor([[[0, 0, 10, 10], [0, 0, 10, 10.5], [20, 20, 30, 30], [40, 40, 50, 50],
                          [40, 40, 50, 51], [60, 60, 70, 70], [80, 80, 90, 90], [0, 40, 10, 50]]]).float()
    labels = torch.tensor([[1, 1, 0, NEGATIVE, NEGATIVE, NEGATIVE, NEGATIVE, IGNORE]])
    ce = torch.tensor([[0.5, 2.0, 0.1, 3.0, 2.9, 0.2, 1.0, 9.0]])
    box = torch.tensor([[1.0, 0.5, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0]])
    # a second image with two candidates: both, whatever their loss
    rois = torch.cat([rois, rois])
    labels = torch.cat([labels, torch.tensor([[IGNORE] * 6 + [0, NEGATIVE]])])
    ce, box = torch.cat([ce, ce]), torch.cat([box, box])
    idx, ok = sample_hardest(labels, ce, 4, 0.25)  # 1 foreground, 3 background
    assert set(idx[0][ok[0]].tolist()) == {1, 3, 4, 6}
    assert set(idx[1][ok[1]].tolist()) == {6, 7}
    # hard negatives only: the foreground RoI is a uniform draw (RoI 0, 1 or 2, whatever their
    # loss), the background still the three hardest
    drawn = set()
    for seed in range(20):
        torch.manual_seed(seed)
        idx, ok = sample_hardest(labels, ce, 4, 0.25, hard_positives=False)
        chosen = set(idx[0][ok[0]].tolist())
        assert chosen - {0, 1, 2} == {3, 4, 6} and len(chosen & {0, 1, 2}) == 1
        drawn |= chosen & {0, 1, 2}
    assert drawn == {0, 1, 2}
    # the paper: totals 1.5, 2.5, 0.3, 3.0, 2.9, 0.2, 1.0; RoI 4 overlaps 3 (IoU 0.91) and RoI 0
    # overlaps 1 (IoU 0.95): suppressed; the 4 hardest left are 3, 1, 6, 2
    idx, ok = sample_hardest_nms(rois, labels, ce + box, 4, 0.7)
    assert set(idx[0][ok[0]].tolist()) == {3, 1, 6, 2}
    assert set(idx[1][ok[1]].tolist()) == {6, 7}
    # without the overlap the paper's selection would take the near-duplicates
    idx, ok = sample_hardest_nms(rois, labels, ce + box, 4, 1.0)
    assert set(idx[0][ok[0]].tolist()) == {3, 4, 1, 0}


# ---------------------------------------------------------------------------------------------
# Model pieces


def test_training_nms_is_greedy_nms_when_converged_and_a_superset_before():
    from torchvision.ops import nms

    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        xy = torch.rand(400, 2, generator=g) * 100
        boxes = torch.cat([xy, xy + torch.rand(400, 2, generator=g) * 40 + 4], 1)
        scores = torch.rand(400, generator=g)
        order = scores.argsort(descending=True)
        boxes = boxes[order]
        greedy = torch.zeros(400, dtype=torch.bool)
        greedy[nms(boxes, scores[order], 0.6)] = True
        valid = torch.ones(1, 400, dtype=torch.bool)
        assert torch.equal(cluster_nms_keep(boxes[None], valid, 0.6, 30)[0], greedy)
        early = cluster_nms_keep(boxes[None], valid, 0.6, 2)[0]
        assert (early | ~greedy).all()  # never drops a box greedy NMS keeps


def test_roi_levels_and_masked_roi_align_match_the_indexed_one():
    rois = torch.tensor([[[0, 0, 20, 20], [0, 0, 112, 112], [0, 0, 224, 224], [0, 0, 448, 448], [3, 4, 3, 9]]],
                        dtype=torch.float32)
    assert map_roi_levels(rois[0], 2, 5).tolist() == [2.0, 3.0, 4.0, 5.0, 2.0]
    torch.manual_seed(0)
    feats = [torch.rand(1, 8, 64 // 2 ** i, 64 // 2 ** i) for i in range(4)]
    boxes = torch.rand(1, 30, 4) * 200
    boxes = torch.cat([boxes[..., :2], boxes[..., :2] + boxes[..., 2:]], -1).clamp(max=256)
    a = multilevel_roi_align(feats, [2, 3, 4, 5], boxes, 7, 2, masked=True)
    b = multilevel_roi_align(feats, [2, 3, 4, 5], boxes, 7, 2, masked=False)
    assert torch.equal(a, b)



def test_cpu_training_roi_align_matches_torchvision_values_and_gradients():
    """The gather RoIAlign used in CPU training equals torchvision's ``roi_align`` (values and
    gradients), including RoIs that leave the map on every side, points, and tiny maps."""
    torch.manual_seed(0)
    levels = [2, 3, 4, 5]
    feats = [torch.randn(2, 5, 48 // 2 ** i, 40 // 2 ** i, requires_grad=True) for i in range(4)]
    xy = torch.rand(2, 40, 2) * 220 - 30
    wh = torch.rand(2, 40, 2) ** 3 * 300
    boxes = torch.cat([xy, xy + wh], -1)
    boxes[0, 0] = torch.tensor([-40.0, -40.0, -20.0, -10.0])  # wholly outside (top-left)
    boxes[0, 1] = torch.tensor([150.0, 180.0, 400.0, 500.0])  # past the bottom-right edge
    boxes[1, 2] = torch.tensor([17.0, 9.0, 17.0, 9.0])  # a point
    boxes[1, 3] = torch.tensor([-100.0, -50.0, 400.0, 420.0])  # level 5, larger than the map
    target = map_roi_levels(boxes.reshape(-1, 4), 2, 5)
    assert set(target.tolist()) == {2.0, 3.0, 4.0, 5.0}
    grad = torch.randn(80, 5, 7, 7)

    ours = multilevel_roi_align(feats, levels, boxes, 7, 2)  # grad enabled on the CPU: the gather form
    feats_ref = [f.detach().requires_grad_() for f in feats]
    ref = multilevel_roi_align(feats_ref, levels, boxes, 7, 2, masked=True)
    fn, names = ours.grad_fn, []
    while fn is not None and len(names) < 4:
        names.append(type(fn).__name__)
        fn = fn.next_functions[0][0] if fn.next_functions else None
    assert any("WeightedGather" in n for n in names), names  # the gather form ran
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    g_ours = torch.autograd.grad((ours * grad).sum(), feats)
    g_ref = torch.autograd.grad((ref * grad).sum(), feats_ref)
    for a, b in zip(g_ours, g_ref):  # sums of up to hundreds of terms in another order
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # inference keeps torchvision's op (what the ONNX RoiAlign matches)
        assert torch.equal(multilevel_roi_align(feats, levels, boxes, 7, 2),
                           multilevel_roi_align(feats, levels, boxes, 7, 2, masked=False))


# ---------------------------------------------------------------------------------------------
# Export


NUM_CLASSES = 3


def make_rcnn_artifact(path, seed: int = 0, post: PostprocessConfig | None = None):
    """A random-weights faster_rcnn_tiny artifact with spread scores (few ties)."""
    torch.manual_seed(seed)
    cfg = model_preset("faster_rcnn_tiny")
    cfg.num_classes, cfg.imgsz = NUM_CLASSES, IMGSZ
    model = build_model(cfg)
    with torch.no_grad():
        model.rpn_head.cls_logits.weight.normal_(std=0.3)
        model.rpn_head.bbox_pred.weight.normal_(std=0.02)
        model.box_head.cls_score.weight.normal_(std=0.2)
        model.box_head.bbox_pred.weight.normal_(std=0.05)
    meta = build_metadata(cfg, post or PostprocessConfig(), class_names=["a", "b", "c"], category_ids=[1, 5, 9],
                          method=["random"])
    save_artifact(path, model, meta)
    return path


def reference(artifact, x, **overrides):
    model, meta = load_artifact(artifact)
    post = postprocess_from_meta(meta)
    for k, v in overrides.items():
        setattr(post, k, v)
    return {k: v.numpy() for k, v in Predictor(model, post)(x).items()}


def images(batch, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, IMGSZ, IMGSZ, generator=g) * 255


@pytest.fixture(scope="module")
def rcnn_artifact(tmp_path_factory):
    return make_rcnn_artifact(tmp_path_factory.mktemp("rcnn_artifact"))


@pytest.fixture(scope="module")
def rcnn_onnx(rcnn_artifact, tmp_path_factory):
    return export_onnx(rcnn_artifact, tmp_path_factory.mktemp("rcnn_onnx") / "model.onnx")


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_matches_torch_detections(rcnn_artifact, rcnn_onnx, batch):
    x = images(batch, seed=batch)
    ref = reference(rcnn_artifact, x)
    assert ref["num_dets"].min() > 10
    assert_same_detections(ref, run_ort(rcnn_onnx, x))


def test_onnx_graph_contract_and_tensorrt_check(rcnn_onnx, rcnn_artifact, tmp_path):
    import onnx

    model = onnx.load(str(rcnn_onnx))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("NonMaxSuppression") == 2 and ops.count("RoiAlign") == 4  # RPN + detections; P2-P5
    assert not set(ops) & {"Loop", "If", "Scan", "NonZero"}
    (inp,) = model.graph.input
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", 3, IMGSZ, IMGSZ]
    assert {o.name for o in model.graph.output} == {"num_dets", "det_boxes", "det_scores", "det_classes"}
    problems = check_tensorrt_compat(rcnn_onnx)
    assert not has_errors(problems), format_problems(problems)
    eff = export_onnx(rcnn_artifact, tmp_path / "eff.onnx", nms="efficient", batch=2)
    problems = check_tensorrt_compat(eff)
    assert not has_errors(problems), format_problems(problems)
    with pytest.raises(SwdetError, match="opset 16"):
        export_onnx(rcnn_artifact, tmp_path / "old.onnx", opset=15)


def test_onnx_fixed_batch_threshold_zero_and_fp16(rcnn_artifact, tmp_path):
    x = images(2, seed=7)
    fixed = export_onnx(rcnn_artifact, tmp_path / "b2.onnx", batch=2, score_threshold=0.0, max_det=50)
    assert_same_detections(reference(rcnn_artifact, x, score_threshold=0.0, max_det=50), run_ort(fixed, x))
    half = export_onnx(rcnn_artifact, tmp_path / "fp16.onnx", precision="fp16")
    out, ref = run_ort(half, x), reference(rcnn_artifact, x)
    assert out["det_boxes"].dtype == np.float32
    for b in range(2):
        n_ref, n_out = int(ref["num_dets"][b, 0]), int(out["num_dets"][b, 0])
        assert abs(n_ref - n_out) <= max(3, n_ref // 5)


def test_trained_onnx_keeps_torch_ap_and_verify_random_vs_swn(rcnn_runs, synth_data, tmp_path):
    from swdet.serve.verify import format_verify_report, verify

    onnx_random = export_onnx(rcnn_runs["random"], tmp_path / "random.onnx")
    onnx_swn = export_onnx(rcnn_runs["swn"], tmp_path / "swn.onnx")
    ann, imgs = synth_data / "annotations" / "instances_val.json", synth_data / "val"
    rep = verify(onnx_random, onnx_swn, baseline_source=rcnn_runs["random"], candidate_source=rcnn_runs["swn"],
                 ann=ann, images=imgs, rounds=2, iters=1, warmup=1, batch_size=4)
    assert rep.ok, format_verify_report(rep)
    for label in ("baseline", "candidate"):
        assert abs(rep.accuracy[label]["delta"]) <= 0.002
    # the trained model's detections on the val images, every candidate kept: ONNX == torch
    from swdet.data.coco import CocoDetection
    from swdet.data.loader import collate

    ds = CocoDetection(ann, imgs, imgsz=IMGSZ, train=False)
    x, _ = collate([ds[i] for i in range(4)])
    x = x.float()
    zero = export_onnx(rcnn_runs["random"], tmp_path / "random0.onnx", score_threshold=0.0)
    ref = reference(rcnn_runs["random"], x, score_threshold=0.0)
    assert ref["num_dets"].min() > 0
    assert_same_detections(ref, run_ort(zero, x), score_tol=1e-4)


def test_ohem_selection_negatives_is_wired_to_the_sampler():
    """``methods.ohem.selection: negatives`` reaches the loss's sampler: the foreground is then a
    random draw (not the hardest 32), the background still the hardest."""
    from types import SimpleNamespace

    from swdet.config import load_config
    from swdet.train.methods import build_methods
    from swdet.train.rcnn_loss import FasterRCNNLoss, RoIBatch

    n_pos, n_neg = 100, 300
    labels = torch.cat([torch.zeros(n_pos, dtype=torch.long), torch.full((n_neg,), NEGATIVE)])[None]
    m = labels.shape[1]
    cand = RoIBatch(rois=torch.tensor([[0.0, 0.0, 10.0, 10.0]]).expand(1, m, 4).clone(), labels=labels,
                    gt_index=torch.zeros(1, m, dtype=torch.long), iou=torch.full((1, m), 0.6))
    # the right-class logit rises with the index: RoI 0 of each kind is the hardest
    rank = torch.cat([torch.arange(n_pos), torch.arange(n_neg)]).float() / 10

    def box_head(rois):
        logits = torch.zeros(1, m, 4)  # 3 classes + background (last)
        logits[0, :n_pos, 0] = rank[:n_pos]
        logits[0, n_pos:, 3] = rank[n_pos:]
        return logits, torch.zeros(1, m, 3, 4)

    outputs, assign = {"box_head": box_head}, SimpleNamespace(gt_boxes=torch.tensor([[[0.0, 0.0, 10.0, 10.0]]]))
    picked = {}
    for selection in ("mmdet", "negatives"):
        cfg = load_config(None, ["model=faster_rcnn_tiny", "model.num_classes=3", f"methods.ohem.selection={selection}"])
        loss = FasterRCNNLoss(cfg, build_methods(["ohem"], cfg.methods, arch="faster_rcnn"), torch.device("cpu"))
        torch.manual_seed(0)
        idx, ok = loss.sample(outputs, cand, assign)
        chosen = idx[0][ok[0]]
        picked[selection] = (set(chosen[chosen < n_pos].tolist()), set(chosen[chosen >= n_pos].tolist()))
    hardest_neg = set(range(n_pos, n_pos + 96))
    assert picked["mmdet"] == (set(range(32)), hardest_neg)
    pos, neg = picked["negatives"]
    assert len(pos) == 32 and pos != set(range(32)) and max(pos) >= 32 and neg == hardest_neg
