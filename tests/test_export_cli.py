"""``swdet export`` through the real entry point: files written, closing table, static check
output, one-line errors."""

from __future__ import annotations

import onnx
import pytest
import torch

import swdet.config
from swdet.artifact import build_metadata, save_artifact
from swdet.cli import main
from swdet.config import Config, PostprocessConfig
from swdet.export import read_onnx_metadata
from swdet.models import build_model

IMGSZ = 128


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = swdet.config.model_preset("retinanet_tiny")
    cfg.num_classes, cfg.imgsz = 3, IMGSZ
    d = tmp_path_factory.mktemp("run")
    save_artifact(d, build_model(cfg), build_metadata(cfg, PostprocessConfig(), class_names=["a", "b", "c"],
                                                      category_ids=[1, 2, 3], method=["focal"]))
    return d


def test_help_lists_examples(capsys):
    assert main(["export", "--help"]) == 0
    out = capsys.readouterr().out
    assert "swdet export runs/pisa --format onnx --out pisa.onnx" in out
    for opt in ("--format", "--imgsz", "--batch", "--score-threshold", "--nms", "--precision", "--opset",
                "--min-batch", "--opt-batch", "--max-batch", "--check-only"):
        assert opt in out


def test_export_onnx_prints_table_and_check(run_dir, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    rc = main(["export", str(run_dir), "--format", "onnx", "--out", str(out), "--batch", "2",
               "--precision", "fp16", "--score-threshold", "0.3", "--opset", "16"])
    text = capsys.readouterr().out
    assert rc == 0 and out.is_file()
    assert "TensorRT static check: no problems" in text
    header = next(line for line in text.splitlines() if line.startswith("file"))
    assert header.split() == ["file", "size_mb", "opset", "ops", "nms", "precision", "threshold"]
    row = next(line for line in text.splitlines() if line.startswith(str(out)))
    assert row.split()[2:] == ["16", row.split()[3], "onnx", "fp16", "0.3000"]
    exp = read_onnx_metadata(out)["export"]
    assert (exp["batch"], exp["precision"], exp["score_threshold"], exp["opset"]) == (2, "fp16", 0.3, 16)
    assert onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2


def test_checkpoint_source_writes_artifact_first(tmp_path, capsys):
    torch.manual_seed(0)
    cfg = Config()
    cfg.model = swdet.config.model_preset("retinanet_tiny")
    cfg.model.num_classes, cfg.model.imgsz = 2, IMGSZ
    det = build_model(cfg.model)
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"iteration": 5, "model": det.state_dict(), "weighting": {}, "config": cfg.to_dict(),
                "class_names": ["x", "y"], "category_ids": [1, 2], "stats": None}, ckpt)
    rc = main(["export", str(ckpt), "--out", str(tmp_path / "c.onnx")])
    text = capsys.readouterr().out
    assert rc == 0 and (tmp_path / "c.onnx").is_file()
    assert (ckpt.parent / "last" / "model.safetensors").is_file() and "artifact:" in text


def test_triton_and_check_only(run_dir, tmp_path, capsys):
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", str(run_dir), "--out", str(onnx_path)]) == 0
    assert main(["export", str(onnx_path), "--format", "triton", "--out", str(tmp_path / "repo"),
                 "--max-batch", "4", "--preferred-batch-sizes", "2,4"]) == 0
    assert (tmp_path / "repo" / "swdet" / "config.pbtxt").is_file()
    capsys.readouterr()
    assert main(["export", str(onnx_path), "--check-only"]) == 0
    assert "no problems" in capsys.readouterr().out
    # a graph TensorRT cannot take: --check-only fails with one line
    model = onnx.load(str(onnx_path))
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    assert main(["export", str(bad), "--check-only"]) != 0
    captured = capsys.readouterr()
    assert "dynamic dimension 2" in captured.out
    assert captured.err.strip().count("\n") == 0 and captured.err.startswith("error:")


@pytest.mark.parametrize("args, words", [
    (["export", "nowhere", "--out", "x.onnx"], "no such file"),
    (["export", "{run}", "--out", "{tmp}/x.onnx", "--imgsz", "100"], "multiple of 32"),
    (["export", "{run}", "--out", "{tmp}/x.onnx", "--batch", "many"], "--batch"),
    (["export", "{run}"], "--out is required"),
    (["export", "{run}", "--format", "triton", "--out", "{tmp}/r", "--preferred-batch-sizes", "a,b"], "comma-separated"),
])
def test_errors_are_one_line(run_dir, tmp_path, capsys, args, words):
    argv = [a.format(run=run_dir, tmp=tmp_path) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and words in err and "\n" not in err and "Traceback" not in err
