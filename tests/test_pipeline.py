"""``swdet pipeline``: every stage on a small embedded default, through the CLI."""

from __future__ import annotations

import json

from swdet.cli import main


def test_pipeline_runs_every_stage(tmp_path, capsys):
    out = tmp_path / "pipe"
    rc = main(["pipeline", "--out", str(out), "--iters", "3", "--candidate-iters", "2", "--train-images", "8",
               "--val-images", "4", "--quiet"])  # --workers: the automatic choice
    assert rc == 0
    summary = json.loads((out / "pipeline.json").read_text())
    assert summary["verify_ok"] is True  # focal and swn exports cost the same
    assert [r["runtime"] for r in summary["stages"]["runtimes"]] == ["torch", "onnxruntime", "onnxruntime-int8"]
    for r in summary["stages"]["runtimes"]:
        assert 0.0 <= r["AP"] <= 1.0 and r["latency_b1_ms"] > 0 and r["throughput_b8_ips"] > 0
    assert summary["stages"]["train_baseline"]["iters"] == 3
    for f in ("model.onnx", "model.int8.onnx", "swn.onnx", "runs/focal/model.safetensors", "runs/swn/model.json"):
        assert (out / f).is_file(), f
    assert "same test-time cost" in capsys.readouterr().out
    # every stage timed; the training autocast recorded and applied to both runs
    stages = summary["stage_times_s"]
    assert list(stages)[0] == "data synth" and "calib int8" in stages and "eval onnxruntime-int8" in stages
    assert abs(sum(stages.values()) - summary["time_s"]) < 1.0
    from swdet.train.schedule import cpu_has_native_bf16

    expect = "bf16" if cpu_has_native_bf16() else "recipe"
    assert summary["train_amp"] == expect
    for run in ("focal", "swn"):
        cfg = json.loads((out / "runs" / run / "config.json").read_text())
        assert cfg["train"]["amp"] == ("bf16" if expect == "bf16" else "auto")
    # the automatic loader choice: in the training process on the CPU, 2 processes with CUDA
    import torch

    workers = 2 if torch.cuda.is_available() else 0
    assert summary["train_workers"] == workers
    for run in ("focal", "swn"):
        assert json.loads((out / "runs" / run / "config.json").read_text())["data"]["workers"] == workers
