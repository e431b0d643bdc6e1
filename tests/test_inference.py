"""Dataset evaluation of a runtime (:func:`swdet.inference.evaluate_runtime`, the one path behind
``swdet eval``, ``swdet verify``, ``swdet pipeline`` and the trainer's evaluation) and
``swdet predict``'s use of core preprocessing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_serve_helpers import CATEGORY_IDS, CLASS_NAMES, write_coco

from swdet.errors import SwdetError
from swdet.inference import evaluate_runtime

IMGSZ = 64
N = 6


class Oracle:
    """An ``infer`` callable that returns, for the images in dataset order, their ground-truth
    boxes (canvas pixels) -- except for the images in ``miss`` (no detections), so AP < 1."""

    def __init__(self, ann: Path, images: Path, miss=(0,)):
        from swdet.data.coco import CocoDetection

        ds = CocoDetection(ann, images, imgsz=IMGSZ, train=False, warn=False)
        self.gt = [ds.gt_boxes(i) for i in range(len(ds))]
        self.miss, self.next = set(miss), 0

    def __call__(self, images):
        b, k = len(images), 4
        out = {"num_dets": np.zeros((b, 1), np.int32), "det_boxes": np.zeros((b, k, 4), np.float32),
               "det_scores": np.zeros((b, k), np.float32), "det_classes": np.zeros((b, k), np.int32)}
        for j in range(b):
            i, self.next = self.next, self.next + 1
            boxes, labels = self.gt[i]
            if i in self.miss:
                continue
            n = len(boxes)
            out["num_dets"][j, 0] = n
            out["det_boxes"][j, :n], out["det_scores"][j, :n], out["det_classes"][j, :n] = boxes, 0.9, labels
        return out


def _drop_image(ann: Path, file_name: str, out: Path) -> Path:
    data = json.loads(ann.read_text())
    gone = {im["id"] for im in data["images"] if im["file_name"] == file_name}
    data["images"] = [im for im in data["images"] if im["id"] not in gone]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] not in gone]
    out.write_text(json.dumps(data))
    return out


def test_unreadable_image_is_left_out_not_counted_as_missed(tmp_path):
    ann, images = write_coco(tmp_path, n=N)
    broken = sorted(images.iterdir())[4]  # its class is detected on image 1: a miss would lower AP
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.warns(Warning, match="skipped"):
        with_bad = evaluate_runtime(Oracle(ann, images), ann, images, imgsz=IMGSZ, category_ids=CATEGORY_IDS,
                                    batch_size=4, progress=False)
    ann_without = _drop_image(ann, broken.name, tmp_path / "without.json")
    without = evaluate_runtime(Oracle(ann_without, images), ann_without, images, imgsz=IMGSZ,
                               category_ids=CATEGORY_IDS, batch_size=4, progress=False)
    assert with_bad.dataset.skipped_images == 1 and len(with_bad.predictions.image_ids) == N - 1
    assert sorted(with_bad.predictions.image_ids) == sorted(without.predictions.image_ids)
    assert with_bad.result.num_images == without.result.num_images == N - 1
    ap = without.result.stats["AP"]
    assert 0.3 < ap < 1.0  # one image missed on purpose: the check below can fail
    assert with_bad.result.stats == pytest.approx(without.result.stats)


def test_category_mismatch_is_one_line(tmp_path):
    ann, images = write_coco(tmp_path, n=2)
    with pytest.raises(SwdetError, match=r"ann.json: category ids \[1, 3, 7\] do not match the model's \[1, 2, 3\]"):
        evaluate_runtime(Oracle(ann, images), ann, images, imgsz=IMGSZ, category_ids=[1, 2, 3], progress=False)


def test_predict_uses_core_preprocessing(tmp_path):
    """``swdet predict`` records: original-image boxes (x, y, w, h) and dataset ids through the
    core mapping; an unreadable file is skipped and listed."""
    from swdet.predict import predict_files
    from swdet.preprocess import prepare_batch

    _, images = write_coco(tmp_path, n=3)
    (images / "z_broken.png").write_bytes(b"not an image")

    class Rt:
        imgsz, class_names, category_ids = IMGSZ, CLASS_NAMES, CATEGORY_IDS

        def infer(self, x):  # one box covering the canvas' top-left quarter, class 1
            b = len(x)
            return {"num_dets": np.ones((b, 1), np.int32),
                    "det_boxes": np.tile(np.array([[[0, 0, IMGSZ / 2, IMGSZ / 2]]], np.float32), (b, 1, 1)),
                    "det_scores": np.full((b, 1), 0.5, np.float32), "det_classes": np.ones((b, 1), np.int32)}

    out = tmp_path / "dets.json"
    summary = predict_files(Rt(), [images], out, batch_size=2, progress=False)
    assert summary["images"] == 3 and summary["skipped_files"] == [str(images / "z_broken.png")]
    recs = json.loads(out.read_text())
    batch = prepare_batch([images / "0.png"], IMGSZ)
    side = IMGSZ / 2 / batch.letterboxes[0].scale  # the canvas quarter in original pixels
    first = recs[0]
    assert first["file"] == str(images / "0.png") and first["category_id"] == CATEGORY_IDS[1]
    assert first["category"] == CLASS_NAMES[1] and first["score"] == pytest.approx(0.5)
    assert first["bbox"] == pytest.approx([0, 0, min(side, 96), min(side, 72)])
