"""``model.pretrained`` for the tiny backbone: the backbone of an earlier run (its checkpoint, its
``model.safetensors`` or a bare backbone state dict) and nothing else of it; files that are not
weights, that do not fit, or that would run code are refused with one line."""

from __future__ import annotations

import pathlib

import pytest
import torch
from safetensors.torch import save_file
from test_checkpoint_safety import _TouchOnLoad
from test_console_script import assert_one_line_error, run

from swdet.config import load_config
from swdet.errors import SwdetError
from swdet.models import build_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "retinanet_tiny.yaml"
SMALL = ["model.backbone_width=8", "model.fpn_channels=16", "model.head_channels=16", "model.imgsz=64"]


def _model(*sets: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(load_config(CONFIG, [*SMALL, *sets]).model)


@pytest.fixture(scope="module")
def donor():
    return _model(seed=123)


@pytest.mark.parametrize("form", ["checkpoint", "safetensors", "backbone_only"])
def test_only_the_backbone_comes_from_the_file(donor, tmp_path, form):
    state = {k: v.clone() for k, v in donor.state_dict().items()}
    if form == "checkpoint":  # what `swdet train` writes: checkpoints/last.pt with a "model" entry
        path = tmp_path / "last.pt"
        torch.save({"iteration": 3, "model": state}, path)
    elif form == "safetensors":  # a run's model.safetensors
        path = tmp_path / "model.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "backbone.pt"
        torch.save(donor.backbone.state_dict(), path)
    fresh = _model()
    got = _model(f"model.pretrained={path}")
    for k, v in got.backbone.state_dict().items():
        assert torch.equal(v, donor.backbone.state_dict()[k]), k
    # the FPN and the head start as a run without pretrained weights does (same seed), not as the donor
    for k, v in got.state_dict().items():
        if not k.startswith("backbone."):
            assert torch.equal(v, fresh.state_dict()[k]), k
    assert any(not torch.equal(v, donor.state_dict()[k]) for k, v in got.state_dict().items()
               if k.startswith("head."))


def test_weights_that_do_not_fit_are_refused(donor, tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"model": donor.state_dict()}, path)
    with pytest.raises(SwdetError, match="do not fit the tiny backbone.*stem"):
        _model(f"model.pretrained={path}", "model.backbone_width=16")
    with pytest.raises(SwdetError, match="no ImageNet weights for the tiny backbone"):
        _model("model.pretrained=imagenet")


def test_a_pickle_that_would_run_code_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "last.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _TouchOnLoad(marker)}, path)
    with pytest.raises(SwdetError, match="cannot read backbone weights"):
        _model(f"model.pretrained={path}")
    assert not marker.exists()


def test_train_names_a_missing_weights_file_in_one_line(synth_data, tmp_path):
    missing = tmp_path / "nope.pt"
    res = run("train", str(CONFIG), "--data", str(synth_data), "--out", str(tmp_path / "o"), "--quiet",
              "--set", f"model.pretrained={missing}", "--set", "train.iters=1")
    assert_one_line_error(res, "nope.pt: backbone weights file not found")


def test_resuming_does_not_read_the_initial_weights_again(donor, synth_data, tmp_path):
    """The checkpoint holds every weight: a run started from another run's backbone resumes after
    that file is gone."""
    from swdet.train.engine import Trainer, train

    path = tmp_path / "donor.pt"
    torch.save({"model": donor.state_dict()}, path)
    cfg = load_config(CONFIG, [*SMALL, f"data.root={synth_data}", f"model.pretrained={path}", "train.iters=1",
                               "train.batch_size=2", "data.workers=0"])
    train(cfg, tmp_path / "run", progress=False, evaluate=False)
    path.unlink()
    Trainer(cfg, tmp_path / "run", resume=True, progress=False).setup()  # raised "file not found" before
