"""Training plots: the learning rate always, validation AP over training with ``--eval-every N``."""

from __future__ import annotations

import json
import shutil
import subprocess

from conftest import TINY_TRAIN


def test_lr_and_validation_ap_plots(synth_data, tmp_path):
    out = tmp_path / "r"
    res = subprocess.run([shutil.which("swdet"), "train", "--data", str(synth_data), "--iters", "6", "--out", str(out),
                          "--eval-every", "2", "--no-eval", *TINY_TRAIN], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows if "val/AP" in r] == [2, 4]
    for name in ("losses.png", "lr.png", "val_ap.png"):
        assert (out / "plots" / name).stat().st_size > 1000, name


def test_no_validation_plot_without_eval_every(tiny_run):
    assert (tiny_run / "plots" / "lr.png").is_file() and not (tiny_run / "plots" / "val_ap.png").exists()
