"""COCO evaluation (swdet.evaluation): same numbers as a direct pycocotools run, reports, files."""

from __future__ import annotations

import copy
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from conftest import COCO128, NO_COCO128

from swdet.errors import MissingDependency, SwdetError
from swdet.evaluation import (
    STAT_KEYS,
    EvalResult,
    evaluate_detections,
    faster_coco_eval_available,
    format_eval_table,
    load_coco,
    load_predictions_json,
    plot_pr_curve,
    to_coco_results,
    write_metrics_json,
    write_predictions_json,
)

COCO128_VAL = COCO128 / "annotations" / "instances_val2017.json"
CATEGORIES = [{"id": 3, "name": "square"}, {"id": 7, "name": "disk"}, {"id": 12, "name": "triangle"}]
# (min side, max side) of small (< 32²), medium and large (> 96²) boxes
SIZES = [(6, 28), (36, 90), (110, 260)]


def synth_gt(seed: int = 0, num_images: int = 6, sizes=SIZES) -> dict:
    """A few 640x480 images, three categories with non-contiguous ids, boxes of every size."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(num_images):
        image_id = 100 + 3 * i  # non-contiguous image ids too
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 640, "height": 480})
        for j in range(int(rng.integers(3, 8))):
            lo, hi = sizes[(i + j) % len(sizes)]
            w, h = rng.uniform(lo, hi, size=2)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            cat = CATEGORIES[(i + 2 * j) % 3]["id"]
            anns.append({
                "id": len(anns) + 1, "image_id": image_id, "category_id": cat,
                "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                "area": round(w, 2) * round(h, 2), "iscrowd": 0,
            })
    return {"images": images, "annotations": anns, "categories": copy.deepcopy(CATEGORIES)}


def synth_predictions(gt: dict, seed: int = 1) -> list[dict]:
    """Perturbed GT boxes (some missed, some with the wrong class, some duplicated) plus false
    positives, with random scores."""
    rng = np.random.default_rng(seed)
    cat_ids = [c["id"] for c in gt["categories"]]
    preds = []
    for a in gt["annotations"]:
        if rng.random() < 0.15:
            continue  # missed
        x, y, w, h = a["bbox"]
        jitter = rng.normal(0, 0.12, size=4) * [w, h, w, h]
        cat = a["category_id"] if rng.random() > 0.1 else int(rng.choice(cat_ids))
        for _ in range(1 + int(rng.random() < 0.2)):  # sometimes a duplicate
            preds.append({
                "image_id": a["image_id"], "category_id": cat,
                "bbox": [float(x + jitter[0]), float(y + jitter[1]),
                         float(max(1.0, w + jitter[2])), float(max(1.0, h + jitter[3]))],
                "score": float(rng.uniform(0.05, 1.0)),
            })
    for img in gt["images"]:
        for _ in range(int(rng.integers(1, 5))):  # false positives
            w, h = rng.uniform(8, 200, size=2)
            preds.append({
                "image_id": img["id"], "category_id": int(rng.choice(cat_ids)),
                "bbox": [float(rng.uniform(0, 640 - w)), float(rng.uniform(0, 480 - h)),
                         float(w), float(h)],
                "score": float(rng.uniform(0.0, 0.9)),
            })
    order = rng.permutation(len(preds))
    return [preds[i] for i in order]


def gt_as_predictions(gt: dict) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]),
             "score": 1.0} for a in gt["annotations"]]


def direct_cocoeval(ann_file: Path, pred_file: Path, img_ids=None, cat_ids=None) -> COCOeval:
    """The reference: pycocotools exactly as its README runs it."""
    gt = COCO(str(ann_file))
    dt = gt.loadRes(str(pred_file))
    E = COCOeval(gt, dt, "bbox")
    if img_ids is not None:
        E.params.imgIds = img_ids
    if cat_ids is not None:
        E.params.catIds = cat_ids
    E.evaluate()
    E.accumulate()
    E.summarize()
    return E


@pytest.fixture
def synth(tmp_path):
    gt = synth_gt()
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps(gt))
    preds = synth_predictions(gt)
    pred_file = write_predictions_json(tmp_path / "predictions.json", preds)
    return ann, gt, preds, pred_file


def test_synthetic_gt_covers_every_area_range(synth):
    _, gt, _, _ = synth
    areas = np.array([a["area"] for a in gt["annotations"]])
    assert (areas < 32**2).any() and ((areas >= 32**2) & (areas < 96**2)).any() and (areas >= 96**2).any()


def test_stats_equal_direct_pycocotools(synth, capsys):
    ann, _, preds, pred_file = synth
    result = evaluate_detections(load_coco(ann), preds, backend="pycocotools")
    assert capsys.readouterr().out == ""  # quiet
    ref = direct_cocoeval(ann, pred_file)
    printed = capsys.readouterr().out
    assert list(result.stats) == list(STAT_KEYS)
    np.testing.assert_allclose([result.stats[k] for k in STAT_KEYS], ref.stats[:12], atol=1e-6, rtol=0)
    np.testing.assert_allclose(result.precision, ref.eval["precision"], atol=1e-9, rtol=0)
    assert 0.05 < result.stats["AP"] < 0.95  # a non-trivial case
    assert result.backend == "pycocotools"
    assert result.num_images == 6 and result.num_detections == len(preds)
    # The table's 12 summary lines are the ones pycocotools prints.
    summary = [ln for ln in printed.splitlines() if ln.startswith(" Average")]
    table = format_eval_table(result).splitlines()
    assert len(summary) == 12
    assert [ln for ln in table if ln.startswith(" Average")] == summary


def test_auto_backend_gives_the_same_numbers(synth):
    ann, _, preds, pred_file = synth
    result = evaluate_detections(load_coco(ann), preds)  # auto
    ref = direct_cocoeval(ann, pred_file)
    np.testing.assert_allclose([result.stats[k] for k in STAT_KEYS], ref.stats[:12], atol=1e-6, rtol=0)
    assert result.backend == ("faster_coco_eval" if faster_coco_eval_available() else "pycocotools")


def test_predictions_are_not_modified(synth):
    ann, _, preds, _ = synth
    before = copy.deepcopy(preds)
    evaluate_detections(load_coco(ann), preds)
    assert preds == before


def test_per_class_ap_is_the_standard_reduction(synth):
    ann, _, preds, pred_file = synth
    result = evaluate_detections(load_coco(ann), preds, backend="pycocotools")
    assert [(c.category_id, c.name) for c in result.per_class] == [
        (3, "square"), (7, "disk"), (12, "triangle")]
    # Every class has GT: the class mean is AP (and AP50).
    assert np.mean([c.AP for c in result.per_class]) == pytest.approx(result.stats["AP"], abs=1e-6)
    assert np.mean([c.AP50 for c in result.per_class]) == pytest.approx(result.stats["AP50"], abs=1e-6)
    # Each class's AP is what COCOeval gives when evaluating that class alone.
    for c in result.per_class:
        ref = direct_cocoeval(ann, pred_file, cat_ids=[c.category_id])
        assert c.AP == pytest.approx(ref.stats[0], abs=1e-6)
        assert c.AP50 == pytest.approx(ref.stats[1], abs=1e-6)
    assert len({round(c.AP, 6) for c in result.per_class}) > 1  # not all equal: the check bites


def test_class_without_gt_is_undefined(tmp_path):
    gt = synth_gt()
    gt["categories"].append({"id": 20, "name": "unused"})
    ann = tmp_path / "gt.json"
    ann.write_text(json.dumps(gt))
    result = evaluate_detections(load_coco(ann), synth_predictions(gt))
    unused = [c for c in result.per_class if c.category_id == 20][0]
    assert unused.AP == -1 and unused.AP50 == -1
    defined = [c.AP for c in result.per_class if c.AP > -1]
    assert np.mean(defined) == pytest.approx(result.stats["AP"], abs=1e-6)


def test_image_ids_subset_equals_cocoeval_on_those_images(synth):
    ann, gt, preds, pred_file = synth
    subset = [gt["images"][1]["id"], gt["images"][4]["id"]]
    result = evaluate_detections(load_coco(ann), preds, image_ids=subset)
    ref = direct_cocoeval(ann, pred_file, img_ids=subset)
    np.testing.assert_allclose([result.stats[k] for k in STAT_KEYS], ref.stats[:12], atol=1e-6, rtol=0)
    assert result.num_images == 2
    assert result.num_detections == sum(p["image_id"] in subset for p in preds)
    with pytest.raises(SwdetError, match="image_ids: image 99999"):
        evaluate_detections(load_coco(ann), preds, image_ids=[99999])


def test_perfect_predictions_give_ap_one(synth):
    ann, gt, _, _ = synth
    result = evaluate_detections(load_coco(ann), gt_as_predictions(gt))
    for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert result.stats[k] == pytest.approx(1.0, abs=1e-12), k
    assert all(c.AP == pytest.approx(1.0) for c in result.per_class)
    recall, precision = result.pr_curve(0.5)
    assert recall.shape == precision.shape == (101,)
    np.testing.assert_allclose(precision, 1.0)


@pytest.mark.parametrize("backend", ["pycocotools", "auto"])
def test_empty_predictions_give_zero(synth, tmp_path, backend):
    ann, _, _, _ = synth
    result = evaluate_detections(load_coco(ann), [], backend=backend)
    for k in STAT_KEYS:
        assert result.stats[k] == 0.0, k
    assert result.num_detections == 0
    assert all(c.AP == 0.0 for c in result.per_class)
    assert "square" in format_eval_table(result)
    data = json.loads(write_metrics_json(tmp_path / "m.json", result).read_text())
    assert data["AP"] == 0.0


@pytest.mark.skipif(not faster_coco_eval_available(), reason="faster-coco-eval not installed")
def test_faster_coco_eval_gives_the_same_numbers(synth):
    ann, gt, preds, _ = synth
    coco = load_coco(ann)
    a = evaluate_detections(coco, preds, backend="pycocotools")
    b = evaluate_detections(coco, preds, backend="faster_coco_eval")
    assert b.backend == "faster_coco_eval"
    for k in STAT_KEYS:
        assert b.stats[k] == pytest.approx(a.stats[k], abs=1e-6), k
    for cb, ca in zip(b.per_class, a.per_class):
        assert cb.AP == pytest.approx(ca.AP, abs=1e-6) and cb.AP50 == pytest.approx(ca.AP50, abs=1e-6)
    np.testing.assert_allclose(b.precision, a.precision, atol=1e-6, rtol=0)
    empty = evaluate_detections(coco, [], backend="faster_coco_eval")
    assert empty.stats["AP"] == 0.0
    perfect = evaluate_detections(coco, gt_as_predictions(gt), backend="faster_coco_eval")
    assert perfect.stats["AP"] == pytest.approx(1.0)


@pytest.mark.skipif(faster_coco_eval_available(), reason="faster-coco-eval is installed")
def test_faster_backend_without_package_names_the_extra(synth):
    ann, _, preds, _ = synth
    with pytest.raises(MissingDependency, match=r"swdet\[fast-eval\]"):
        evaluate_detections(load_coco(ann), preds, backend="faster_coco_eval")


def test_unknown_backend_is_a_user_error(synth):
    ann, _, preds, _ = synth
    with pytest.raises(SwdetError, match="backend 'cocoapi'"):
        evaluate_detections(load_coco(ann), preds, backend="cocoapi")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: p.update(image_id=424242), "image_id 424242 is not in the annotation file"),
        (lambda p: p.update(category_id=0), "category_id 0 is not in the annotation file"),
        (lambda p: p.update(bbox=[50, 50, 10, -5]), "negative width or height"),
        (lambda p: p.update(bbox=[1, 2, 3]), "bbox 4 numbers"),
        (lambda p: p.pop("score"), "expected an object with image_id"),
        (lambda p: p.update(score=float("nan")), "must be finite"),
    ],
)
def test_bad_predictions_are_one_line_errors(synth, mutate, message):
    ann, _, preds, _ = synth
    preds = copy.deepcopy(preds)
    mutate(preds[3])
    with pytest.raises(SwdetError, match=r"predictions\[3\]") as e:
        evaluate_detections(load_coco(ann), preds)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "annotation file not found"),
        ('{"images": [', "invalid JSON at line 1"),
        ('{"images": [], "annotations": [], "categories": [{"id": 1}]}', "no images"),
        ('{"images": [{"id": 1}], "categories": [{"id": 1}]}', "no 'annotations' key"),
        ('{"images": [{"id": 1}], "annotations": []}', "no categories"),
        ('[1, 2]', "expected a COCO object"),
        ('{"images": [{"id": 1}], "annotations": [], "categories": [{"name": "x"}]}', "category entry #0 has no"),
    ],
)
def test_load_coco_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "ann.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SwdetError) as e:
        load_coco(path)
    assert str(e.value).startswith(str(path)) and message in str(e.value)
    assert "\n" not in str(e.value)


def test_load_coco_skips_bad_records_with_one_warning_per_kind(tmp_path):
    """One policy with the training dataset (swdet.data.coco): bad records are skipped, counted and
    reported once per kind; the file still loads."""
    from swdet.data.coco import DataWarning

    path = tmp_path / "ann.json"
    path.write_text(json.dumps({
        "images": [{"id": 1}, {"name": "no id"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1},  # no bbox
                        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2]},
                        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 5]}],
        "categories": [{"id": 1}]}))
    with pytest.warns(DataWarning) as caught:
        coco = load_coco(path)
    messages = sorted(str(w.message) for w in caught)
    assert messages == ["ann.json: skipped 1 image entries without an integer id (e.g. entry #1)",
                        "ann.json: skipped 2 annotations without an image_id, a category_id or a 4-number bbox "
                        "(e.g. id 1)"]
    assert list(coco.anns) == [3] and coco.anns[3]["area"] == 20 and list(coco.imgs) == [1]


def test_load_coco_is_quiet_and_fills_area_and_iscrowd(tmp_path, capsys):
    gt = synth_gt()
    for a in gt["annotations"]:
        del a["area"], a["iscrowd"]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(gt))
    coco = load_coco(path)
    assert capsys.readouterr().out == ""
    assert isinstance(coco, COCO) and len(coco.getImgIds()) == 6
    a = coco.dataset["annotations"][0]
    assert a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3]) and a["iscrowd"] == 0
    result = evaluate_detections(coco, gt_as_predictions(gt))
    assert result.stats["AP"] == pytest.approx(1.0)


def test_evaluate_accepts_an_annotation_path(synth):
    ann, _, preds, pred_file = synth
    result = evaluate_detections(ann, preds)
    assert result.stats["AP"] == pytest.approx(direct_cocoeval(ann, pred_file).stats[0], abs=1e-6)


def test_to_coco_results_maps_xyxy_and_class_indices(synth):
    ann, gt, _, _ = synth
    coco = load_coco(ann)
    contiguous = {c["id"]: k for k, c in enumerate(gt["categories"])}
    category_ids = [c["id"] for c in gt["categories"]]
    preds = []
    for img in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == img["id"]]
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float32)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        labels = np.array([contiguous[a["category_id"]] for a in anns])
        scores = np.full(len(anns), 0.9, np.float32)
        preds += to_coco_results(np.int64(img["id"]), xyxy, scores, labels, category_ids)
    first = preds[0]
    assert set(first) == {"image_id", "category_id", "bbox", "score"}
    assert type(first["image_id"]) is int and type(first["category_id"]) is int
    assert first["category_id"] == gt["annotations"][0]["category_id"]
    np.testing.assert_allclose(first["bbox"], gt["annotations"][0]["bbox"], atol=1e-3)
    assert evaluate_detections(coco, preds).stats["AP"] == pytest.approx(1.0)
    with pytest.raises(SwdetError, match="class index 3 out of range for 3 categories"):
        to_coco_results(1, np.zeros((1, 4)), [0.5], [3], category_ids)
    assert to_coco_results(1, np.zeros((0, 4)), [], [], category_ids) == []


def test_predictions_file_roundtrip_is_atomic_and_plain_json(tmp_path):
    preds = [{"image_id": np.int64(5), "category_id": np.int32(3),
              "bbox": np.array([1.5, 2.0, 3.0, 4.0], dtype=np.float32), "score": np.float32(0.25)}]
    path = write_predictions_json(tmp_path / "out" / "predictions.json", preds)
    assert os.listdir(path.parent) == ["predictions.json"]  # no temp file left behind
    loaded = load_predictions_json(path)
    assert loaded == [{"image_id": 5, "category_id": 3, "bbox": [1.5, 2.0, 3.0, 4.0], "score": 0.25}]
    path.write_text('{"not": "a list"}')
    with pytest.raises(SwdetError, match="expected a JSON list"):
        load_predictions_json(path)


def test_metrics_json_keys_and_fractions(synth, tmp_path):
    ann, _, preds, _ = synth
    result = evaluate_detections(load_coco(ann), preds)
    path = write_metrics_json(tmp_path / "metrics.json", result, extra={"runtime": "onnxruntime"})
    data = json.loads(path.read_text())
    for k in STAT_KEYS:
        assert 0.0 <= data[k] <= 1.0, k
        assert data[k] == pytest.approx(result.stats[k])
    assert data["runtime"] == "onnxruntime" and data["backend"] == result.backend
    assert data["num_images"] == 6 and data["num_detections"] == len(preds)
    assert [c["name"] for c in data["per_class"]] == ["square", "disk", "triangle"]
    assert all(0.0 <= c["AP"] <= 1.0 and 0.0 <= c["AP50"] <= 1.0 for c in data["per_class"])
    assert sorted(os.listdir(tmp_path)) == ["instances.json", "metrics.json", "predictions.json"]
    with pytest.raises(ValueError, match="AP"):
        write_metrics_json(tmp_path / "m2.json", result, extra={"AP": 0.5})


def test_undefined_stats_are_null_in_the_metrics_file(tmp_path):
    gt = synth_gt(sizes=[(110, 260)])  # large objects only: APs and APm are undefined
    ann = tmp_path / "gt.json"
    ann.write_text(json.dumps(gt))
    result = evaluate_detections(load_coco(ann), synth_predictions(gt))
    assert result.stats["APs"] == -1 and result.stats["APm"] == -1 and result.stats["APl"] >= 0
    data = json.loads(write_metrics_json(tmp_path / "metrics.json", result).read_text())
    assert data["APs"] is None and data["APm"] is None and 0 <= data["APl"] <= 1
    assert "-1.000" in format_eval_table(result)  # pycocotools prints undefined as -1


def test_table_lists_classes(synth):
    ann, _, preds, _ = synth
    result = evaluate_detections(load_coco(ann), preds)
    text = format_eval_table(result, title="val")
    assert text.startswith("val (")
    assert "\x1b" not in text
    rows = {ln.split()[1]: ln for ln in text.splitlines() if ln[:3].strip() in {"3", "7", "12"}}
    assert set(rows) == {"square", "disk", "triangle"}
    sq = [c for c in result.per_class if c.name == "square"][0]
    assert f"{sq.AP:.3f}" in rows["square"] and f"{sq.AP50:.3f}" in rows["square"]


def test_pr_plot_is_a_png(synth, tmp_path):
    ann, _, preds, _ = synth
    result = evaluate_detections(load_coco(ann), preds)
    path = plot_pr_curve(result, tmp_path / "plots" / "pr.png")
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", raw[16:24])
    with Image.open(path) as im:
        im.verify()
    assert (width, height) == (600, 500)
    # mean over IoUs lies below the IoU 0.5 curve
    _, p50 = result.pr_curve(0.5)
    _, pmean = result.pr_curve()
    assert np.all(pmean <= p50 + 1e-12) and p50.max() > 0


def test_eval_result_is_a_dataclass_with_documented_fields(synth):
    ann, _, preds, _ = synth
    result = evaluate_detections(load_coco(ann), preds)
    assert isinstance(result, EvalResult)
    T, R, K, A, M = result.precision.shape
    assert (T, R, K, A, M) == (10, 101, 3, 4, 3)
    np.testing.assert_allclose(result.iou_thresholds, np.linspace(0.5, 0.95, 10))
    assert result.recall_thresholds.shape == (101,)
    cid, name, ap, ap50 = result.per_class[0]  # plain tuples too
    assert (cid, name) == (3, "square")


@pytest.mark.skipif(not COCO128_VAL.is_file(), reason=NO_COCO128)
def test_coco128_ground_truth_as_predictions_gives_ap_one():
    # coco128's `area` is the box area, which is also what loadRes gives a detection, so the GT
    # boxes fall in the same area range as their detections and every AP is exactly 1.
    coco = load_coco(COCO128_VAL)
    preds = gt_as_predictions(coco.dataset)
    result = evaluate_detections(coco, preds)
    assert result.num_images == 128 and result.num_detections == 898
    for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "ARs", "ARm", "ARl"):
        assert result.stats[k] == pytest.approx(1.0, abs=1e-12), k
    with_gt = [c for c in result.per_class if c.AP > -1]
    assert 0 < len(with_gt) < 80  # some of the 80 classes have no box in these 128 images
    assert all(c.AP == pytest.approx(1.0) for c in with_gt)
