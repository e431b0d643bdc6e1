"""``model.json`` is validated on every load (``swdet.modeljson.check_metadata``): a hand-edited
file is one line naming the field and the file and exit status 2, never an internal error."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess

import pytest

from conftest import model_meta
from swdet.errors import SwdetError
from swdet.modeljson import check_metadata


_DROP = object()


def _set(meta: dict, dotted: str, value):
    node = meta
    *path, last = dotted.split(".")
    for k in path:
        node = node[k]
    if value is _DROP:
        node.pop(last)
    else:
        node[last] = value
    return meta


# (edit, value, what the one line says): every field a stage reads, and the cross-field rules
BAD = [
    ("format", "other", "not an swdet model description"),
    ("format_version", 99, "newer swdet"),
    ("format_version", "1", "format_version must be a positive integer"),
    ("model", _DROP, "model missing"),
    ("model.imgsz", 100, "model.imgsz 100: must be a multiple of 32"),
    ("model.imgsz", "320", "model.imgsz"),
    ("model.num_classes", 7, "classes.names has 1 names, model.num_classes is 7"),
    ("model.num_classes", 0, "model.num_classes must be at least 1"),
    ("model.arch", "yolo", "model.arch must be"),
    ("model.backbone", "vit", "model.backbone must be"),
    ("model.min_level", 9, "model.min_level/max_level"),
    ("model.anchor_scales", [], "model.anchor_scales must be"),
    ("model.anchor_ratios", [1.0, -2.0], "model.anchor_ratios must be"),
    ("model.head_channels", 0, "model.fpn_channels/head_channels/backbone_width"),
    ("model.prior_prob", 1.5, "model.prior_prob must be in (0, 1)"),
    ("model.colour", 1, "unknown key 'colour'"),
    ("classes", _DROP, "classes missing"),
    ("classes.names", ["a", ""], "classes.names must be a list of non-empty strings"),
    ("classes.names", "a", "classes.names must be a list"),
    ("classes.category_ids", [1, 2], "classes.category_ids has 2 ids for 1 names"),
    ("classes.category_ids", ["1"], "classes.category_ids must be a list of integers"),
    ("input", _DROP, "input missing"),
    ("input.mean", [0.5, 0.5], "input.mean must have 3 numbers"),
    ("input.std", [0.2, 0.0, 0.2], "input.std must be positive"),
    ("input.std", _DROP, "input.std missing"),
    ("input.layout", "NHWC", "input.layout must be 'NCHW'"),
    ("input.color", "BGR", "input.color must be 'RGB'"),
    ("input.dtype", "uint8", "input.dtype must be 'float32'"),
    ("input.range", [255, 0], "input.range must be [low, high]"),
    ("input.normalization", "host", "input.normalization"),
    ("input.letterbox.pad_value", 300, "input.letterbox.pad_value must be a number in [0, 255]"),
    ("input.size", 96, "input.size 96 differs from model.imgsz 64"),
    ("input.name", "", "input.name must be a non-empty string"),
    ("postprocess", _DROP, "postprocess missing"),
    ("postprocess.score_threshold", 1.5, "postprocess.score_threshold must be in [0, 1)"),
    ("postprocess.max_det", 0, "postprocess.max_det must be at least 1"),
    ("postprocess.pre_nms_topk", 0, "postprocess.pre_nms_topk must be at least 1"),
    ("postprocess.nms_iou", -0.1, "postprocess.nms_iou must be in [0, 1]"),
    ("postprocess.max_det", "many", "postprocess.max_det"),
    ("threshold.source", "magic", "threshold.source must be"),
    ("threshold.theta", 2.0, "threshold.theta must be a number in [0, 1)"),
    ("num_parameters", -1, "num_parameters must be a non-negative integer"),
    ("training.method", [], "training.method must be a non-empty list"),
]


@pytest.mark.parametrize("key, value, needle", BAD,
                         ids=[f"{k}={'(dropped)' if v is _DROP else v!r}"[:40] for k, v, _ in BAD])
def test_every_field_is_checked(key, value, needle):
    meta = _set(model_meta(64), key, value if value is _DROP else copy.deepcopy(value))
    with pytest.raises(SwdetError, match="m.json") as e:
        check_metadata(meta, "m.json")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_cross_field_rules_and_a_good_file():
    check_metadata(model_meta(64, names=("a", "b")), "m.json")
    meta = model_meta(64, names=("a", "b"))
    meta["classes"]["category_ids"] = [3, 3]
    with pytest.raises(SwdetError, match="classes.category_ids repeats id 3"):
        check_metadata(meta, "m.json")
    exp = model_meta(64, export={"imgsz": 96, "batch": 1})
    with pytest.raises(SwdetError, match="export.imgsz 96 differs from model.imgsz 64"):
        check_metadata(exp, "m.onnx")
    for key, value, needle in [("batch", 0, "export.batch"), ("score_threshold", 1.0, "export.score_threshold"),
                               ("nms", "soft", "export.nms"), ("precision", "int4", "export.precision"),
                               ("max_det", 0, "export.max_det")]:
        with pytest.raises(SwdetError, match=needle):
            check_metadata(model_meta(64, export={key: value}), "m.onnx")
    sf = model_meta(64, threshold={"source": "sampling_free", "theta": 0.1, "num_fg": 5, "num_all": 2})
    with pytest.raises(SwdetError, match="threshold.num_fg/num_all"):
        check_metadata(sf, "m.json")


EDITS = [
    ("model.num_classes", 7, "classes.names has"),            # 7 classes, fewer names
    ("classes.names", "cut", "classes.names has"),            # a cut names list
    ("model.imgsz", 100, "model.imgsz 100: must be a multiple of 32"),
    ("postprocess.score_threshold", 1.5, "postprocess.score_threshold must be in [0, 1)"),
    ("postprocess.max_det", 0, "postprocess.max_det must be at least 1"),
    ("input.mean", [0.4, 0.4], "input.mean must have 3 numbers"),
    ("classes.category_ids", "dup", "classes.category_ids repeats id"),
]


@pytest.mark.parametrize("key, value, needle", EDITS, ids=[k for k, _, _ in EDITS])
def test_hand_edited_model_json_through_the_command(tiny_run, synth_data, tmp_path, key, value, needle):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoints", "plots"))
    meta = json.loads((run / "model.json").read_text())
    if value == "cut":
        value = meta["classes"]["names"][:-1]
    elif value == "dup":
        ids = meta["classes"]["category_ids"]
        value = [ids[0]] * len(ids)
    _set(meta, key, value)
    (run / "model.json").write_text(json.dumps(meta))
    image = next((synth_data / "val").iterdir())
    exe = shutil.which("swdet")
    for args in (["predict", str(run), str(image), "--out", str(tmp_path / "p.json"), "--quiet"],
                 ["export", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]):
        res = subprocess.run([exe, *args], capture_output=True, text=True, timeout=300,
                             env=dict(os.environ, SWDET_DEBUG=""))
        assert res.returncode == 2, res.stderr
        err = res.stderr.strip().splitlines()
        assert len(err) == 1 and needle in err[0] and "model.json" in err[0], err
        assert "internal error" not in res.stderr and "Traceback" not in res.stderr
