"""Interrupt-safe training through the installed ``swdet`` command: SIGINT / SIGTERM finish the
step, checkpoint that exact iteration, print the resume command and exit 130 / 143; resuming
gives the weights of an uninterrupted run.

To interrupt at an exact iteration the tests use the trainer's hook ``SWDET_TEST_SIGNAL=K:SIG``
(``swdet.train.interrupt``): the trainer sends itself SIG at the start of iteration K.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import torch

from conftest import TINY_TRAIN

TOTAL = 10


def _swdet(*args, env_extra=None):
    exe = shutil.which("swdet")
    assert exe, "the swdet console script is not on PATH"
    env = {k: v for k, v in os.environ.items() if k != "SWDET_TEST_SIGNAL"}
    env.update(env_extra or {})
    return subprocess.run([exe, *args], capture_output=True, text=True, env=env, timeout=600)


def _train(data, out, *extra, signal_at=None):
    env = {"SWDET_TEST_SIGNAL": signal_at} if signal_at else None
    return _swdet("train", "--data", str(data), "--iters", str(TOTAL), "--out", str(out), "--no-eval",
                  "--ckpt-every", "4", *TINY_TRAIN, *extra, env_extra=env)


@pytest.fixture(scope="module")
def reference(synth_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref"
    res = _train(synth_data, out)
    assert res.returncode == 0, res.stderr[-2000:]
    return torch.load(out / "checkpoints/last.pt", weights_only=True)


def _ckpt(run):
    return torch.load(run / "checkpoints/last.pt", weights_only=True)


@pytest.mark.parametrize("sig, status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_signal_checkpoints_that_iteration_and_resume_is_exact(synth_data, tmp_path, reference, sig, status):
    run = tmp_path / "run"
    res = _train(synth_data, run, signal_at=f"7:{sig}")  # 7 is not a multiple of --ckpt-every 4
    assert res.returncode == status, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr
    assert _ckpt(run)["iteration"] == 7
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"interrupted by {sig} after iteration 7 of {TOTAL}")
    assert f"resume with: swdet train --out {run} --resume --quiet --no-eval" in last
    again = _swdet("train", "--out", str(run), "--resume", "--quiet", "--no-eval")
    assert again.returncode == 0, again.stderr[-2000:]
    final = _ckpt(run)
    assert final["iteration"] == TOTAL
    for k, v in reference["model"].items():  # CPU, deterministic: bit-exact with the uninterrupted run
        torch.testing.assert_close(final["model"][k], v, rtol=0, atol=0)
    torch.testing.assert_close(final["optimizer"]["state"], reference["optimizer"]["state"], rtol=0, atol=0)


def test_second_signal_stops_at_once_and_keeps_the_last_checkpoint(synth_data, tmp_path):
    run = tmp_path / "run"
    res = _train(synth_data, run, signal_at="6:SIGINT,SIGINT")  # two Ctrl-C at the start of iteration 6
    assert res.returncode == 130, res.stderr[-2000:]
    assert "again: stopped at once" in res.stderr and "Traceback" not in res.stderr
    assert _ckpt(run)["iteration"] == 4  # the last good checkpoint, intact and loadable
    assert not [p for p in (run / "checkpoints").iterdir() if p.name != "last.pt"]  # no temp files left


def test_time_based_checkpoint(synth_data, tmp_path):
    from swdet.config import load_config
    from swdet.train.engine import Trainer

    cfg = load_config(None, ["model=retinanet_tiny", "model.imgsz=128", f"data.root={synth_data}",
                             "train.iters=3", "train.batch_size=2", "data.workers=0", "train.ckpt_every=0",
                             "train.ckpt_minutes=1e-9"])
    trainer = Trainer(cfg, tmp_path / "t", progress=False)
    trainer.setup()
    saved = []
    real = trainer.save
    trainer.save = lambda it: (saved.append(it), real(it))
    trainer.fit()
    assert saved == [1, 2, 3]  # every step once the interval has passed, then the end
    assert load_config(None).train.ckpt_minutes == 10.0


def test_signal_during_the_last_step_leaves_the_artifact_to_resume(synth_data, tmp_path, reference):
    run = tmp_path / "run"
    res = _train(synth_data, run, signal_at=f"{TOTAL}:SIGTERM")
    assert res.returncode == 143, res.stderr[-2000:]
    assert _ckpt(run)["iteration"] == TOTAL and not (run / "model.safetensors").exists()
    again = _swdet("train", "--out", str(run), "--resume", "--quiet", "--no-eval")
    assert again.returncode == 0, again.stderr[-2000:]
    assert (run / "model.safetensors").is_file()
    for k, v in reference["model"].items():
        torch.testing.assert_close(_ckpt(run)["model"][k], v, rtol=0, atol=0)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_ranks_agree_on_the_iteration_when_one_rank_is_signalled(synth_data, tmp_path):
    import socket
    import sys

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "swdet", "train", "--data", str(synth_data), "--iters", "6", "--out", str(out), "--no-eval",
           *TINY_TRAIN]
    env = dict(os.environ, OMP_NUM_THREADS="1", SWDET_TEST_SIGNAL="3:SIGTERM@1")  # rank 1 only
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode != 0  # the ranks exit 143; torchrun reports that as a failure
    assert _ckpt(out)["iteration"] == 3, res.stderr[-3000:]  # written by rank 0, which saw no signal
    assert "interrupted by SIGTERM after iteration 3 of 6" in res.stderr, res.stderr[-3000:]
    assert "internal error" not in res.stderr  # (torchrun itself reports the non-zero exits with a traceback)
