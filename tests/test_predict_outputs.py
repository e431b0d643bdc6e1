"""``swdet predict``: unique drawing names (inputs with the same file name in different folders),
one prediction per path however often it is given, and a drawing threshold of its own."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops

from swdet.predict import DRAW_THRESHOLD, drawing_names, predict_files


def test_same_file_names_in_two_folders_through_the_command(tiny_run, synth_data, tmp_path):
    src = sorted((synth_data / "val").iterdir())[:2]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(src[0], tmp_path / "a" / "x.jpg")
    shutil.copy(src[1], tmp_path / "b" / "x.jpg")
    out, drawn = tmp_path / "p.json", tmp_path / "drawn"
    a, b = str(tmp_path / "a" / "x.jpg"), str(tmp_path / "b" / "x.jpg")
    res = subprocess.run([shutil.which("swdet"), "predict", str(tiny_run), a, b, a, str(tmp_path / "a"), "--out",
                          str(out), "--save-images", str(drawn), "--quiet", "--device", "cpu",
                          "--batch-size", "2"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "in 2 images" in res.stdout  # a given twice and inside a given folder: predicted once
    assert sorted(p.relative_to(drawn).as_posix() for p in drawn.rglob("*.jpg")) == ["a/x.jpg", "b/x.jpg"]
    files = {r["file"] for r in json.loads(out.read_text())}
    assert files <= {a, b}


def test_drawing_names_are_unique():
    names = drawing_names([Path(p) for p in ("/d/a/x.jpg", "/d/b/x.jpg", "/d/a/x.png",
                                                                    "/d/a/y.jpg")])
    assert [n.as_posix() for n in names.values()] == ["a/x.jpg.jpg", "b/x.jpg", "a/x.png.jpg", "a/y.jpg"]
    one = drawing_names([Path("/d/photos/p.jpg")])
    assert [n.as_posix() for n in one.values()] == ["p.jpg"]


def test_drawing_threshold_is_separate_from_the_detection_threshold(tmp_path):
    img = tmp_path / "in" / "im.png"
    img.parent.mkdir()
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(img)

    class Rt:  # one weak detection (0.1): in the JSON, not in the default drawing
        imgsz, class_names, category_ids = 64, ["a"], [1]

        def infer(self, x):
            b = len(x)
            return {"num_dets": np.ones((b, 1), np.int32),
                    "det_boxes": np.tile(np.array([[[8, 8, 40, 40]]], np.float32), (b, 1, 1)),
                    "det_scores": np.full((b, 1), 0.1, np.float32), "det_classes": np.zeros((b, 1), np.int32)}

    def drawing(threshold, name):
        folder = tmp_path / name
        s = predict_files(Rt(), [img], tmp_path / f"{name}.json", save_images=folder, progress=False,
                          draw_threshold=threshold)
        assert s["detections"] == 1  # the JSON keeps every detection
        return Image.open(folder / "im.jpg").convert("RGB")

    assert DRAW_THRESHOLD == 0.3
    default, nothing, everything = drawing(DRAW_THRESHOLD, "d"), drawing(1.0, "n"), drawing(0.0, "e")
    assert ImageChops.difference(default, nothing).getbbox() is None
    assert ImageChops.difference(default, everything).getbbox() is not None
