"""The training engine: one loop for every detector, method, device and process count.

Around it: :mod:`~swdet.train.distributed` (the process context and seeding),
:mod:`~swdet.train.schedule` (learning rate, autocast), :mod:`~swdet.train.runlog`
(``log.jsonl``), :mod:`~swdet.train.checkpoint` (writing checkpoints, RNG states); datasets are
found by the data layer (:func:`swdet.data.find_split`).

``train(cfg, out_dir, resume=False)`` writes the run directory of docs/design.md:

- ``checkpoints/last.pt``: full training state, written atomically every ``ckpt_every``
  iterations, at least every ``ckpt_minutes`` minutes, on SIGINT / SIGTERM
  (:mod:`~swdet.train.interrupt`) and at the end (model, weighting networks, optimizers,
  scheduler, scaler, iteration, RNG, data position, method state, cached statistics);
- ``model.safetensors`` + ``model.json``: the deployable artifact (the detector only);
- ``log.jsonl``, ``metrics.json``, ``plots/``.

The RetinaNet step has no host-device synchronization on CUDA: positives are counted on the host
when the batch is collated, losses are accumulated on the device and read every ``log_every``
steps, and a non-finite loss skips the update through the fused optimizers' ``found_inf`` flag
(the mechanism ``torch.amp.GradScaler`` uses). On the CPU the same check is a plain branch. The
Faster R-CNN step has one (the positive RoIs' selection; see :mod:`swdet.train.rcnn_loss`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from swdet.artifact import (
    atomic_write_json,
    build_metadata,
    derive_threshold,
    postprocess_with_threshold,
    save_artifact,
)
from swdet.config import Config
from swdet.data.splits import find_split
from swdet.errors import Interrupted, SwdetError, TrainingDiverged
from swdet.models import build_model, count_parameters
from swdet.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from swdet.train.interrupt import GracefulStop, signal_hook, signal_name
from swdet.train.distributed import all_gather, seed_everything, setup_distributed
from swdet.train.methods import MethodSet, build_methods
from swdet.train.retina_loss import build_detector_loss
from swdet.train.runlog import Accumulator, JsonlLog
from swdet.train.schedule import amp_dtype, fused_optimizers, lr_factor


# ----------------------------------------------------------------------------------------------
# The trainable bundle: detector + training-only modules


class TrainModule(nn.Module):
    """What DDP wraps: the detector and the training-only weighting modules side by side.

    Only ``detector`` is ever exported or written to the artifact; ``weighting`` lives in
    ``checkpoints/`` alone.
    """

    def __init__(self, detector: nn.Module, weighting: nn.ModuleDict):
        super().__init__()
        self.detector = detector
        self.weighting = weighting

    def forward(self, images, assign, criterion_fn, iteration: int):
        outputs = self.detector(images)
        return criterion_fn(outputs, assign, iteration)


# ----------------------------------------------------------------------------------------------
# Data


def build_dataset(cfg: Config, split: str, train: bool):
    from swdet.data.coco import CocoDetection

    ann, images = find_split(cfg.data, split)
    return CocoDetection(ann, images, imgsz=cfg.model.imgsz, train=train, hflip=cfg.data.hflip,
                         scale_jitter=tuple(cfg.data.scale_jitter), seed=cfg.train.seed)


# ----------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    def __init__(self, cfg: Config, out_dir: str | Path, resume: bool = False, progress: bool = True):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.resume = resume
        self.progress = progress
        self.ctx = setup_distributed(cfg.train.device)
        self.device = self.ctx.device
        seed_everything(cfg.train.seed + self.ctx.rank, cfg.train.deterministic, self.device)

    # -- setup -----------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, rt = self.cfg, self.ctx
        self.ckpt_path = self.out / "checkpoints" / "last.pt"
        if self.resume and not self.ckpt_path.is_file():
            raise SwdetError(f"{self.ckpt_path}: nothing to resume (no checkpoint in {self.out})")
        self.state = load_checkpoint(self.ckpt_path) if self.resume else None
        self.train_set = build_dataset(cfg, "train", train=True)
        self.train_set.require_boxes("train on")
        try:
            self.val_set = build_dataset(cfg, "val", train=False)
            self.val_set.require_boxes("evaluate against")
        except SwdetError as e:
            if rt.is_main:
                print(f"notice: no validation split ({e}); evaluation is skipped", file=sys.stderr)
            self.val_set = None
        if self.val_set is not None and self.val_set.category_ids != self.train_set.category_ids:
            raise SwdetError(f"{self.val_set.ann_file}: categories {self.val_set.category_ids} differ from the "
                             f"training split's {self.train_set.category_ids}")
        cfg.model.num_classes = len(self.train_set.class_names)

        self.methods: MethodSet = build_methods(cfg.loss.method, cfg.methods, arch=cfg.model.arch)
        for w in self.methods.warnings:
            if rt.is_main:
                warnings.warn(w, stacklevel=1)
        # resuming: every weight comes from the checkpoint, so the initial backbone file is not read again
        detector = build_model(dataclasses.replace(cfg.model, pretrained="none") if self.resume else cfg.model)
        self.loss = build_detector_loss(cfg, self.methods, self.device)

        # Sampling-Free statistics: N_f and N from matching anchors to every training image once.
        self.stats = self.state.get("stats") if self.state else None
        if self.stats is None and self.methods.needs_stats:
            from swdet.train.stats import anchor_statistics

            self.stats = anchor_statistics(self.train_set, self.loss.stats_assigner, cache_dir=self.out,
                                           progress=self.progress and rt.is_main, device=self.device)
        if self.state is None:
            self.methods.prepare(detector, self.stats)

        weighting = self.methods.modules()
        self.module = TrainModule(detector, weighting).to(self.device)
        if self.device.type == "cuda" and cfg.train.channels_last:
            self.module.detector.to(memory_format=torch.channels_last)

        fused = fused_optimizers(self.device)
        params = [p for p in detector.parameters() if p.requires_grad]
        if cfg.train.optimizer == "adamw":
            # No weight decay on norm scales/shifts and biases (1-d parameters), as is usual for AdamW.
            decay = [p for p in params if p.ndim > 1]
            no_decay = [p for p in params if p.ndim <= 1]
            self.optimizer = torch.optim.AdamW(
                [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.train.lr,
                betas=(cfg.train.momentum, 0.999), weight_decay=cfg.train.weight_decay,
                **({"fused": True} if fused else {}))
        else:
            self.optimizer = torch.optim.SGD(params, lr=cfg.train.lr, momentum=cfg.train.momentum,
                                             weight_decay=cfg.train.weight_decay, **({"fused": True} if fused else {}))
        if fused and cfg.train.optimizer == "sgd":
            # Fused SGD skips a step on device when found_inf is set; if the very first step were
            # skipped its momentum buffers would stay uninitialized, so start them at zero (the
            # same update: with no dampening the first step sets buf = grad = 0·m + grad).
            for p in params:
                self.optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)
        self.w_optimizer = self.methods.optimizer(weighting, fused=fused)
        self.amp = amp_dtype(cfg.train.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None

        self.diagnostics = self.loss.diagnostics
        self.model = self.module
        if rt.distributed:
            self.model = nn.parallel.DistributedDataParallel(
                self.module, device_ids=[self.device.index] if self.device.type == "cuda" else None)

        from swdet.data.loader import build_loader

        per_rank = max(1, cfg.train.batch_size // rt.world_size)
        self.loader = build_loader(self.train_set, per_rank, train=True, workers=cfg.data.workers,
                                   seed=cfg.train.seed,
                                   distributed=(rt.rank, rt.world_size) if rt.distributed else None,
                                   batch_transform=self.loss.assigner)
        self.iters_per_epoch = len(self.loader)
        self.total = cfg.train.iters or cfg.train.epochs * self.iters_per_epoch
        if self.total <= 0:
            raise SwdetError("nothing to train: set --iters N or --epochs N (positive)")

        self.start_iter = 0
        self.history: dict = {"skipped_steps": 0}
        if self.state is not None:
            self._restore(self.state)
        self.log = JsonlLog(self.out / "log.jsonl", rt.is_main)
        if rt.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "checkpoints").mkdir(exist_ok=True)
            if self.resume:
                self.log.truncate_after(self.start_iter)
            elif (self.out / "log.jsonl").exists():
                (self.out / "log.jsonl").unlink()
            atomic_write_json(self.out / "config.json", cfg.to_dict())

    # -- checkpoint --------------------------------------------------------------------------
    def _state(self, iteration: int) -> dict:
        return {
            "iteration": iteration,
            "model": self.module.detector.state_dict(),
            "weighting": self.module.weighting.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "weighting_optimizer": self.w_optimizer.state_dict() if self.w_optimizer else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "methods": self.methods.state_dict(),
            "loss": self.loss.state_dict(),
            "rng": self._all_rng_states(),
            "config": self.cfg.to_dict(),
            "stats": self.stats,
            "history": self.history,
            "class_names": self.train_set.class_names,
            "category_ids": self.train_set.category_ids,
        }

    def _restore(self, state: dict) -> None:
        self.module.detector.load_state_dict(state["model"])
        self.module.weighting.load_state_dict(state["weighting"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.w_optimizer and state.get("weighting_optimizer"):
            self.w_optimizer.load_state_dict(state["weighting_optimizer"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.methods.load_state_dict(state.get("methods", {}))
        self.loss.load_state_dict(state.get("loss", {}))
        rng = state["rng"]
        if isinstance(rng, list):  # one state per DDP rank
            rng = rng[self.ctx.rank] if self.ctx.rank < len(rng) else rng[0]
        set_rng_state(rng)
        self.history = state.get("history", self.history)
        self.start_iter = int(state["iteration"])

    def _all_rng_states(self):
        """Every rank's RNG state (a list under DDP, so each rank resumes its own stream)."""
        return all_gather(self.ctx, rng_state()) if self.ctx.distributed else rng_state()

    def save(self, iteration: int) -> None:
        state = self._state(iteration)  # every rank takes part (the RNG gather is collective)
        if self.ctx.is_main:
            save_checkpoint(self.ckpt_path, state)

    # -- the step ----------------------------------------------------------------------------
    def step(self, images, assign, iteration: int) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg.train
        images = images.to(self.device, non_blocking=True)
        if self.device.type == "cuda" and cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        assign = assign.to(self.device)
        factor = lr_factor(iteration, self.total, cfg)
        for g in self.optimizer.param_groups:
            g["lr"] = cfg.lr * factor
        if self.w_optimizer is not None:
            for g in self.w_optimizer.param_groups:
                g["lr"] = g.setdefault("initial_lr", g["lr"]) * factor
        autocast = (torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None else contextlib.nullcontext())
        with autocast:
            total, parts = self.model(images, assign, self.loss, iteration)
        ok = torch.isfinite(total.detach())
        optims = [o for o in (self.optimizer, self.w_optimizer) if o is not None]
        for o in optims:
            o.zero_grad(set_to_none=True)
        if self.device.type == "cpu" and not bool(ok):  # CPU: a branch costs nothing
            return ok, parts
        (self.scaler.scale(total) if self.scaler else total).backward()
        if self.scaler:
            for o in optims:
                self.scaler.unscale_(o)
        if cfg.grad_clip > 0:
            # one norm over the detector and the training-only weighting networks (SWN's code)
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), cfg.grad_clip)
        if self.scaler:
            for o in optims:
                self.scaler.step(o)
            self.scaler.update()
        else:
            bad = (~ok).float()
            for o in optims:
                if self.device.type == "cuda":  # fused optimizers skip the update on device
                    o.grad_scale, o.found_inf = None, bad
                o.step()
        return ok, parts

    # -- the loop ----------------------------------------------------------------------------
    def fit(self) -> dict:
        """The training loop, inside :class:`~swdet.train.interrupt.GracefulStop`: SIGINT and
        SIGTERM finish the current step, write a checkpoint of that iteration and raise
        :class:`~swdet.errors.Interrupted`."""
        with GracefulStop(announce=self.ctx.is_main) as stop:
            self.stop = stop
            return self._fit(stop)

    def _stop_or_save(self, stop: GracefulStop, now: float) -> tuple[bool, bool]:
        """(stop requested, time-based checkpoint due), the same on every DDP rank: one small
        all-reduce (max) per step, so a signal that reaches the ranks at different iterations
        still stops them all after the same one."""
        minutes = self.cfg.train.ckpt_minutes
        due = bool(minutes) and now - self._t_ckpt >= 60.0 * minutes
        if not self.ctx.distributed:
            return stop.requested, due
        flags = torch.tensor([float(stop.signum or 0), float(due)], device=self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)  # a rank's SIGTERM (15) outranks SIGINT (2)
        signum, due = int(flags[0].item()), bool(flags[1].item())
        if signum and stop.signum is None:
            stop.signum = signum
        return bool(signum), due

    def _fit(self, stop: GracefulStop) -> dict:
        from tqdm import tqdm

        from swdet.data.loader import iterate_batches
        from swdet.report import relay

        cfg, rt = self.cfg, self.ctx
        self.module.train()
        start = self.start_iter
        acc = Accumulator()
        bad_total = torch.zeros((), device=self.device)
        bad_run = torch.zeros((), device=self.device)
        t_start = time.perf_counter()
        t_log, n_log = t_start, 0
        self._t_ckpt = t_start
        hook = signal_hook()
        bar = tqdm(total=self.total, initial=start, disable=not (self.progress and rt.is_main), unit="it",
                   dynamic_ncols=True, desc="train")
        batches = iter(iterate_batches(self.loader, start_iter=start, iters_per_epoch=self.iters_per_epoch))
        iteration = start
        for iteration in range(start + 1, self.total + 1):
            stop.iteration = iteration - 1
            if hook is not None and hook[0] == iteration and hook[2] in (None, rt.rank):
                for signum in hook[1]:
                    os.kill(os.getpid(), signum)
            epoch, (images, targets, assign) = next(batches)
            relay(targets)  # data warnings from loader workers, reported once by the main process
            ok, parts = self.step(images, assign, iteration - 1)
            stop.iteration = iteration
            bad = (~ok).float()
            bad_total += bad
            bad_run = (bad_run + bad) * bad
            acc.add({**parts, **self.methods.diagnostics()})
            n_log += 1
            bar.update(1)
            last = iteration == self.total
            if iteration % cfg.train.log_every == 0 or last:
                means = acc.means()
                consecutive, skipped = int(bad_run), int(bad_total)  # sync once per log interval
                now = time.perf_counter()
                rec = {"iter": iteration, "epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"],
                       "it_s": n_log / max(1e-9, now - t_log), "time": now - t_start,
                       "skipped_steps": self.history["skipped_steps"] + skipped,
                       **{k: v for k, v in means.items()},
                       **self.diagnostics.summary(keep=iteration > 0.75 * self.total)}
                rec["loss"] = sum(v for k, v in means.items() if k in self._loss_keys(means))
                rec = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in rec.items()}
                self.log.write(rec)
                t_log, n_log = now, 0
                bar.set_postfix({k: f"{v:.3f}" for k, v in means.items() if k in self._loss_keys(means)},
                                refresh=False)
                if consecutive >= cfg.train.max_bad_steps or skipped >= 2 * cfg.train.max_bad_steps + \
                        iteration // 100:
                    self.history["skipped_steps"] += skipped
                    bar.close()
                    kept = (f"the last good checkpoint {self.ckpt_path} is intact" if self.ckpt_path.is_file()
                            else "no checkpoint had been written yet")
                    raise TrainingDiverged(
                        f"training stopped at iteration {iteration}: {skipped} non-finite losses "
                        f"({consecutive} in a row); {kept} (lower train.lr or enable train.grad_clip)")
            requested, due = self._stop_or_save(stop, time.perf_counter())
            if requested:  # (also after the last step: the artifact and evaluation wait for --resume)
                bar.close()
                self.history["skipped_steps"] += int(bad_total)
                self.history["train_time_s"] = (self.history.get("train_time_s", 0.0)
                                                + time.perf_counter() - t_start)
                self.save(iteration)
                raise Interrupted(f"interrupted by {signal_name(stop.signum)} after iteration {iteration} of "
                                  f"{self.total}; checkpoint {self.ckpt_path} holds iteration {iteration}",
                                  stop.signum)
            if last:
                break
            if due or (cfg.train.ckpt_every and iteration % cfg.train.ckpt_every == 0):
                self.history["skipped_steps"] += int(bad_total)
                bad_total.zero_()
                self.save(iteration)
                self._t_ckpt = time.perf_counter()
            if cfg.train.eval_every and iteration % cfg.train.eval_every == 0:
                if rt.is_main:
                    metrics = self.evaluate(progress=False)
                    self.log.write({"iter": iteration, **{f"val/{k}": v for k, v in metrics.items()}})
                    self.module.train()
                if rt.distributed:  # the other ranks wait here (the process group has a long timeout)
                    dist.barrier()
        bar.close()
        self.history["skipped_steps"] += int(bad_total)
        self.history["train_time_s"] = self.history.get("train_time_s", 0.0) + time.perf_counter() - t_start
        self.save(iteration)
        return {"iterations": self.total, "skipped_steps": self.history["skipped_steps"],
                "train_time_s": self.history["train_time_s"],
                "autocast": "fp32" if self.amp is None else str(self.amp).replace("torch.", "")}

    @staticmethod
    def _loss_keys(means: dict) -> list[str]:
        return [k for k in means if not k.startswith(("diag/", "swn/"))]

    # -- evaluation and artifact -------------------------------------------------------------
    def predictor(self):
        from swdet.models import Predictor

        return Predictor(self.module.detector, self.postprocess_config(), self.device)

    def postprocess_config(self):
        return postprocess_with_threshold(self.cfg.postprocess, self.threshold_info())

    def threshold_info(self) -> dict:
        return derive_threshold(self.cfg, self.stats)

    def evaluate(self, progress: bool = True) -> dict:
        if self.val_set is None:
            return {}
        from swdet.inference import evaluate_runtime

        ev = evaluate_runtime(self.predictor(), dataset=self.val_set, category_ids=self.train_set.category_ids,
                              batch_size=max(1, self.cfg.train.batch_size), workers=min(self.cfg.data.workers, 2),
                              progress=progress and self.progress)
        self.last_eval, self.last_predictions = ev.result, ev.predictions
        return dict(self.last_eval.stats)

    def write_artifact(self) -> Path:
        meta = build_metadata(
            self.cfg.model, self.postprocess_config(), class_names=self.train_set.class_names,
            category_ids=self.train_set.category_ids, method=self.cfg.loss.method,
            threshold=self.threshold_info(),
            training={"iterations": self.total, "config": self.cfg.to_dict()},
            num_parameters=count_parameters(self.module.detector))
        return save_artifact(self.out, self.module.detector, meta)


def train(cfg: Config, out_dir: str | Path, *, resume: bool = False, progress: bool = True,
          evaluate: bool = True) -> dict:
    """Train, write the run directory, evaluate on the val split; returns the summary."""
    trainer = Trainer(cfg, out_dir, resume=resume, progress=progress)
    trainer.setup()
    summary = trainer.fit()
    result: dict = {"out": str(trainer.out), **summary}
    if trainer.ctx.is_main:
        trainer.write_artifact()
        if evaluate and trainer.val_set is not None:
            from swdet.evaluation import plot_pr_curve, write_metrics_json, write_predictions_json

            stats = trainer.evaluate()
            write_predictions_json(trainer.out / "predictions_val.json", trainer.last_predictions)
            from swdet.train.diagnostics import prenms_score_iou_correlation

            diag = trainer.diagnostics.final_summary()
            diag["eval/prenms_score_iou_corr"] = prenms_score_iou_correlation(trainer.predictor(), trainer.val_set)
            write_metrics_json(trainer.out / "metrics.json", trainer.last_eval,
                               extra={"train": summary, "method": trainer.cfg.loss.method,
                                      "threshold": trainer.threshold_info(), "diagnostics": diag})
            (trainer.out / "plots").mkdir(exist_ok=True)
            plot_pr_curve(trainer.last_eval, trainer.out / "plots" / "pr_curve.png")
            result["metrics"] = stats
            result["eval"] = trainer.last_eval
        from swdet.train.plots import plot_run

        plot_run(trainer.out)
    if trainer.ctx.distributed:
        dist.barrier()
        dist.destroy_process_group()
    return result
