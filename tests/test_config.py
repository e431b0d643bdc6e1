"""Config loading: YAML, presets, overrides and one-line errors."""

import pytest

from swdet.config import apply_override, load_config, model_preset
from swdet.errors import SwdetError


def test_defaults_and_preset():
    cfg = load_config(None, ["model=retinanet_r50_fpn"])
    assert cfg.model.backbone == "resnet50"
    assert cfg.model.min_level == 3 and cfg.model.max_level == 7
    assert len(cfg.model.anchor_scales) * len(cfg.model.anchor_ratios) == 9
    assert cfg.loss.method == ["focal"]


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: {name: retinanet_tiny, imgsz: 256}\ntrain: {iters: 10, lr: 0.02}\nloss: {method: [pisa]}\n")
    cfg = load_config(p, ["train.lr=0.05", "loss.method=pisa,swn", "model.head_convs=3"])
    assert cfg.model.name == "retinanet_tiny" and cfg.model.imgsz == 256 and cfg.model.head_convs == 3
    assert cfg.model.fpn_channels == model_preset("retinanet_tiny").fpn_channels
    assert cfg.train.lr == 0.05 and cfg.train.iters == 10
    assert cfg.loss.method == ["pisa", "swn"]


@pytest.mark.parametrize(
    "text, needle",
    [
        ("train: {lrr: 0.1}\n", "did you mean 'lr'"),
        ("train: {iters: -3}\n", "train.iters must be non-negative"),
        ("train: {iters: abc}\n", "expected an integer"),
        ("model: resnet_giant\n", "unknown model"),
        ("model: {imgsz: 100}\n", "multiple of 32"),
        ("train: [1, 2\n", "invalid YAML"),
        ("- a\n- b\n", "mapping at the top level"),
        ("train: {amp: fp8}\n", "train.amp"),
        ("train: {optimizer: adam}\n", "train.optimizer must be sgd or adamw"),
        ("model: {backbone_blocks: [1, 0, 1, 1]}\n", "model.backbone_blocks"),
    ],
)
def test_bad_config_is_one_line(tmp_path, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(SwdetError) as e:
        load_config(p)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg
    assert "bad.yaml" in msg or "unknown model" in msg


def test_missing_config_file(tmp_path):
    with pytest.raises(SwdetError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_override_syntax():
    d = {}
    apply_override(d, "train.lr=0.1")
    apply_override(d, "model=retinanet_tiny")
    apply_override(d, "model.imgsz=256")
    assert d == {"train": {"lr": 0.1}, "model": {"name": "retinanet_tiny", "imgsz": 256}}
    with pytest.raises(SwdetError, match="KEY=VALUE"):
        apply_override(d, "train.lr")
