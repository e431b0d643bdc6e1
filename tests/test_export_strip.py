"""Stripping (docs/design.md, "Data flow and contracts" 3): a training checkpoint becomes an artifact
and an ONNX graph holding the detector alone -- the SWN weighting network and everything else
training-only never reach either -- and exporting needs no ``swdet.train``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from safetensors.torch import load_file

import swdet.config
from swdet.artifact import build_metadata, load_artifact, save_artifact
from swdet.config import Config, PostprocessConfig
from swdet.errors import SwdetError
from swdet.export import export_onnx, load_for_export, to_artifact
from swdet.models import build_model
from swdet.train.checkpoint import rng_state
from swdet.train.methods.swn import SampleWeightingNetwork

IMGSZ = 128
SENTINEL = 4321.5  # every weighting parameter holds it: easy to look for in the outputs


def tiny_config(method) -> Config:
    cfg = Config()
    cfg.model = swdet.config.model_preset("retinanet_tiny")
    cfg.model.num_classes, cfg.model.imgsz = 3, IMGSZ
    cfg.loss.method = list(method)
    return cfg


def write_checkpoint(path: Path, method=("sampling_free", "swn"), stats=None, **drop) -> tuple[Path, torch.nn.Module]:
    """A checkpoint shaped like the trainer's: detector state, SWN state, optimizer, config..."""
    torch.manual_seed(0)
    cfg = tiny_config(method)
    detector = build_model(cfg.model)
    with torch.no_grad():
        detector.head.set_prior(0.2)
        detector.head.cls_logits.weight.normal_(std=0.05)
    swn = SampleWeightingNetwork(hidden=8)
    with torch.no_grad():
        for p in swn.parameters():
            p.fill_(SENTINEL)
    weighting = {f"swn.{k}": v for k, v in swn.state_dict().items()}
    # the model entry also carries a TrainModule-style copy of the weighting net under DDP's prefix
    model_state = {f"module.detector.{k}": v for k, v in detector.state_dict().items()}
    model_state.update({f"module.weighting.{k}": v for k, v in weighting.items()})
    state = {"iteration": 123, "model": model_state, "weighting": weighting,
             "optimizer": {"state": {}, "param_groups": []},
             "weighting_optimizer": {"state": {0: {"exp_avg": torch.full((8, 1), SENTINEL)}}},
             "config": cfg.to_dict(), "stats": stats if stats is not None else {"num_fg": 250, "num_all": 1000},
             "class_names": ["a", "b", "c"], "category_ids": [3, 7, 11], "rng": rng_state()}
    for key in drop:
        state.pop(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path, detector


def test_artifact_or_run_dir_is_returned_as_is_or_copied(tmp_path):
    cfg = tiny_config(["focal"]).model
    weights = save_artifact(tmp_path / "run", build_model(cfg),
                            build_metadata(cfg, PostprocessConfig(), class_names=["a", "b", "c"],
                                           category_ids=[1, 2, 3], method=["focal"]))
    assert to_artifact(tmp_path / "run") == weights
    assert to_artifact(weights) == weights
    copied = to_artifact(tmp_path / "run", tmp_path / "copy")
    assert copied == tmp_path / "copy" / "model.safetensors"
    assert copied.read_bytes() == weights.read_bytes()
    assert (tmp_path / "copy" / "model.json").read_text() == (tmp_path / "run" / "model.json").read_text()


def test_checkpoint_to_artifact_drops_training_state(tmp_path):
    ckpt, detector = write_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    weights = to_artifact(ckpt)
    assert weights == tmp_path / "run" / "checkpoints" / "last" / "model.safetensors"
    assert not (tmp_path / "run" / "model.safetensors").exists()  # never over the run's own artifact
    state = load_file(str(weights))
    assert set(state) == set(detector.state_dict())
    assert all(not torch.any(v == SENTINEL) for v in state.values())
    model, meta = load_artifact(weights)
    for k, v in detector.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)
    assert meta["classes"] == {"names": ["a", "b", "c"], "category_ids": [3, 7, 11]}
    assert meta["threshold"] == {"source": "sampling_free", "rule": "N_f/N", "theta": 0.25, "num_fg": 250,
                                 "num_all": 1000}
    assert meta["postprocess"]["score_threshold"] == 0.25  # θ = N_f / N
    assert meta["training"]["method"] == ["sampling_free", "swn"] and meta["training"]["iterations"] == 123
    assert "weighting" not in json.dumps(meta["model"])


def test_non_sampling_free_checkpoint_keeps_default_threshold(tmp_path):
    ckpt, _ = write_checkpoint(tmp_path / "c.pt", method=("focal",))
    _, meta = load_for_export(ckpt)
    assert meta["threshold"]["source"] == "default"
    assert meta["postprocess"]["score_threshold"] == PostprocessConfig().score_threshold


def test_run_dir_with_only_a_checkpoint(tmp_path):
    write_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    model, meta = load_for_export(tmp_path / "run")
    assert meta["training"]["iterations"] == 123
    assert to_artifact(tmp_path / "run", tmp_path / "art") == tmp_path / "art" / "model.safetensors"


def test_onnx_from_checkpoint_has_no_weighting_network(tmp_path):
    ckpt, detector = write_checkpoint(tmp_path / "c.pt")
    path = export_onnx(ckpt, tmp_path / "m.onnx")
    model = onnx.load(str(path))
    names = [t.name for t in model.graph.initializer] + [n.name for n in model.graph.node]
    assert not [n for n in names if "weighting" in n.lower() or "swn" in n.lower()]
    for t in model.graph.initializer:
        arr = numpy_helper.to_array(t)
        if arr.dtype.kind == "f":
            assert not np.any(arr == SENTINEL), t.name
    # the detector itself is all there: its cls_logits weights appear as an initializer
    w = detector.head.cls_logits.weight.detach().numpy()
    assert any(numpy_helper.to_array(t).shape == w.shape and np.array_equal(numpy_helper.to_array(t), w)
               for t in model.graph.initializer)
    meta = json.loads({p.key: p.value for p in model.metadata_props}["swdet"])
    assert meta["export"]["score_threshold"] == 0.25


def test_export_does_not_import_swdet_train(tmp_path):
    ckpt, _ = write_checkpoint(tmp_path / "c.pt")
    code = (
        "import sys\n"
        "from swdet.export import to_artifact, export_onnx\n"
        f"w = to_artifact({str(ckpt)!r})\n"
        f"export_onnx(w, {str(tmp_path / 'm.onnx')!r})\n"
        f"export_onnx({str(ckpt)!r}, {str(tmp_path / 'c.onnx')!r})\n"
        "bad = sorted(m for m in sys.modules if m.startswith('swdet.train'))\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "m.onnx").is_file() and (tmp_path / "c.onnx").is_file()


def test_bad_checkpoints_are_one_line_errors(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    ckpt_no_names, _ = write_checkpoint(tmp_path / "nonames.pt", class_names=True)
    wrong = tmp_path / "wrong.pt"
    state = torch.load(write_checkpoint(tmp_path / "ok.pt")[0], weights_only=False)
    state["model"] = {k: v for k, v in state["model"].items() if "cls_logits" not in k}
    torch.save(state, wrong)
    bad_stats, _ = write_checkpoint(tmp_path / "badstats.pt", stats={"num_fg": 5, "num_all": 0})
    cases = [(junk, "not a readable swdet checkpoint"), (ckpt_no_names, "'class_names'"),
             (wrong, "do not match"), (bad_stats, "anchor statistics: need 0 < num_fg <= num_all"), (tmp_path / "missing.pt", "no such file")]
    for path, words in cases:
        with pytest.raises(SwdetError) as e:
            to_artifact(path)
        assert words in str(e.value) and "\n" not in str(e.value)
