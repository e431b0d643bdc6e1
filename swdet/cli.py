"""The ``swdet`` command line: verbs in the style users know from Ultralytics and trtexec.

Every command keeps heavy imports inside its body so ``swdet --help`` is instant. Bad input ends
with one line on stderr and a non-zero exit, never a traceback (set ``SWDET_DEBUG=1`` to see one).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from swdet.errors import SwdetError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="swdet", message="swdet %(version)s")
def cli() -> None:
    """swdet: train detectors with sample-weighting losses, deploy them at zero test-time cost.

    \b
    Quick start (CPU, embedded synthetic data):
      swdet pipeline --out runs/pipeline
    Stages:
      swdet data synth --out data/synth
      swdet train --data data/synth --model retinanet_tiny --method pisa --iters 3000
      swdet eval runs/retinanet_tiny_pisa --ann data/synth/annotations/instances_val.json --images data/synth/val
      swdet export runs/retinanet_tiny_pisa --format onnx --out pisa.onnx
    """


def _write_json(path: str | None, obj) -> None:
    if path:
        from swdet.artifact import atomic_write_json

        atomic_write_json(path, obj)


# ----------------------------------------------------------------------------------------------
# train


def _default_out(name: str) -> Path:
    base = Path("runs") / name
    if not base.exists():
        return base
    i = 2
    while Path(f"{base}{i}").exists():
        i += 1
    return Path(f"{base}{i}")


@cli.command("train", context_settings=CONTEXT)
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
@click.option("--ckpt-every", type=int, help="Checkpoint every N iterations (and always at the end).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from checkpoints/last.pt.")
@click.option("--overwrite", is_flag=True, help="Train into an --out that already holds a run.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any config value, e.g. --set train.warmup_iters=100 (repeatable).")
@click.option("--no-eval", is_flag=True, help="Skip the evaluation on the val split at the end.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the run summary as JSON here.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_cmd(config, data_root, model, method, iters, epochs, batch_size, imgsz, lr, device, workers, out, ckpt_every,
              resume, overwrite, overrides, no_eval, json_out, quiet):
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
    if model:
        sets.insert(0, f"model={model}")
    opts = {"data.root": data_root, "loss.method": method, "train.iters": iters, "train.epochs": epochs,
            "train.batch_size": batch_size, "model.imgsz": imgsz, "train.lr": lr, "train.device": device,
            "data.workers": workers, "train.ckpt_every": ckpt_every}
    for key, value in opts.items():
        if value is not None:
            if isinstance(value, int) and value < 0:
                raise SwdetError(f"--{key.split('.')[-1].replace('_', '-')}: must be non-negative, got {value}")
            sets.append(f"{key}={value}")
    if iters is not None:
        sets.append("train.epochs=0")
    if resume:
        # Continue with the run's own config; options given now (e.g. a larger --iters) apply on top.
        from swdet.config import apply_override, config_from_dict
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
        cfg = config_from_dict(saved, str(ckpt))
    else:
        cfg = load_config(config, sets)
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

    result = train(cfg, out_dir, resume=resume, progress=not quiet, evaluate=not no_eval)
    summary = {k: v for k, v in result.items() if k != "eval"}
    if int(os.environ.get("RANK", "0")) == 0:
        rows = [{"run": str(out_dir), "method": ",".join(cfg.loss.method), "iters": result["iterations"],
                 "time_s": round(result["train_time_s"], 1), "skipped": result["skipped_steps"],
                 **{k: result.get("metrics", {}).get(k) for k in ("AP", "AP50", "AP75")}}]
        click.echo(format_table(rows, title="training finished"))
        click.echo(f"artifact: {out_dir / 'model.safetensors'} + model.json   checkpoint: "
                   f"{out_dir / 'checkpoints' / 'last.pt'}")
        _write_json(json_out, summary)


# ----------------------------------------------------------------------------------------------
# eval / predict


@cli.command("eval", context_settings=CONTEXT)
@click.argument("model", type=click.Path())
@click.option("--ann", required=True, type=click.Path(), help="COCO annotation JSON of the evaluation images.")
@click.option("--images", required=True, type=click.Path(), help="Folder of the evaluation images.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write COCO stats (fractions) here.")
@click.option("--predictions", type=click.Path(dir_okay=False), help="Write detections (COCO results format) here.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--score-threshold", type=float, help="Override the model's score threshold (torch runtime).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def eval_cmd(model, ann, images, json_out, predictions, device, batch_size, score_threshold, quiet):
    """COCO box mAP of a model (run directory, .safetensors, .onnx or .engine).

    \b
    Examples:
      swdet eval runs/pisa --ann data/synth/annotations/instances_val.json --images data/synth/val
      swdet eval pisa.onnx --ann coco/annotations/instances_val2017.json --images coco/val2017 --json m.json
    """
    from swdet.evaluation import format_eval_table, write_metrics_json, write_predictions_json
    from swdet.inference import evaluate_runtime
    from swdet.serve.runtimes import load_runtime

    rt = load_runtime(model, device=device, score_threshold=score_threshold)
    result, preds, dataset = evaluate_runtime(rt, ann, images, batch_size=batch_size, progress=not quiet)
    click.echo(format_eval_table(result, title=f"{model} ({rt.name}, {rt.device_name})"))
    if dataset.skipped_images:
        click.echo(f"warning: {dataset.skipped_images} unreadable images skipped", err=True)
    if json_out:
        write_metrics_json(json_out, result, extra={"model": str(model), "runtime": rt.name})
    if predictions:
        write_predictions_json(predictions, preds)


@cli.command("predict", context_settings=CONTEXT)
@click.argument("model", type=click.Path())
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--out", "out_json", required=True, type=click.Path(dir_okay=False), help="Detections JSON to write.")
@click.option("--save-images", type=click.Path(file_okay=False), help="Draw the detections into this folder.")
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--score-threshold", type=float, help="Override the model's score threshold.")
@click.option("--quiet", is_flag=True)
def predict_cmd(model, paths, out_json, save_images, device, batch_size, score_threshold, quiet):
    """Detect objects in images (files or folders).

    Writes one record per detection: file, bbox (x, y, w, h in original pixels), score,
    category_id (the dataset's id) and category name.

    \b
    Examples:
      swdet predict runs/pisa photo.jpg more_photos/ --out dets.json --save-images drawn/
      swdet predict pisa.onnx data/synth/val --out dets.json
    """
    from swdet.predict import predict_files
    from swdet.serve.runtimes import load_runtime

    rt = load_runtime(model, device=device, score_threshold=score_threshold)
    summary = predict_files(rt, [Path(p) for p in paths], Path(out_json), batch_size=batch_size,
                            save_images=Path(save_images) if save_images else None, progress=not quiet)
    click.echo(f"{summary['detections']} detections in {summary['images']} images -> {out_json}"
               + (f" (skipped {summary['skipped']} unreadable: {', '.join(summary['skipped_files'][:3])})"
                  if summary["skipped"] else ""))


# ----------------------------------------------------------------------------------------------
# verify (composes export and serve, so it lives here at the top of the dependency graph)


def _as_onnx(model: str, workdir: Path, tag: str, imgsz: int | None) -> tuple[str, str | None]:
    """``(onnx path, torch source or None)``: an ONNX file as is, anything else exported first."""
    if Path(model).suffix.lower() == ".onnx":
        if not Path(model).is_file():
            raise SwdetError(f"{model}: no such file")
        return model, None
    from swdet.export import export_onnx, to_artifact

    artifact = to_artifact(model, workdir / f"{tag}_artifact") if Path(model).suffix == ".pt" else Path(model)
    out = workdir / f"{tag}.onnx"
    export_onnx(artifact, out, imgsz=imgsz)
    return str(out), str(artifact)


@cli.command("verify", context_settings=CONTEXT)
@click.argument("baseline", type=click.Path())
@click.argument("candidate", type=click.Path())
@click.option("--ann", type=click.Path(), help="COCO annotations: also check each runtime's mAP against its source.")
@click.option("--images", type=click.Path(), help="Images for --ann.")
@click.option("--rounds", default=20, show_default=True, type=click.IntRange(min=3),
              help="Interleaved latency rounds (A/B alternating).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--tolerance", default=0.002, show_default=True, type=float, help="Allowed |ΔAP| (AP as a fraction).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the report as JSON here.")
def verify_cmd(baseline, candidate, ann, images, rounds, batch_size, tolerance, device, json_out):
    """Does CANDIDATE cost exactly what BASELINE costs at test time?

    Compares the exported graphs (op histogram, initializer names and shapes, input size,
    post-processing settings), the parameter count and the latency (one interleaved A/B run,
    ratio with its noise band); with --ann/--images also each runtime's mAP against the PyTorch
    model it came from. Run directories, artifacts and checkpoints are exported to ONNX first.
    Exit 0 only when the cost is the same and every accuracy check holds.

    \b
    Examples:
      swdet verify runs/focal runs/swn
      swdet verify runs/focal runs/pisa --ann data/synth/annotations/instances_val.json --images data/synth/val
    """
    import tempfile

    from swdet.serve.verify import format_verify_report, verify

    if bool(ann) != bool(images):
        raise SwdetError("--ann and --images go together")
    with tempfile.TemporaryDirectory(prefix="swdet-verify-") as tmp:
        a, a_src = _as_onnx(baseline, Path(tmp), "baseline", None)
        b, b_src = _as_onnx(candidate, Path(tmp), "candidate", None)
        report = verify(a, b, baseline_source=a_src, candidate_source=b_src, ann=ann, images=images,
                        batch_size=batch_size, rounds=rounds, tolerance=tolerance, device=device)
    click.echo(format_verify_report(report))
    _write_json(json_out, report.to_dict())
    if not report.ok:
        raise click.exceptions.Exit(1)


# ----------------------------------------------------------------------------------------------
# Stage command groups (each module imports only click at module level)


def _register() -> None:
    from swdet.data.cli import data

    cli.add_command(data)
    for module, names in (("swdet.export.cli", ("export",)), ("swdet.calib.cli", ("calib",)),
                          ("swdet.serve.cli", ("serve",)), ("swdet.pipeline", ("pipeline",))):
        try:
            mod = __import__(module, fromlist=list(names))
        except ModuleNotFoundError as e:  # a stage not installed (e.g. a serve-only deployment)
            if e.name and e.name.startswith("swdet"):
                continue
            raise
        for n in names:
            cmd = getattr(mod, n, None)
            if cmd is not None:
                cli.add_command(cmd)


_register()


def exit_status(code) -> int:
    """The process exit status for ``sys.exit(code)`` semantics: None is 0, an int is itself,
    anything else (a message) is 1."""
    if code is None:
        return 0
    if isinstance(code, int) and not isinstance(code, bool):
        return code
    return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (the console script passes it to ``sys.exit``).

    0 on success; the code of a ``click.exceptions.Exit`` a command raises (``swdet verify``
    exits 1 when the candidate's cost differs); 2 for a usage error; the error's ``exit_code``
    for a :class:`~swdet.errors.SwdetError` (2 for bad input, 3 when training diverged), printed
    as one line; 130 when interrupted; 1 for anything unexpected (one line; the traceback with
    ``SWDET_DEBUG=1``).

    Click runs with ``standalone_mode=False`` so errors reach the handlers below; in that mode
    click *returns* the code of an ``Exit`` (and ``--help`` / ``--version`` return 0) instead of
    raising it, so the returned value is the exit status. Commands return None.
    """
    debug = os.environ.get("SWDET_DEBUG", "") not in ("", "0")
    try:
        rv = cli.main(args=argv, prog_name="swdet", standalone_mode=False)
        return rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
    except click.exceptions.Abort as e:  # click turns KeyboardInterrupt and EOF into Abort
        click.echo("interrupted" if isinstance(e.__context__, KeyboardInterrupt) else "aborted", err=True)
        return 130
    except click.ClickException as e:  # usage errors (2) and the like: click's own message
        e.show()
        return e.exit_code
    except click.exceptions.Exit as e:
        return exit_status(e.exit_code)
    except SystemExit as e:
        if e.code is not None and not isinstance(e.code, int):
            click.echo(f"error: {e.code}", err=True)
        return exit_status(e.code)
    except SwdetError as e:
        if debug:
            raise
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # noqa: BLE001 - a bug: still one line, with a way to see the traceback
        if debug:
            raise
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        click.echo(f"internal error: {type(e).__name__}: {msg} (rerun with SWDET_DEBUG=1 for the traceback)", err=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
