"""The installed ``swdet`` console script, run as a user's shell runs it: exit statuses a script can
rely on, one line on stderr for a user error, never a traceback.

``swdet.cli.main`` runs click with ``standalone_mode=False``, where click *returns* the code of a
``click.exceptions.Exit`` instead of raising it; these tests run the real entry point in a
subprocess so that a returned code that never reaches the shell is caught.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_serve_helpers import export_onnx, make_artifact


def swdet_exe() -> str:
    exe = shutil.which("swdet") or str(Path(sys.executable).parent / "swdet")
    if not Path(exe).is_file():
        pytest.skip("the swdet console script is not installed (pip install -e .)")
    return exe


def run(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SWDET_DEBUG"}
    env.setdefault("OMP_NUM_THREADS", "2")
    return subprocess.run([swdet_exe(), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def assert_one_line_error(res: subprocess.CompletedProcess, needle: str = "") -> None:
    assert res.returncode != 0, res
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error:"), lines[0]
    assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory):
    """Two exports of one random-weights model: at 128 px twice (the same cost) and at 160 px."""
    root = tmp_path_factory.mktemp("console")
    art = make_artifact(root / "run", seed=0)
    return {"run": art, "a": export_onnx(art, root / "a.onnx"), "a2": export_onnx(art, root / "a2.onnx"),
            "big": export_onnx(art, root / "big.onnx", imgsz=160)}


def test_verify_failing_exits_non_zero(onnx_pair):
    res = run("verify", str(onnx_pair["a"]), str(onnx_pair["big"]), "--rounds", "3", "--batch-size", "1")
    assert "FAILED" in res.stdout and "input differs" in res.stdout, res.stdout + res.stderr
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr


def test_verify_passing_exits_zero(onnx_pair):
    res = run("verify", str(onnx_pair["a"]), str(onnx_pair["a2"]), "--rounds", "3", "--batch-size", "1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip().splitlines()[-1].startswith("OK")


def test_user_error_is_one_line_and_non_zero(tmp_path):
    res = run("eval", str(tmp_path / "missing.onnx"), "--ann", str(tmp_path / "a.json"), "--images", str(tmp_path))
    assert_one_line_error(res, "missing.onnx")
    assert res.returncode == 2


@pytest.mark.parametrize("args", [["--help"], ["verify", "--help"], ["serve", "bench", "--help"], ["--version"]])
def test_help_and_version_exit_zero(args):
    res = run(*args)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() and not res.stderr.strip()


def test_usage_error_exits_two():
    res = run("export", "--no-such-option")
    assert res.returncode == 2 and "No such option" in res.stderr and "Traceback" not in res.stderr


# Every verb, with an input it must refuse: one line naming the problem, a non-zero exit.
VERBS = {
    "train": (["train", "--data", "{tmp}/no_data", "--iters", "1", "--out", "{tmp}/run"], "data directory not found"),
    "export": (["export", "{tmp}/nowhere", "--out", "{tmp}/x.onnx"], "no such file"),
    "calib": (["calib", "{tmp}/nowhere.onnx", "--images", "{tmp}", "--out", "{tmp}/x.int8.onnx"], "no such file"),
    "serve bench": (["serve", "bench", "{tmp}/nowhere.onnx", "--iters", "1"], "no such file"),
    "eval": (["eval", "{tmp}/nowhere.onnx", "--ann", "{tmp}/a.json", "--images", "{tmp}"], "no such file"),
    "predict": (["predict", "{tmp}/nowhere.onnx", "{tmp}", "--out", "{tmp}/p.json"], "no such file"),
    "verify": (["verify", "{tmp}/nowhere.onnx", "{tmp}/other.onnx"], "no such file"),
    "data": (["data", "from-yolo", "{tmp}/no_images", "{tmp}/no_labels", "--names", "a,b", "--out",
              "{tmp}/ann.json"], "no_images"),
    "pipeline": (["pipeline", "--out", "{tmp}/a_file/out", "--quiet"], "cannot create the output folder"),
}


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_fails_with_one_line(verb, tmp_path):
    args, needle = VERBS[verb]
    (tmp_path / "a_file").write_text("not a folder")
    res = run(*[a.format(tmp=tmp_path) for a in args], cwd=tmp_path)
    assert_one_line_error(res, needle)
