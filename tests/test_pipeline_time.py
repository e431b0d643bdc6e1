"""benchmarks/pipeline_time.py: the first-run timing table from the runs' pipeline.json files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import load_benchmark


def _fake_run(folder: Path, time_s: float, amp: str, cand_iters: int, ap: float) -> None:
    folder.mkdir(parents=True)
    stages = {"data synth": 10.0, "train focal (baseline)": time_s - 40.0, "train swn (candidate)": 20.0,
              "eval torch": 10.0}
    runtimes = [{"runtime": "torch", "AP": ap}, {"runtime": "onnxruntime-int8", "AP": ap - 0.002}]
    (folder / "pipeline.json").write_text(json.dumps({
        "time_s": time_s, "stage_times_s": stages, "train_amp": amp,
        "stages": {"runtimes": runtimes, "train_candidate": {"iters": cand_iters}}}))


def test_collect_reports_each_run_and_the_per_round_speedup(tmp_path):
    work = tmp_path / "work"
    _fake_run(work / "baseline_1", 520.0, "recipe", 300, 0.39)
    _fake_run(work / "candidate_1", 260.0, "bf16", 50, 0.40)
    _fake_run(work / "baseline_2", 500.0, "recipe", 300, 0.39)
    _fake_run(work / "candidate_2", 200.0, "bf16", 50, 0.40)
    out = tmp_path / "res" / "pipeline_time"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "pipeline_time.py"
    proc = subprocess.run([sys.executable, str(script), "--collect", "--work", str(work), "--rounds", "2",
                           "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["speedup_per_round"] == [2.0, 2.5]
    assert "median 2.25x [2.00, 2.50]" in proc.stdout
    first = saved["rows"][0]
    assert first["variant"] == "baseline" and first["train stages s"] == 500.0 and first["other stages s"] == 20.0
    assert saved["rows"][1]["candidate iters"] == 50


def test_collect_names_a_missing_run(tmp_path):
    mod = load_benchmark("pipeline_time")
    try:
        mod.read(tmp_path / "nothing")
    except SystemExit as e:
        assert "pipeline.json: missing" in str(e)
    else:
        raise AssertionError("no error for a missing run")
