"""``swdet train``: train a detector and write a run directory."""

from __future__ import annotations

import os
from pathlib import Path

import click

from swdet.cli.common import CONTEXT, write_json
from swdet.errors import Interrupted, SwdetError


def _default_out(name: str) -> Path:
    base = Path("runs") / name
    if not base.exists():
        return base
    i = 2
    while Path(f"{base}{i}").exists():
        i += 1
    return Path(f"{base}{i}")


@click.command("train", context_settings=CONTEXT)
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--data", "data_root", help="COCO-format dataset folder (annotations/instances_{train,val}[2017].json).")
@click.option("--model", help="Model preset: retinanet_tiny, retinanet_r18_fpn, retinanet_r34_fpn, retinanet_r50_fpn, "
                              "faster_rcnn_tiny, faster_rcnn_r50_fpn.")
@click.option("--method", help="Loss/weighting methods, comma separated, e.g. focal, pisa, pisa,swn, sampling_free.")
@click.option("--iters", type=int, help="Total training iterations.")
@click.option("--epochs", type=int, help="Total epochs (when --iters is not given).")
@click.option("--batch-size", type=int, help="Global batch size (split across DDP processes).")
@click.option("--imgsz", type=int, help="Square input size (multiple of 32).")
@click.option("--lr", type=float, help="Base learning rate.")
@click.option("--device", help="auto | cpu | cuda | cuda:N.")
@click.option("--workers", type=int, help="Data-loader worker processes.")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory (default runs/<model>_<method>).")
@click.option("--ckpt-every", type=int, help="Checkpoint every N iterations (and always at the end; also at least "
                                           "every train.ckpt_minutes, 10, and on Ctrl-C / SIGTERM).")
@click.option("--eval-every", type=int, help="Evaluate on the val split every N iterations (plots/val_ap.png).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from checkpoints/last.pt.")
@click.option("--overwrite", is_flag=True, help="Train into an --out that already holds a run.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any config value, e.g. --set train.warmup_iters=100 (repeatable).")
@click.option("--no-eval", is_flag=True, help="Skip the evaluation on the val split at the end.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the run summary as JSON here.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_cmd(config, data_root, model, method, iters, epochs, batch_size, imgsz, lr, device, workers, out, ckpt_every,
              eval_every, resume, overwrite, overrides, no_eval, json_out, quiet):
    """Train a detector and write a run directory.

    \b
    Examples:
      swdet train --data data/synth --model retinanet_tiny --method focal --iters 3000
      swdet train configs/retinanet_r50_fpn_1x_pisa.yaml --data coco/ --device cuda
      torchrun --nproc_per_node 8 -m swdet train configs/retinanet_r50_fpn_1x_swn.yaml --data coco/
      swdet train --out runs/pisa --resume
    """
    from swdet.config import load_config
    from swdet.table import format_table

    sets = list(overrides)
    origins: dict[str, str] = {}  # config key -> the flag that set it (errors name the flag)
    if model:
        sets.insert(0, f"model={model}")
        origins["model"] = "--model"
    opts = {"data.root": ("--data", data_root), "loss.method": ("--method", method),
            "train.iters": ("--iters", iters), "train.epochs": ("--epochs", epochs),
            "train.batch_size": ("--batch-size", batch_size), "model.imgsz": ("--imgsz", imgsz),
            "train.lr": ("--lr", lr), "train.device": ("--device", device), "data.workers": ("--workers", workers),
            "train.ckpt_every": ("--ckpt-every", ckpt_every), "train.eval_every": ("--eval-every", eval_every)}
    for key, (flag, value) in opts.items():
        if value is not None:
            if isinstance(value, int) and value < 0:
                raise SwdetError(f"{flag}: must be non-negative, got {value}")
            sets.append(f"{key}={value}")
            origins[key] = flag
    if iters is not None:
        sets.append("train.epochs=0")
    if resume:
        # Continue with the run's own config; options given now (e.g. a larger --iters) apply on top.
        from swdet.config import apply_override, blame_overrides, config_from_dict
        from swdet.train.checkpoint import load_checkpoint

        if out is None:
            raise SwdetError("--resume needs --out RUN_DIR (the run to continue)")
        ckpt = Path(out) / "checkpoints" / "last.pt"
        if not ckpt.is_file():
            raise SwdetError(f"{ckpt}: nothing to resume (no checkpoint in {out})")
        saved = load_checkpoint(ckpt)["config"]
        saved["train"]["device"] = "auto"
        for item in sets:
            apply_override(saved, item)
        try:
            cfg = config_from_dict(saved, str(ckpt))
        except SwdetError as e:
            raise blame_overrides(e, str(ckpt), sets, origins) from None
    else:
        cfg = load_config(config, sets, origins)
    if not cfg.name:
        cfg.name = Path(config).stem if config else f"{cfg.model.name}_{'_'.join(cfg.loss.method)}"
    if out is None:
        out_dir = _default_out(cfg.name)
    else:
        out_dir = Path(out)
        if not resume and not overwrite and (out_dir / "checkpoints" / "last.pt").exists():
            raise SwdetError(f"{out_dir}: already holds a training run; pass --resume to continue it "
                             "or --overwrite to start over")
    if not cfg.train.iters and not cfg.train.epochs:
        raise SwdetError("nothing to train: pass --iters N or --epochs N")

    from swdet.train.engine import train

    try:
        result = train(cfg, out_dir, resume=resume, progress=not quiet, evaluate=not no_eval)
    except Interrupted as e:
        import shlex

        again = ["--quiet"] if quiet else []
        again += ["--no-eval"] if no_eval else []
        launcher = "torchrun ... -m swdet" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "swdet"
        raise Interrupted(f"{e}; resume with: {launcher} train --out {shlex.quote(str(out_dir))} --resume"
                          f"{''.join(' ' + a for a in again)}", e.signum) from None
    summary = {k: v for k, v in result.items() if k != "eval"}
    if int(os.environ.get("RANK", "0")) == 0:
        rows = [{"run": str(out_dir), "method": ",".join(cfg.loss.method), "iters": result["iterations"],
                 "time_s": round(result["train_time_s"], 1), "skipped": result["skipped_steps"],
                 **{k: result.get("metrics", {}).get(k) for k in ("AP", "AP50", "AP75")}}]
        click.echo(format_table(rows, title="training finished"))
        click.echo(f"artifact: {out_dir / 'model.safetensors'} + model.json   checkpoint: "
                   f"{out_dir / 'checkpoints' / 'last.pt'}")
        write_json(json_out, summary)
