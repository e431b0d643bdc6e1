"""Checkpoints load with ``torch.load(weights_only=True)`` only: a run directory from elsewhere
cannot run code through its pickle, and every command that reads one refuses it with one line.
Checkpoints swdet writes hold tensors and plain containers (RNG states included), so they load
that way and resume bit-exactly (tests/test_train.py)."""

from __future__ import annotations

import pathlib
import random

import numpy as np
import pytest
import torch
from test_console_script import assert_one_line_error, run

from swdet.errors import SwdetError


class _TouchOnLoad:
    """Unpickling this calls ``Path.touch(marker)``: a stand-in for any code a pickle can run."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture()
def poisoned_run(tmp_path):
    run_dir = tmp_path / "downloaded_run"
    (run_dir / "checkpoints").mkdir(parents=True)
    marker = tmp_path / "pwned"
    state = {"iteration": 1, "model": {"w": torch.zeros(1)}, "config": {"model": "retinanet_tiny"},
             "class_names": ["a"], "category_ids": [1], "payload": _TouchOnLoad(marker)}
    torch.save(state, run_dir / "checkpoints" / "last.pt")
    return run_dir, marker


@pytest.mark.parametrize("command", ["export", "export_pt", "eval", "eval_pt", "resume", "verify"])
def test_poisoned_checkpoint_is_refused_and_never_runs(poisoned_run, tmp_path, command):
    run_dir, marker = poisoned_run
    ckpt = run_dir / "checkpoints" / "last.pt"
    ann = tmp_path / "ann.json"
    args = {
        "export": ["export", str(run_dir), "--out", str(tmp_path / "m.onnx")],
        "export_pt": ["export", str(ckpt), "--out", str(tmp_path / "m.onnx")],
        "eval": ["eval", str(run_dir), "--ann", str(ann), "--images", str(tmp_path)],
        "eval_pt": ["eval", str(ckpt), "--ann", str(ann), "--images", str(tmp_path)],
        "resume": ["train", "--out", str(run_dir), "--resume", "--quiet"],
        "verify": ["verify", str(ckpt), str(ckpt)],
    }[command]
    res = run(*args)
    assert_one_line_error(res)
    assert not marker.exists(), "the checkpoint's pickle ran"
    if command in ("export", "export_pt", "resume", "verify"):  # the ones that read checkpoints
        assert "last.pt: refused" in res.stderr


def test_reader_refuses_in_process_and_the_pickle_is_real(poisoned_run):
    from swdet.artifact import read_checkpoint

    run_dir, marker = poisoned_run
    ckpt = run_dir / "checkpoints" / "last.pt"
    with pytest.raises(SwdetError, match="refused"):
        read_checkpoint(ckpt)
    assert not marker.exists()
    torch.load(ckpt, weights_only=False)  # what the old reader did: the file is created
    assert marker.exists()


def test_written_checkpoints_are_plain_and_rng_round_trips(tmp_path):
    from swdet.artifact import read_checkpoint
    from swdet.train.checkpoint import plain_state, rng_state, save_checkpoint, set_rng_state

    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    np.random.standard_normal()  # a cached Gaussian in numpy's state
    state = {"iteration": 3, "model": {"w": torch.ones(2)}, "rng": rng_state(),
             "stats": {"num_fg": np.int64(7), "hist": np.arange(3)}}
    save_checkpoint(tmp_path / "c.pt", state)
    back = read_checkpoint(tmp_path / "c.pt", require=("iteration",))
    assert back["stats"]["num_fg"] == 7 and torch.equal(back["stats"]["hist"], torch.arange(3))
    expected = (random.random(), np.random.standard_normal(), np.random.rand(), torch.rand(1))
    set_rng_state(back["rng"])
    assert (random.random(), np.random.standard_normal(), np.random.rand()) == expected[:3]
    assert torch.equal(torch.rand(1), expected[3])
    with pytest.raises(TypeError, match=r"checkpoint\['x'\]: a object cannot go into a checkpoint"):
        plain_state({"x": object()})
