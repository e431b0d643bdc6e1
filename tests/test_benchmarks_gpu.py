"""benchmarks/gpu.sh and gpu.py: without CUDA they say so and exit 0; the training part's code
path runs on the CPU (a hidden --allow-cpu switch, tiny setting)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _no_cuda_env() -> dict:
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}


def test_gpu_sh_without_cuda_says_so_and_exits_0(tmp_path):
    p = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--out", str(tmp_path)], capture_output=True,
                       text=True, env=_no_cuda_env(), timeout=300)
    assert p.returncode == 0, p.stderr
    assert "no CUDA" in p.stdout and "Traceback" not in p.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_gpu_py_without_cuda_says_so_and_exits_0(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--out", str(tmp_path)],
                       capture_output=True, text=True, env=_no_cuda_env(), timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().startswith("no CUDA") and "Traceback" not in p.stderr


def test_training_code_path_on_cpu(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--allow-cpu", "--model", "retinanet_tiny",
                        "--imgsz", "64", "--batch", "2", "--steps", "1", "--warmup", "1", "--methods", "focal,pisa+swn",
                        "--out", str(tmp_path)], capture_output=True, text=True, env=_no_cuda_env(), timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads((tmp_path / "gpu.json").read_text())
    assert [row["method"] for row in r["train"]] == ["focal", "pisa,swn"]
    assert all("step_ms" in row for row in r["train"]), r["train"]
    assert r["train"][1]["vs_focal"] > 0 and "goal" in r["train"][1]
    assert (tmp_path / "gpu.md").read_text().startswith("# GPU: retinanet_tiny")
