"""Host pre/post-processing shared by all runtimes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from test_serve_helpers import CATEGORY_IDS, CLASS_NAMES, write_image

from swdet.data.image import ImageDecodeError
from swdet.data.letterbox import Letterbox
from swdet.inference import letterbox_batch
from swdet.preprocess import Preprocessor, map_detections, prepare_batch


def test_every_input_kind_gives_the_same_canvas(tmp_path):
    path = write_image(tmp_path / "a.png", 96, 48)
    pil = Image.open(path).convert("RGB")
    data = path.read_bytes()
    arr = np.asarray(pil)
    ref, ref_lb = letterbox_batch([pil], 64)
    with Preprocessor(64, workers=2) as pre:
        batch = pre([path, str(path), data, pil, arr])
    assert batch.images.shape == (5, 3, 64, 64) and batch.images.dtype == np.uint8
    for i in range(5):
        np.testing.assert_array_equal(batch.images[i], ref[0])
        assert batch.letterboxes[i] == ref_lb[0]
    assert batch.names[0] == str(path) and batch.names[2] == "<image 2>"


def test_bad_image_raises_or_is_skipped(tmp_path):
    good = write_image(tmp_path / "good.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(good.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(ImageDecodeError, match=r"bad.jpg: truncated"):
        prepare_batch([good, bad], 64, workers=2)
    batch = prepare_batch([good, bad, b"not an image"], 64, workers=2, on_error="skip")
    assert len(batch) == 1 and batch.names == [str(good)]
    assert [n for n, _ in batch.failed] == [str(bad), "<image 2>"]
    assert "not an image file" in batch.failed[1][1]
    empty = prepare_batch([bad], 64, on_error="skip")
    assert empty.images.shape == (0, 3, 64, 64)
    with pytest.raises(ImageDecodeError, match="expected an HxWx3 RGB array"):
        prepare_batch([np.zeros((4, 4, 4), np.uint8)], 64)


def test_map_detections_to_original_pixels_and_dataset_ids():
    lbs = [Letterbox.fit(480, 640, 64), Letterbox.fit(100, 50, 64)]  # scales 0.1 and 0.64
    outputs = {
        "num_dets": np.array([[2], [0]], np.int32),
        "det_boxes": np.array([[[1, 2, 11, 22], [0, 0, 64, 64], [9, 9, 9, 9]], np.zeros((3, 4))], np.float32),
        "det_scores": np.array([[0.9, 0.5, 0.0], [0, 0, 0]], np.float32),
        "det_classes": np.array([[2, 0, 0], [0, 0, 0]], np.int32),
    }
    dets = map_detections(outputs, lbs, CLASS_NAMES, CATEGORY_IDS)
    assert len(dets) == 2 and len(dets[1]) == 0
    d = dets[0]
    np.testing.assert_allclose(d.boxes, [[10, 20, 110, 220], [0, 0, 640, 480]], atol=1e-4)  # clipped to 640x480
    assert d.category_ids.tolist() == [7, 1] and d.names == ["bird", "cat"]
    rec = d.to_records(file="x.jpg")[0]
    assert rec["file"] == "x.jpg" and rec["category_id"] == 7 and rec["bbox"] == pytest.approx([10, 20, 100, 200])
    outputs["det_classes"][0, 0] = 5
    with pytest.raises(Exception, match="class index 5 outside the model's 3 classes"):
        map_detections(outputs, lbs, CLASS_NAMES, CATEGORY_IDS)


def test_encoded_bytes_round_trip_matches_load_image(tmp_path):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 70, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    a = prepare_batch([buf.getvalue()], 32, workers=0).images
    p = tmp_path / "x.png"
    p.write_bytes(buf.getvalue())
    np.testing.assert_array_equal(a, prepare_batch([p], 32, workers=0).images)
