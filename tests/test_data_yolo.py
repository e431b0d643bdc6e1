"""YOLO -> COCO conversion (swdet.data.yolo) and the `data from-yolo` command."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from swdet.data import CocoDetection, DataWarning, convert_yolo, read_names
from swdet.cli.data import data as data_cli
from swdet.errors import SwdetError


def _img(path: Path, w: int, h: int, exif_orientation: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    kw = {}
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kw["exif"] = exif.tobytes()
    Image.new("RGB", (w, h), (90, 90, 90)).save(path, quality=90, **kw)


@pytest.fixture
def yolo(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    _img(images / "a.jpg", 200, 100)
    _img(images / "sub" / "b.png", 50, 40)
    _img(images / "c.jpg", 64, 64)  # no label file
    labels.mkdir()
    (labels / "a.txt").write_text("0 0.5 0.5 0.2 0.4\n1 0.05 0.1 0.2 0.4\n\n")
    (labels / "sub").mkdir()
    (labels / "sub" / "b.txt").write_text("2 0 0 0.5 0 0.5 1 0 1\n")  # polygon line
    return images, labels


def _load(path):
    return json.loads(Path(path).read_text())


def test_convert_basic(yolo, tmp_path):
    images, labels = yolo
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        s = convert_yolo(images, labels, ["cat", "dog", "fish"], tmp_path / "out" / "ann.json")
    assert s["images"] == 3 and s["annotations"] == 3 and s["images_without_labels"] == 1 and s["skipped_lines"] == 0
    d = _load(tmp_path / "out" / "ann.json")
    assert [c["id"] for c in d["categories"]] == [1, 2, 3]
    assert [c["name"] for c in d["categories"]] == ["cat", "dog", "fish"]
    files = {im["file_name"]: im for im in d["images"]}
    assert set(files) == {"a.jpg", "c.jpg", "sub/b.png"}
    assert (files["a.jpg"]["width"], files["a.jpg"]["height"]) == (200, 100)
    by_img = {}
    for a in d["annotations"]:
        by_img.setdefault(a["image_id"], []).append(a)
    a_anns = by_img[files["a.jpg"]["id"]]
    np.testing.assert_allclose(a_anns[0]["bbox"], [80, 30, 40, 40])
    assert a_anns[0]["category_id"] == 1
    # second box sticks out of the top-left corner: clipped to the image
    np.testing.assert_allclose(a_anns[1]["bbox"], [0, 0, 30, 30])
    assert a_anns[1]["category_id"] == 2
    b_anns = by_img[files["sub/b.png"]["id"]]
    np.testing.assert_allclose(b_anns[0]["bbox"], [0, 0, 25, 40])  # polygon -> its box
    assert files["c.jpg"]["id"] not in by_img


def test_converted_json_loads_as_dataset(yolo, tmp_path):
    images, labels = yolo
    convert_yolo(images, labels, ["cat", "dog", "fish"], tmp_path / "ann.json")
    ds = CocoDetection(tmp_path / "ann.json", images, imgsz=100)
    assert ds.load_report == {} and len(ds) == 3
    _, t = ds[ds.image_ids.index(1)]
    assert t["boxes"].shape == (2, 4)


def test_malformed_lines_are_counted_per_kind(yolo, tmp_path):
    images, labels = yolo
    (labels / "a.txt").write_text(
        "0 0.5 0.5 0.2 0.4\n"  # good
        "0 0.5 0.5 0.2\n"  # wrong number of values
        "1 0.5 0.5 0.2 0.2 0.9\n"  # wrong number of values
        "x 0.5 0.5 0.2 0.2\n"  # non-numeric
        "7 0.5 0.5 0.2 0.2\n"  # class out of range
        "1.5 0.5 0.5 0.2 0.2\n"  # class not an integer
        "0 0.5 0.5 0 0.2\n"  # zero size
        "0 1.5 1.5 0.2 0.2\n"  # outside
    )
    with pytest.warns(DataWarning) as rec:
        s = convert_yolo(images, labels, ["cat", "dog", "fish"], tmp_path / "ann.json")
    msgs = [str(w.message) for w in rec]
    assert s["skipped_lines"] == 7 and s["annotations"] == 2
    assert any("skipped 2 label lines with a wrong number of values" in m and "a.txt:2" in m for m in msgs)
    assert any("skipped 1 label lines with non-numeric" in m and "a.txt:4" in m for m in msgs)
    assert any("skipped 2 label lines with a class id that is not an integer in 0..2" in m and "a.txt:5" in m
               for m in msgs)
    assert any("zero or negative box size" in m and "a.txt:7" in m for m in msgs)
    assert any("entirely outside the image" in m and "a.txt:8" in m for m in msgs)
    assert len(msgs) == 5


def test_exif_rotated_image_size_is_display_size(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    _img(images / "r.jpg", 60, 30, exif_orientation=6)
    labels.mkdir()
    (labels / "r.txt").write_text("0 0.5 0.5 1 1\n")
    convert_yolo(images, labels, ["x"], tmp_path / "ann.json")
    d = _load(tmp_path / "ann.json")
    assert (d["images"][0]["width"], d["images"][0]["height"]) == (30, 60)
    np.testing.assert_allclose(d["annotations"][0]["bbox"], [0, 0, 30, 60])


def test_unreadable_image_and_orphan_label_reported(yolo, tmp_path):
    images, labels = yolo
    (images / "broken.jpg").write_bytes(b"nope")
    (labels / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.warns(DataWarning) as rec:
        s = convert_yolo(images, labels, ["cat", "dog", "fish"], tmp_path / "ann.json")
    msgs = " | ".join(str(w.message) for w in rec)
    assert s["images"] == 3 and s["skipped_images"] == 1
    assert "broken.jpg" in msgs and "ghost.txt" in msgs


def test_names_sources(tmp_path):
    (tmp_path / "data.yaml").write_text("names: [a, b]\n")
    assert read_names(tmp_path / "data.yaml") == ["a", "b"]
    (tmp_path / "map.yaml").write_text("names:\n  0: x\n  1: y\n  2: z\n")
    assert read_names(str(tmp_path / "map.yaml")) == ["x", "y", "z"]
    (tmp_path / "names.txt").write_text("one\ntwo\n\n")
    assert read_names(tmp_path / "names.txt") == ["one", "two"]
    assert read_names("p, q,r") == ["p", "q", "r"]
    with pytest.raises(SwdetError, match="names file not found"):
        read_names(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("names: [a, b\n")
    with pytest.raises(SwdetError, match=r"bad\.yaml: invalid YAML"):
        read_names(tmp_path / "bad.yaml")
    with pytest.raises(SwdetError, match="duplicate"):
        read_names(["a", "a"])


def test_missing_folders(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(SwdetError, match=r"nolabels: label directory not found"):
        convert_yolo(tmp_path / "images", tmp_path / "nolabels", ["a"], tmp_path / "o.json")
    with pytest.raises(SwdetError, match=r"noimages: image directory not found"):
        convert_yolo(tmp_path / "noimages", tmp_path / "images", ["a"], tmp_path / "o.json")
    with pytest.raises(SwdetError, match="no images found"):
        convert_yolo(tmp_path / "images", tmp_path / "images", ["a"], tmp_path / "o.json")


def test_cli_from_yolo(yolo, tmp_path):
    images, labels = yolo
    (tmp_path / "names.txt").write_text("cat\ndog\nfish\n")
    res = CliRunner().invoke(data_cli, ["from-yolo", str(images), str(labels), "--names", str(tmp_path / "names.txt"),
                                        "--out", str(tmp_path / "ann.json")])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"wrote {tmp_path / 'ann.json'}: 3 images (1 without labels), 3 boxes, 3 classes"
    res = CliRunner().invoke(data_cli, ["from-yolo", str(images), str(labels), "--names", "cat,dog,fish",
                                        "--out", str(tmp_path / "ann2.json")])
    assert res.exit_code == 0 and _load(tmp_path / "ann2.json")["categories"][2]["name"] == "fish"
    help_text = CliRunner().invoke(data_cli, ["from-yolo", "--help"]).output
    assert "Example" in help_text and "swdet data from-yolo" in help_text
