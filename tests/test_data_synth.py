"""Synthetic shapes dataset (swdet.data.synth) and the `data synth` command."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from swdet.data import CocoDetection, DataWarning, write_synthetic_dataset
from swdet.cli.data import data as data_cli
from swdet.data.synth import CATEGORIES
from swdet.errors import SwdetError


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("s0")
    summary = write_synthetic_dataset(root, n_train=40, n_val=6, seed=0)
    return root, summary


def test_same_seed_same_bytes(small, tmp_path):
    root, _ = small
    write_synthetic_dataset(tmp_path / "again", n_train=40, n_val=6, seed=0, workers=2)
    a, b = _files(root), _files(tmp_path / "again")
    assert a.keys() == b.keys() and len(a) == 40 + 6 + 2
    assert a == b  # annotation JSON and every JPEG byte-identical (also across worker counts)


def test_different_seed_differs(small, tmp_path):
    root, _ = small
    write_synthetic_dataset(tmp_path / "s1", n_train=40, n_val=6, seed=1)
    a, b = _files(root), _files(tmp_path / "s1")
    assert a["annotations/instances_train.json"] != b["annotations/instances_train.json"]
    assert a["train/000001.jpg"] != b["train/000001.jpg"]


def test_valid_coco_with_non_contiguous_ids(small):
    root, summary = small
    d = json.loads((root / "annotations" / "instances_train.json").read_text())
    assert [c["id"] for c in d["categories"]] == [1, 2, 3, 5, 8, 13]
    assert summary["train"]["images"] == 40 and summary["train"]["boxes"] == len(d["annotations"])
    ids = [a["id"] for a in d["annotations"]]
    assert len(set(ids)) == len(ids)
    sizes = {im["id"]: (im["width"], im["height"]) for im in d["images"]}
    for im in d["images"][:10]:
        assert Image.open(root / "train" / im["file_name"]).size == (im["width"], im["height"])
    for a in d["annotations"]:
        x, y, w, h = a["bbox"]
        W, H = sizes[a["image_id"]]
        assert 0 <= x and 0 <= y and x + w <= W and y + h <= H and w >= 1 and h >= 1
        assert a["iscrowd"] == 0 and 0 < a["area"] <= w * h
    # loads with no validation problem at all
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        ds = CocoDetection(root / "annotations" / "instances_train.json", root / "train", imgsz=128)
    assert ds.load_report == {} and ds.class_names == [n for _, n in CATEGORIES]


def test_distribution_is_varied(small):
    root, _ = small
    d = json.loads((root / "annotations" / "instances_train.json").read_text())
    per_image = np.bincount([a["image_id"] for a in d["annotations"]], minlength=41)[1:]
    assert per_image.max() <= 12 and per_image.mean() > 3
    assert {a["category_id"] for a in d["annotations"]} == {c for c, _ in CATEGORIES}
    side = np.array([np.sqrt(a["bbox"][2] * a["bbox"][3]) for a in d["annotations"]])
    assert (side < 32).mean() > 0.15 and (side > 96).mean() > 0.05  # small and large objects
    aspect = np.array([a["bbox"][2] / a["bbox"][3] for a in d["annotations"]])
    assert aspect.min() < 0.6 and aspect.max() > 1.7
    shapes = np.array([(im["width"], im["height"]) for im in d["images"]])
    assert shapes.min() >= 240 and shapes.max() <= 400
    assert (shapes[:, 0] > shapes[:, 1]).any() and (shapes[:, 0] < shapes[:, 1]).any()
    # truncation at the border happens (boxes touching an edge)
    W = {im["id"]: im["width"] for im in d["images"]}
    assert any(a["bbox"][0] == 0 or a["bbox"][0] + a["bbox"][2] == W[a["image_id"]] for a in d["annotations"])


def test_presets_change_difficulty(tmp_path):
    stats = {}
    for preset in ("easy", "hard"):
        s = write_synthetic_dataset(tmp_path / preset, n_train=12, n_val=0, seed=3, config=preset)
        d = json.loads(Path(s["train"]["ann_file"]).read_text())
        assert d["info"]["preset"] == preset and s["preset"] == preset
        side = [np.sqrt(a["bbox"][2] * a["bbox"][3]) for a in d["annotations"]]
        per_image = np.bincount([a["image_id"] for a in d["annotations"]])[1:]
        stats[preset] = (min(side), per_image.max())
    assert stats["easy"][0] >= 20 and stats["easy"][1] <= 6
    assert stats["hard"][0] < stats["easy"][0]
    with pytest.raises(SwdetError, match="preset 'medium'"):
        write_synthetic_dataset(tmp_path / "x", 1, 0, config="medium")


def test_cli_synth(tmp_path):
    res = CliRunner().invoke(data_cli, ["synth", "--out", str(tmp_path / "ds"), "--train", "3", "--val", "2",
                                        "--seed", "4"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("wrote 3 train images") and len(res.output.strip().splitlines()) == 1
    assert (tmp_path / "ds" / "annotations" / "instances_val.json").is_file()
    assert len(list((tmp_path / "ds" / "val").glob("*.jpg"))) == 2
    assert "preset default" in res.output
    help_text = CliRunner().invoke(data_cli, ["synth", "--help"]).output
    assert "Example" in help_text and "swdet data synth --out" in help_text
