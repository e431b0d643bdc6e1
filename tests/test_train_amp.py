"""bfloat16 autocast in the CPU training step (``train.amp: bf16``; opt-in on the CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY_TRAIN
from swdet.errors import SwdetError
from swdet.train.schedule import amp_dtype
from test_console_script import run


def test_amp_dtype_on_the_cpu():
    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) is None  # fp32 unless asked
    assert amp_dtype("none", cpu) is None
    assert amp_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(SwdetError, match="fp16 autocast needs a CUDA device"):
        amp_dtype("fp16", cpu)


def test_bf16_training_on_the_cpu_tracks_fp32(synth_data, tmp_path):
    from swdet.cli import main

    logs = {}
    for amp in ("none", "bf16"):
        out = tmp_path / amp
        rc = main(["train", "--data", str(synth_data), "--iters", "4", "--out", str(out), *TINY_TRAIN,
                   "--set", f"train.amp={amp}"])
        assert rc == 0
        logs[amp] = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        train = json.loads((out / "metrics.json").read_text())["train"]
        assert train["autocast"] == {"none": "fp32", "bf16": "bfloat16"}[amp]
    # same data, same initial weights: the bf16 losses follow the fp32 ones to bf16's precision
    for a, b in zip(logs["none"], logs["bf16"]):
        assert b["cls"] == pytest.approx(a["cls"], rel=0.05) and b["reg"] == pytest.approx(a["reg"], rel=0.05)
    assert logs["none"][0]["cls"] != logs["bf16"][0]["cls"]  # autocast did run


def test_fp16_on_the_cpu_is_one_line(synth_data, tmp_path):
    p = run("train", "--data", str(synth_data), "--iters", "1", "--out", str(tmp_path / "x"), *TINY_TRAIN,
            "--set", "train.amp=fp16", "--device", "cpu")
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip() == "error: train.amp: fp16 autocast needs a CUDA device; on the CPU use bf16 or none"


def test_fused_optimizer_kernels_on_the_cpu_same_update():
    """The trainer uses fused optimizer kernels wherever torch has them (CUDA; the CPU on torch
    2.4+): the same AdamW update as the per-op form, up to float rounding."""
    from swdet.train.schedule import fused_optimizers

    assert fused_optimizers(torch.device("meta")) is False
    if not fused_optimizers(torch.device("cpu")):
        pytest.skip("this torch has no fused CPU optimizers")
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(64, 32, generator=g), torch.randn(32, generator=g)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(5)]
    results = []
    for fused in (False, True):
        params = [p.clone().requires_grad_(True) for p in start]
        opt = torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0}],
                                lr=0.008, weight_decay=0.05, **({"fused": True} if fused else {}))
        for step in grads:
            for p, gr in zip(params, step):
                p.grad = gr.clone()
            opt.step()
        results.append(params)
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
        assert not torch.equal(a, start[0] if a.ndim == 2 else start[1])
