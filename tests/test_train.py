"""The training engine through the CLI and the Trainer: run directory, resume, NaN guard, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_TRAIN
from swdet.cli import main


def test_run_directory_contract(tiny_run):
    for f in ("checkpoints/last.pt", "model.safetensors", "model.json", "log.jsonl", "metrics.json",
              "plots/losses.png", "plots/pr_curve.png", "predictions_val.json"):
        assert (tiny_run / f).is_file(), f
    ckpt = torch.load(tiny_run / "checkpoints/last.pt", weights_only=True)
    assert ckpt["iteration"] == 6 and {"model", "optimizer"} <= set(ckpt)
    rows = [json.loads(line) for line in (tiny_run / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [2, 4, 6]
    assert all(torch.isfinite(torch.tensor(r["cls"])) and "reg" in r for r in rows)
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    for k in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert metrics[k] is None or 0.0 <= metrics[k] <= 1.0
    meta = json.loads((tiny_run / "model.json").read_text())
    assert meta["model"]["imgsz"] == 128 and "size" not in meta["input"] and meta["training"]["method"] == ["focal"]
    assert len(meta["classes"]["names"]) == len(meta["classes"]["category_ids"]) > 1


def test_artifact_is_the_detector_alone(tiny_run):
    from safetensors.torch import load_file

    from swdet.artifact import load_artifact

    model, meta = load_artifact(tiny_run)
    state = load_file(str(tiny_run / "model.safetensors"))
    assert set(state) == set(model.state_dict())
    assert not any(k.startswith(("weighting", "swn")) for k in state)


def _train_cmd(data, out, iters, *extra):
    return [sys.executable, "-m", "swdet", "train", "--data", str(data), "--iters", str(iters), "--out", str(out),
            "--no-eval", "--ckpt-every", "4", *TINY_TRAIN, *extra]


def test_sigkill_then_resume_finishes_without_repeating(synth_data, tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    total = 24  # the kill lands at the first checkpoint (iteration 4), long before the end
    subprocess.run(_train_cmd(synth_data, ref, total), check=True, capture_output=True)
    proc = subprocess.Popen(_train_cmd(synth_data, run, total), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = torch.load(ckpt, weights_only=True)["iteration"]
    assert 4 <= first < total, "the kill must land after a checkpoint and before the end"
    res = subprocess.run([sys.executable, "-m", "swdet", "train", "--out", str(run), "--resume", "--quiet",
                          "--no-eval"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    a = torch.load(ref / "checkpoints/last.pt", weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    assert b["iteration"] == total
    for k in a["model"]:  # deterministic on CPU: the resumed run is the uninterrupted run
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)
    iters = [json.loads(line)["iter"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert iters == sorted(set(iters)) and iters[-1] == total


def test_non_finite_loss_is_skipped_then_repeated_ones_stop(synth_data, tmp_path):
    from swdet.config import load_config
    from swdet.errors import TrainingDiverged
    from swdet.train.engine import Trainer

    cfg = load_config(None, ["model=retinanet_tiny", "model.imgsz=128", f"data.root={synth_data}",
                             "train.iters=12", "train.batch_size=2", "data.workers=0", "train.log_every=1",
                             "train.ckpt_every=2", "train.max_bad_steps=3"])
    trainer = Trainer(cfg, tmp_path / "nan", progress=False)
    trainer.setup()
    real = trainer.loss.criterion
    calls = {"n": 0}

    def poisoned(rec):
        calls["n"] += 1
        total, parts = real(rec)
        # one bad step at iteration 2, then every step from iteration 6 on
        bad = calls["n"] == 2 or calls["n"] >= 6
        return (total * float("nan") if bad else total), parts

    trainer.loss.criterion = poisoned
    before = {k: v.clone() for k, v in trainer.module.detector.state_dict().items()}
    with pytest.raises(TrainingDiverged, match="non-finite"):
        trainer.fit()
    ckpt = torch.load(tmp_path / "nan/checkpoints/last.pt", weights_only=True)
    assert ckpt["iteration"] == 6  # the last checkpoint before the run stopped, intact
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert any(not torch.equal(before[k], v) for k, v in ckpt["model"].items())
    rows = [json.loads(line) for line in (tmp_path / "nan/log.jsonl").read_text().splitlines()]
    assert rows[2]["skipped_steps"] >= 1  # the lone bad step was counted and training went on


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_two_cpu_processes_gloo(synth_data, tmp_path):
    out = tmp_path / "ddp"
    import socket

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "swdet", "train", "--data", str(synth_data), "--iters", "4", "--out", str(out), "--no-eval",
           *TINY_TRAIN]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    ckpt = torch.load(out / "checkpoints/last.pt", weights_only=True)
    assert ckpt["iteration"] == 4 and (out / "model.safetensors").is_file()
    assert res.stdout.count("training finished") == 1  # only rank 0 reports


@pytest.mark.parametrize("args, needle", [
    (["--method", "focall"], "unknown method"),
    (["--model", "retinanet_huge"], "unknown model"),
    (["--iters", "-5"], "non-negative"),
    (["--method", "focal,bce"], "both base losses"),
    (["--set", "loss.reg_loss=ghm_r", "--model", "faster_rcnn_tiny"], "ghm_r is RetinaNet's"),
    (["--method", "pisa,swn", "--set", "loss.reg_loss=ghm_r"], "ghm_r only with a base loss"),
    (["--method", "pisa", "--set", "loss.reg_loss=ghm_r"], "ghm_r only with a base loss"),
])
def test_bad_training_options_are_one_line(synth_data, tmp_path, capsys, args, needle):
    rc = main(["train", "--data", str(synth_data), "--out", str(tmp_path / "x"), "--iters", "2", *TINY_TRAIN, *args])
    err = capsys.readouterr().err
    assert rc != 0 and needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_bad_dataset_paths_are_one_line(tmp_path, capsys):
    rc = main(["train", "--data", str(tmp_path / "missing"), "--iters", "2", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc != 0 and "data directory not found" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "d" / "annotations").mkdir(parents=True)
    (tmp_path / "d" / "train").mkdir()
    (tmp_path / "d" / "annotations" / "instances_train.json").write_text("{ not json")
    rc = main(["train", "--data", str(tmp_path / "d"), "--iters", "2", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc != 0 and "instances_train.json" in err and "Traceback" not in err


def test_ghm_c_with_ghm_r_trains_and_keeps_both_running_averages(synth_data, tmp_path):
    """The GHM paper's pair (GHM-C + GHM-R, the authors' RetinaNet config) trains; both running
    averages are in the checkpoint and a resumed run picks them up."""
    from swdet.config import load_config
    from swdet.train.engine import Trainer

    out = tmp_path / "ghm"
    rc = main(["train", "--data", str(synth_data), "--iters", "3", "--out", str(out), *TINY_TRAIN, "--no-eval",
               "--method", "ghm", "--set", "loss.reg_loss=ghm_r", "--set", "loss.reg_weight=10"])
    assert rc == 0
    state = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["loss"]
    cls_acc, reg_acc = state["cls_loss"]["acc_sum"], state["reg_loss"]["acc_sum"]
    assert cls_acc.shape == (30,) and reg_acc.shape == (10,)
    assert float(cls_acc.sum()) > 0 and float(reg_acc.sum()) > 0
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(0 < r["reg"] < float("inf") for r in rows)
    cfg = load_config(None, ["model=retinanet_tiny", "model.imgsz=128", f"data.root={synth_data}", "train.iters=4",
                             "train.batch_size=4", "data.workers=0", "loss.method=ghm", "loss.reg_loss=ghm_r"])
    trainer = Trainer(cfg, out, resume=True, progress=False)
    trainer.setup()
    torch.testing.assert_close(trainer.loss.reg_loss.acc_sum, reg_acc)


def test_adamw_and_deeper_tiny_backbone_train(synth_data, tmp_path):
    out = tmp_path / "adamw"
    rc = main(["train", "--data", str(synth_data), "--iters", "3", "--out", str(out), *TINY_TRAIN,
               "--set", "train.optimizer=adamw", "--set", "train.lr=0.002", "--set", "model.backbone_blocks=[1,1,2,2]"])
    assert rc == 0
    state = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    opt = state["optimizer"]
    assert {"exp_avg", "exp_avg_sq"} <= set(next(iter(opt["state"].values())))
    assert [g["weight_decay"] for g in opt["param_groups"]][1] == 0.0  # no decay on norms and biases
    names = load_file(out / "model.safetensors").keys()
    assert any(n.startswith("backbone.layer4.1.") for n in names)  # the second C5 block is in the artifact


def test_existing_run_needs_resume_or_overwrite(tiny_run, synth_data, capsys):
    rc = main(["train", "--data", str(synth_data), "--iters", "2", "--out", str(tiny_run), *TINY_TRAIN])
    assert rc != 0 and "--resume" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_retinanet_step_does_not_synchronize_on_cuda(synth_data, tmp_path):
    """The whole RetinaNet training step (forward, weighted loss with PISA+SWN, backward, fused
    optimizers with the non-finite guard, diagnostics) runs with no host-device sync."""
    from swdet.config import load_config
    from swdet.data.loader import build_loader, iterate_batches
    from swdet.train.engine import Trainer

    cfg = load_config(None, ["model=retinanet_tiny", "model.imgsz=128", f"data.root={synth_data}",
                             "train.iters=10", "train.batch_size=2", "data.workers=0", "train.device=cuda",
                             "loss.method=pisa,swn"])
    trainer = Trainer(cfg, tmp_path / "sync", progress=False)
    trainer.setup()
    trainer.module.train()
    loader = build_loader(trainer.train_set, 2, train=True, workers=0, batch_transform=trainer.loss.assigner)
    stream = iter(iterate_batches(loader))
    batches = [next(stream)[1] for _ in range(4)]
    for images, _, assign in batches[:2]:  # warm up (lazy CUDA init may sync)
        trainer.step(images.pin_memory(), assign.pin_memory(), 0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i, (images, _, assign) in enumerate(batches[2:]):
            trainer.step(images.pin_memory(), assign.pin_memory(), i + 2)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_eval_finds_the_val_split_under_data_like_train(tiny_run, synth_data, tmp_path, capsys):
    by_dir, by_files = tmp_path / "dir.json", tmp_path / "files.json"
    assert main(["eval", str(tiny_run), "--data", str(synth_data), "--device", "cpu", "--quiet",
                 "--json", str(by_dir)]) == 0
    assert main(["eval", str(tiny_run), "--ann", str(synth_data / "annotations" / "instances_val.json"),
                 "--images", str(synth_data / "val"), "--device", "cpu", "--quiet", "--json", str(by_files)]) == 0
    a, b = json.loads(by_dir.read_text()), json.loads(by_files.read_text())
    assert a["AP"] == b["AP"] and a["num_images"] == b["num_images"] == 12
    capsys.readouterr()
    assert main(["eval", str(tiny_run), "--data", str(synth_data), "--ann", "x.json"]) == 2
    assert main(["eval", str(tiny_run)]) == 2
    assert main(["eval", str(tiny_run), "--data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "not both" in err[0] and "--data DIR" in err[1] and "data directory not found" in err[2]
