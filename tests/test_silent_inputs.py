"""Inputs that used to give silent wrong results now fail with one line or warn with a count:
an empty ``annotations`` list, image folders whose sizes disagree with the annotation file."""

from __future__ import annotations

import json
import shutil
import subprocess

from PIL import Image

from conftest import TINY_TRAIN


def _swdet(*args):
    exe = shutil.which("swdet")
    assert exe, "the swdet console script is not on PATH"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=600)


def _one_line(res, status=2):
    assert res.returncode == status, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, res.stderr
    return lines[0]


def _copy_without_boxes(src, dst, splits):
    shutil.copytree(src, dst)
    for split in splits:
        f = dst / "annotations" / f"instances_{split}.json"
        data = json.loads(f.read_text())
        data["annotations"] = []
        f.write_text(json.dumps(data))


def test_training_on_zero_boxes_is_an_error(synth_data, tmp_path):
    data = tmp_path / "d"
    _copy_without_boxes(synth_data, data, ["train"])
    line = _one_line(_swdet("train", "--data", str(data), "--iters", "2", "--out", str(tmp_path / "r"), *TINY_TRAIN))
    assert "instances_train.json: no boxes to train on" in line and "empty" in line


def test_eval_of_a_split_without_boxes_says_so(tiny_run, synth_data, tmp_path):
    data = tmp_path / "d"
    _copy_without_boxes(synth_data, data, ["val"])
    res = _swdet("eval", str(tiny_run), "--data", str(data), "--device", "cpu", "--quiet")
    line = _one_line(res)
    assert "instances_val.json: no boxes to evaluate against" in line and "-1" not in res.stdout


def _resized_copy(src, dst, files):
    shutil.copytree(src, dst)
    for name in files:
        with Image.open(dst / name) as im:
            small = im.resize((im.width // 2 + 1, im.height // 2 + 1))
        small.save(dst / name)


def test_eval_on_a_folder_of_other_sizes_is_an_error(tiny_run, synth_data, tmp_path):
    ann = synth_data / "annotations" / "instances_val.json"
    files = [im["file_name"] for im in json.loads(ann.read_text())["images"]]
    _resized_copy(synth_data / "val", tmp_path / "other", files)
    line = _one_line(_swdet("eval", str(tiny_run), "--ann", str(ann), "--images", str(tmp_path / "other"),
                            "--device", "cpu", "--quiet"))
    assert f"{len(files)} of {len(files)} images" in line and "differ in size from instances_val.json" in line
    assert files[0] in line  # names the first few


def test_eval_with_a_few_other_sizes_warns_with_a_count(tiny_run, synth_data, tmp_path):
    ann = synth_data / "annotations" / "instances_val.json"
    files = [im["file_name"] for im in json.loads(ann.read_text())["images"]]
    _resized_copy(synth_data / "val", tmp_path / "few", files[:1])
    res = _swdet("eval", str(tiny_run), "--ann", str(ann), "--images", str(tmp_path / "few"), "--device", "cpu",
                 "--quiet")
    assert res.returncode == 0, res.stderr[-2000:]
    warned = [ln for ln in res.stderr.splitlines() if "differ in size" in ln]
    assert len(warned) == 1 and f"1 of {len(files)} images" in warned[0] and "Traceback" not in res.stderr
