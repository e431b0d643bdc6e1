"""COCO dataset (swdet.data.coco): load-time validation, bad images, targets, augmentation."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import COCO128, NO_COCO128

from swdet.data import CocoDetection, DataWarning, build_loader, iterate_batches
from swdet.errors import SwdetError

REPO = Path(__file__).resolve().parents[1]

CATS = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 1, "name": "bird"}]


def make_images(root: Path, n: int, size=(80, 60)) -> list[dict]:
    root.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(n):
        w, h = size
        arr = np.full((h, w, 3), (i * 37) % 256, dtype=np.uint8)
        Image.fromarray(arr).save(root / f"im{i}.jpg", quality=90)
        images.append({"id": i + 1, "file_name": f"im{i}.jpg", "width": w, "height": h})
    return images


def write_ann(path: Path, images, anns, cats=CATS) -> Path:
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def ann(aid, image_id=1, cat=3, bbox=(10, 10, 20, 15), **kw):
    return {"id": aid, "image_id": image_id, "category_id": cat, "bbox": list(bbox), "area": 1.0, "iscrowd": 0, **kw}


@pytest.fixture
def images_dir(tmp_path):
    return tmp_path / "images"


def load(tmp_path, images, anns, **kw):
    p = write_ann(tmp_path / "instances_test.json", images, anns)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoDetection(p, tmp_path / "images", imgsz=kw.pop("imgsz", 64), **kw)
    msgs = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    return ds, msgs


# ----------------------------------------------------------------------------- good input
def test_category_mapping_and_targets(tmp_path, images_dir):
    images = make_images(images_dir, 2, size=(80, 60))
    anns = [ann(1, 1, 7, (8, 4, 40, 20)), ann(2, 1, 1, (0, 0, 10, 10)), ann(3, 2, 3, (60, 50, 20, 10))]
    ds, msgs = load(tmp_path, images, anns, imgsz=64)
    assert msgs == []
    assert ds.category_ids == [1, 3, 7] and ds.class_names == ["bird", "cat", "dog"]
    assert ds.cat_id_to_label == {1: 0, 3: 1, 7: 2}
    img, t = ds[0]
    assert img.dtype == torch.uint8 and img.shape == (3, 64, 64)
    assert t["boxes"].dtype == torch.float32 and t["labels"].dtype == torch.int64
    s = 64 / 80
    assert t["scale"] == pytest.approx(s)
    torch.testing.assert_close(t["boxes"], torch.tensor([[8, 4, 48, 24], [0, 0, 10, 10]], dtype=torch.float32) * s)
    assert t["labels"].tolist() == [2, 0]
    assert t["image_id"] == 1 and t["orig_size"] == (60, 80) and t["file"].endswith("im0.jpg")
    # padding below the 48-row image content
    assert int(img[0, 60, 10]) == 114 and int(img[0, 10, 10]) == 0
    b, lab = ds.gt_boxes(1)
    np.testing.assert_allclose(b, [[60 * s, 50 * s, 80 * s, 60 * s]], rtol=1e-6)
    assert lab.tolist() == [1]


def test_image_without_boxes_gives_empty_target(tmp_path, images_dir):
    images = make_images(images_dir, 2)
    ds, _ = load(tmp_path, images, [ann(1, 1)], train=True)
    _, t = ds[1]
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)


# ----------------------------------------------------------------------------- bad annotations
def test_annotation_pointing_to_no_image(tmp_path, images_dir):
    images = make_images(images_dir, 1)
    ds, msgs = load(tmp_path, images, [ann(1, 1), ann(17, 99)])
    assert ds.load_report == {"no_image": 1}
    assert msgs == ["instances_test.json: skipped 1 annotations pointing to no image (e.g. id 17)"]
    assert len(ds[0][1]["boxes"]) == 1


def test_zero_size_boxes_one_counted_warning(tmp_path, images_dir):
    images = make_images(images_dir, 1)
    anns = [ann(1), ann(17, bbox=(5, 5, 0, 10)), ann(18, bbox=(5, 5, 10, 0)), ann(19, bbox=(1, 1, 0, 0))]
    ds, msgs = load(tmp_path, images, anns)
    assert ds.load_report == {"zero_size": 3}
    assert msgs == ["instances_test.json: skipped 3 annotations with zero-size boxes (e.g. id 17)"]
    assert len(ds[0][1]["boxes"]) == 1


def test_negative_size_boxes(tmp_path, images_dir):
    images = make_images(images_dir, 1)
    ds, msgs = load(tmp_path, images, [ann(1), ann(5, bbox=(30, 30, -10, 5))])
    assert ds.load_report == {"negative_size": 1}
    assert "negative-size boxes (e.g. id 5)" in msgs[0]
    assert len(ds[0][1]["boxes"]) == 1


def test_nan_boxes(tmp_path, images_dir):
    images = make_images(images_dir, 1)
    p = tmp_path / "instances_test.json"
    p.write_text('{"images": %s, "annotations": [{"id": 4, "image_id": 1, "category_id": 3, '
                 '"bbox": [NaN, 1, 2, 3]}, {"id": 5, "image_id": 1, "category_id": 3, "bbox": [1, 1, Infinity, 3]}], '
                 '"categories": %s}' % (json.dumps(images), json.dumps(CATS)))
    with pytest.warns(DataWarning, match=r"skipped 2 annotations with NaN or infinite boxes \(e.g. id 4\)"):
        ds = CocoDetection(p, images_dir, imgsz=64)
    assert ds.load_report == {"nonfinite": 2}
    assert len(ds[0][1]["boxes"]) == 0


def test_box_entirely_outside_is_dropped(tmp_path, images_dir):
    images = make_images(images_dir, 1, size=(80, 60))
    ds, msgs = load(tmp_path, images, [ann(1), ann(8, bbox=(100, 10, 10, 10)), ann(9, bbox=(-30, -30, 10, 10))])
    assert ds.load_report == {"outside": 2}
    assert "entirely outside the image (e.g. id 8)" in msgs[0]
    assert len(ds[0][1]["boxes"]) == 1


def test_box_partly_outside_is_clipped(tmp_path, images_dir):
    images = make_images(images_dir, 1, size=(80, 60))
    ds, msgs = load(tmp_path, images, [ann(3, bbox=(70, -5, 30, 20))], imgsz=80)
    assert ds.load_report == {"clipped": 1}
    assert "clipped 1 boxes" in msgs[0] and "id 3" in msgs[0]
    torch.testing.assert_close(ds[0][1]["boxes"], torch.tensor([[70.0, 0.0, 80.0, 15.0]]))
    assert ds.coco.anns[3]["bbox"] == [70.0, 0.0, 10.0, 15.0]


def test_rounding_overshoot_is_clipped_silently(tmp_path, images_dir):
    images = make_images(images_dir, 1, size=(80, 60))
    ds, msgs = load(tmp_path, images, [ann(3, bbox=(40, 30, 40.4, 30.3))], imgsz=80)
    assert msgs == [] and ds.load_report == {}
    assert ds[0][1]["boxes"].max().item() <= 80


def test_unknown_category(tmp_path, images_dir):
    images = make_images(images_dir, 1)
    ds, msgs = load(tmp_path, images, [ann(1), ann(2, cat=42), ann(6, cat=43)])
    assert ds.load_report == {"unknown_category": 2}
    assert msgs == ["instances_test.json: skipped 2 annotations with unknown category ids (e.g. id 2)"]


def test_malformed_bbox(tmp_path, images_dir):
    images = make_images(images_dir, 1)
    ds, msgs = load(tmp_path, images, [ann(1), {"id": 2, "image_id": 1, "category_id": 3, "bbox": [1, 2, 3]},
                                       {"id": 3, "image_id": 1, "category_id": 3, "bbox": ["a", 1, 2, 3]}, "junk"])
    assert ds.load_report == {"malformed": 3}
    assert len(ds[0][1]["boxes"]) == 1


def test_duplicate_image_ids(tmp_path, images_dir):
    images = make_images(images_dir, 2)
    images[1]["id"] = 1  # second entry repeats id 1
    ds, msgs = load(tmp_path, images, [ann(1, 1)])
    assert len(ds) == 1
    assert ds.load_report == {"duplicate_image": 1}
    assert msgs == ["instances_test.json: skipped 1 image entries with duplicate image ids (e.g. image id 1)"]


def test_crowd_boxes_ignored_for_training_but_kept_for_eval(tmp_path, images_dir):
    images = make_images(images_dir, 1)
    ds, msgs = load(tmp_path, images, [ann(1), ann(2, iscrowd=1)], train=True, hflip=0.0, scale_jitter=(1, 1))
    assert ds.load_report == {"crowd": 1}
    assert "ignored 1 crowd annotations" in msgs[0]
    assert len(ds[0][1]["boxes"]) == 1
    assert ds.coco.getAnnIds(imgIds=[1], iscrowd=None) == [1, 2]


def test_several_kinds_each_one_warning(tmp_path, images_dir):
    images = make_images(images_dir, 1)
    anns = [ann(1), ann(2, 50), ann(3, 60), ann(4, cat=99), ann(5, bbox=(1, 1, 0, 2))]
    ds, msgs = load(tmp_path, images, anns)
    assert ds.load_report == {"no_image": 2, "unknown_category": 1, "zero_size": 1}
    assert len(msgs) == 3 and ds.problems == msgs


def test_missing_width_height_read_from_file(tmp_path, images_dir):
    images = make_images(images_dir, 1, size=(80, 60))
    del images[0]["width"], images[0]["height"]
    ds, msgs = load(tmp_path, images, [ann(1)])
    assert ds.image_info(0)["width"] == 80 and ds.load_report == {"image_size": 1}


# ----------------------------------------------------------------------------- fatal input
def test_json_syntax_error(tmp_path, images_dir):
    make_images(images_dir, 1)
    p = tmp_path / "broken.json"
    p.write_text('{"images": [\n  {"id": 1,, }\n]}')
    with pytest.raises(SwdetError, match=r"broken\.json: invalid JSON at line 2 column"):
        CocoDetection(p, images_dir)


def test_no_annotations_key(tmp_path, images_dir):
    images = make_images(images_dir, 1)
    p = tmp_path / "a.json"
    p.write_text(json.dumps({"images": images, "categories": CATS}))
    with pytest.raises(SwdetError, match=r"a\.json: no 'annotations' key"):
        CocoDetection(p, images_dir)


@pytest.mark.parametrize("images", [[], None])
def test_no_images(tmp_path, images_dir, images):
    make_images(images_dir, 1)
    body = {"annotations": [], "categories": CATS}
    if images is not None:
        body["images"] = images
    p = tmp_path / "a.json"
    p.write_text(json.dumps(body))
    with pytest.raises(SwdetError, match=r"a\.json: no images"):
        CocoDetection(p, images_dir)


def test_no_categories(tmp_path, images_dir):
    images = make_images(images_dir, 1)
    p = write_ann(tmp_path / "a.json", images, [], cats=[])
    with pytest.raises(SwdetError, match="no categories"):
        CocoDetection(p, images_dir)


def test_top_level_not_an_object(tmp_path, images_dir):
    make_images(images_dir, 1)
    p = tmp_path / "a.json"
    p.write_text("[1, 2]")
    with pytest.raises(SwdetError, match="top level is a list"):
        CocoDetection(p, images_dir)


def test_missing_image_dir(tmp_path):
    p = write_ann(tmp_path / "a.json", [{"id": 1, "file_name": "x.jpg", "width": 5, "height": 5}], [])
    with pytest.raises(SwdetError, match=r"nowhere: image directory not found"):
        CocoDetection(p, tmp_path / "nowhere")


def test_missing_annotation_file(tmp_path, images_dir):
    make_images(images_dir, 1)
    with pytest.raises(SwdetError, match=r"missing\.json: annotation file not found"):
        CocoDetection(tmp_path / "missing.json", images_dir)


# ----------------------------------------------------------------------------- bad images
def _break(images_dir: Path, i: int, how: str) -> None:
    p = images_dir / f"im{i}.jpg"
    if how == "corrupt":
        p.write_bytes(b"not a jpeg")
    elif how == "truncated":
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif how == "missing":
        p.unlink()


def _noisy_images(images_dir: Path, n: int) -> list[dict]:
    """Noise images: big enough JPEGs that cutting one in half really truncates its scan."""
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(images_dir / f"im{i}.jpg")
        out.append({"id": i + 1, "file_name": f"im{i}.jpg", "width": 80, "height": 60})
    return out


@pytest.mark.parametrize("how", ["corrupt", "truncated", "missing"])
def test_bad_image_is_skipped_and_counted(tmp_path, images_dir, how):
    images = _noisy_images(images_dir, 4)
    ds, _ = load(tmp_path, images, [ann(1, 2)], train=True)
    _break(images_dir, 1, how)
    with pytest.warns(DataWarning, match=r"im1\.jpg: .*skipped"):
        img, t = ds[1]
    assert t["image_id"] == 3  # deterministic replacement: the next image
    assert ds.skipped_images == 1 and ds.images_tried == 2
    with pytest.warns(DataWarning):
        assert ds[1][1]["image_id"] == 3  # same again
    assert ds.skipped_images == 2


def test_bad_image_in_evaluation_gives_blank_flagged_sample(tmp_path, images_dir):
    images = _noisy_images(images_dir, 3)
    ds, _ = load(tmp_path, images, [ann(1, 2)], imgsz=64)
    _break(images_dir, 1, "truncated")
    with pytest.warns(DataWarning, match=r"im1\.jpg: truncated"):
        img, t = ds[1]
    assert t["image_id"] == 2 and t["unreadable"] is True and t["boxes"].shape == (0, 4)
    assert bool((img == 114).all()) and t["orig_size"] == (60, 80)
    assert ds.skipped_images == 1
    assert ds[0][1]["unreadable"] is False


def test_most_images_unreadable_raises(tmp_path, images_dir):
    images = make_images(images_dir, 24)
    ds, _ = load(tmp_path, images, [])
    for i in range(6, 24):
        _break(images_dir, i, "corrupt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        with pytest.raises(SwdetError, match="most images unreadable"):
            for i in range(24):
                ds[i]


def test_unreadable_error_from_worker_is_one_line(tmp_path, images_dir):
    images = make_images(images_dir, 24)
    ds, _ = load(tmp_path, images, [], train=True)
    for i in range(24):
        _break(images_dir, i, "corrupt")
    loader = build_loader(ds, 4, train=True, workers=1, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        with pytest.raises(SwdetError) as info:
            next(iter(iterate_batches(loader)))
    msg = str(info.value)
    assert "most images unreadable" in msg and "Traceback" not in msg and msg.startswith(str(images_dir))


def test_skipped_counter_visible_across_workers(tmp_path, images_dir):
    images = _noisy_images(images_dir, 8)
    ds, _ = load(tmp_path, images, [], train=True)
    _break(images_dir, 5, "truncated")
    loader = build_loader(ds, 4, train=True, workers=2, seed=0)
    stream = iterate_batches(loader)
    ids = []
    for k, (epoch, (imgs, targets)) in enumerate(stream):
        ids += [t["image_id"] for t in targets]
        if k == 1:
            break
    assert ds.skipped_images == 1
    assert 6 not in ids and len(ids) == 8


def test_validate_images_full_drops_truncated_at_load(tmp_path, images_dir):
    images = _noisy_images(images_dir, 3)
    _break(images_dir, 0, "truncated")
    _break(images_dir, 2, "corrupt")
    ds, msgs = load(tmp_path, images, [ann(1, 1), ann(2, 2)], validate_images="full")
    assert len(ds) == 1 and ds.image_ids == [2]
    assert ds.load_report == {"unreadable": 2}
    assert "skipped 2 unreadable images" in msgs[0] and "im0.jpg" in msgs[0]


def test_validate_images_header_catches_non_images_only(tmp_path, images_dir):
    images = _noisy_images(images_dir, 3)
    _break(images_dir, 0, "truncated")  # header intact: not found by the cheap check
    _break(images_dir, 2, "missing")
    ds, _ = load(tmp_path, images, [], validate_images="header")
    assert ds.image_ids == [1, 2]


# ----------------------------------------------------------------------------- augmentation
def _aug_dataset(tmp_path, images_dir, **kw):
    images = make_images(images_dir, 3, size=(100, 50))
    anns = [ann(1, 1, 3, (10, 5, 20, 10)), ann(2, 1, 7, (60, 20, 30, 25)), ann(3, 2, 1, (0, 0, 100, 50))]
    ds, _ = load(tmp_path, images, anns, imgsz=64, train=True, **kw)
    return ds


def test_hflip_mirrors_boxes(tmp_path, images_dir):
    ds = _aug_dataset(tmp_path, images_dir, hflip=1.0, scale_jitter=(1.0, 1.0))
    _, t = ds[0]
    s = 64 / 100
    expected = torch.tensor([[70, 5, 90, 15], [10, 20, 40, 45]], dtype=torch.float32) * s
    torch.testing.assert_close(t["boxes"], expected)


def test_augmentation_is_deterministic_per_epoch_and_index(tmp_path, images_dir):
    ds = _aug_dataset(tmp_path, images_dir)
    a = ds[(3, 0)]
    b = ds[(3, 0)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    ds.set_epoch(3)
    c = ds[0]
    assert torch.equal(a[0], c[0])
    scales = {ds[(e, 0)][1]["scale"] for e in range(8)}
    assert len(scales) == 8  # a new draw every epoch


def test_scale_jitter_and_crop_keep_boxes_in_canvas(tmp_path, images_dir):
    ds = _aug_dataset(tmp_path, images_dir, scale_jitter=(0.5, 2.0))
    fit = 64 / 100
    seen_big = False
    for e in range(30):
        for i in range(3):
            img, t = ds[(e, i)]
            assert img.shape == (3, 64, 64)
            s = t["scale"]
            assert 0.5 * fit - 1e-9 <= s <= 2.0 * fit + 1e-9
            b = t["boxes"]
            if len(b):
                assert b.min() >= 0 and b.max() <= 64
                assert ((b[:, 2] - b[:, 0]) >= 2).all() and ((b[:, 3] - b[:, 1]) >= 2).all()
            seen_big |= s > 1.5 * fit
    assert seen_big


def test_boxes_cut_below_min_visible_are_dropped(tmp_path, images_dir):
    # 100x50 image at scale 2*fit = 1.28 -> 128x64 content in a 64 canvas, crop offset
    # ox = floor(u2 * 64) with u = default_rng([seed, epoch, index]).random(4) (documented).
    images = make_images(images_dir, 1, size=(100, 50))
    ds, _ = load(tmp_path, images, [ann(1, 1, 3, (80, 10, 20, 20))], imgsz=64, train=True,
                 hflip=0.0, scale_jitter=(2.0, 2.0), seed=11)
    s = 1.28
    kept = dropped = 0
    for e in range(40):
        _, t = ds[(e, 0)]
        u = np.random.default_rng([11, e, 0]).random(4)
        ox = int(u[2] * (128 - 64))
        x1, x2 = max(80 * s - ox, 0.0), min(100 * s - ox, 64.0)
        visible = x2 - x1
        if visible >= 0.3 * 20 * s and visible >= 2:
            kept += 1
            torch.testing.assert_close(t["boxes"], torch.tensor([[x1, 10 * s, x2, 30 * s]], dtype=torch.float32))
        else:
            dropped += 1
            assert t["boxes"].shape == (0, 4)
    assert kept and dropped


def test_eval_mode_has_no_randomness(tmp_path, images_dir):
    images = make_images(images_dir, 1, size=(100, 50))
    ds, _ = load(tmp_path, images, [ann(1, 1, 3, (10, 5, 20, 10))], imgsz=64)
    a, b = ds[(0, 0)], ds[(5, 0)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    assert a[1]["scale"] == pytest.approx(0.64)


# ----------------------------------------------------------------------------- real photos
@pytest.mark.skipif(not COCO128.is_dir(), reason=NO_COCO128)
def test_coco128_val_loads_and_boxes_inside_canvas():
    ds = CocoDetection(COCO128 / "annotations" / "instances_val2017.json", COCO128 / "val2017", imgsz=320)
    assert len(ds) == 128 and ds.num_classes == 80 and ds.category_ids[-1] == 90
    nboxes = 0
    for i in range(len(ds)):
        img, t = ds[i]
        assert img.shape == (3, 320, 320)
        h, w = t["orig_size"]
        assert t["scale"] == pytest.approx(320 / max(h, w))
        b = t["boxes"]
        nboxes += len(b)
        if len(b):
            assert b.min() >= 0
            assert (b[:, 2] <= w * t["scale"] + 1e-3).all() and (b[:, 3] <= h * t["scale"] + 1e-3).all()
            assert ((b[:, 2:] - b[:, :2]) > 0).all()
            assert int(t["labels"].max()) < 80
    assert ds.skipped_images == 0
    assert nboxes == len(ds.coco.getAnnIds(iscrowd=False))
    # training view of a few images: boxes stay inside the canvas
    train = CocoDetection(COCO128 / "annotations" / "instances_val2017.json", COCO128 / "val2017", imgsz=320, train=True)
    for i in range(0, 128, 16):
        _, t = train[(1, i)]
        if len(t["boxes"]):
            assert t["boxes"].min() >= 0 and t["boxes"].max() <= 320
