"""What the command line says names what the user typed: the flag a bad value came from (not the
config file), the models ``swdet verify`` was given (not its temporary exports)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from swdet.cli import main

CONFIG = "configs/retinanet_tiny.yaml"


def _swdet(*args):
    return subprocess.run([shutil.which("swdet"), *args], capture_output=True, text=True, timeout=600)


def test_a_bad_flag_value_names_the_flag_through_the_command(tmp_path):
    res = _swdet("train", CONFIG, "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--batch-size", "0")
    assert res.returncode == 2 and res.stderr.strip() == "error: --batch-size: train.batch_size must be at least 1"


@pytest.mark.parametrize("args, line", [
    (["--imgsz", "100"], "error: --imgsz: model.imgsz 100: must be a multiple of 32, at least 64"),
    (["--lr", "0"], "error: --lr: train.lr must be positive"),
    (["--set", "train.lr=abc"], "error: --set: train.lr: expected a number, got 'abc'"),
    (["--set", "model.min_level=1"], "error: --set: model.min_level/max_level must be"),
    (["--set", "train.ckpt_minutes=-1"], "error: --set: train.ckpt_minutes must be non-negative"),
])
def test_flag_and_set_values_are_blamed_on_the_option(tmp_path, capsys, args, line):
    rc = main(["train", CONFIG, "--data", str(tmp_path), "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(line) and len(err.splitlines()) == 1


def test_a_bad_value_in_the_file_still_names_the_file(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  batch_size: 0\n")
    rc = main(["train", str(cfg), "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert rc == 2 and capsys.readouterr().err.strip() == f"error: {cfg}: train.batch_size must be at least 1"


def test_verify_report_names_what_the_user_passed(tiny_run, tmp_path):
    res = _swdet("verify", str(tiny_run), str(tiny_run), "--rounds", "3", "--batch-size", "1")
    assert res.returncode in (0, 1), res.stderr
    header = next(ln for ln in res.stdout.splitlines() if ln.startswith("verify:"))
    assert header == f"verify: {tiny_run} (baseline) vs {tiny_run} (candidate)"
    assert "swdet-verify-" not in res.stdout
