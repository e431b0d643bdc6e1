"""``swdet eval`` and ``swdet predict``: a model (run directory, ``.safetensors``, ``.onnx`` or
``.engine``) on a COCO split or on image files."""

from __future__ import annotations

from pathlib import Path

import click

from swdet.cli.common import CONTEXT
from swdet.errors import SwdetError


def _eval_split(data_root, ann, images) -> tuple:
    """``(annotation file, image folder)`` from ``--data DIR`` (its val split, found as ``swdet
    train`` finds it) or from ``--ann`` and ``--images``."""
    if data_root:
        if ann or images:
            raise SwdetError("--data DIR or --ann/--images, not both")
        from swdet.config import DataConfig
        from swdet.data.splits import find_split

        return find_split(DataConfig(root=str(data_root)), "val")
    if not (ann and images):
        raise SwdetError("what to evaluate on: pass --data DIR (its val split) or --ann FILE and --images DIR")
    return ann, images


@click.command("eval", context_settings=CONTEXT)
@click.argument("model", type=click.Path())
@click.option("--data", "data_root", type=click.Path(),
              help="COCO-format dataset folder, as for train: evaluates its val split.")
@click.option("--ann", type=click.Path(), help="COCO annotation JSON of the evaluation images (instead of --data).")
@click.option("--images", type=click.Path(), help="Folder of the evaluation images (with --ann).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write COCO stats (fractions) here.")
@click.option("--predictions", type=click.Path(dir_okay=False), help="Write detections (COCO results format) here.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--score-threshold", type=float, help="Override the model's score threshold (torch runtime).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def eval_cmd(model, data_root, ann, images, json_out, predictions, device, batch_size, score_threshold, quiet):
    """COCO box mAP of a model (run directory, .safetensors, .onnx or .engine).

    \b
    Examples:
      swdet eval runs/pisa --data data/synth
      swdet eval runs/pisa --ann data/synth/annotations/instances_val.json --images data/synth/val
      swdet eval pisa.onnx --ann coco/annotations/instances_val2017.json --images coco/val2017 --json m.json
    """
    from swdet.evaluation import format_eval_table, write_metrics_json, write_predictions_json
    from swdet.inference import evaluate_runtime
    from swdet.serve.runtimes import load_runtime

    ann, images = _eval_split(data_root, ann, images)
    rt = load_runtime(model, device=device, score_threshold=score_threshold)
    result, preds, dataset = evaluate_runtime(rt, ann, images, batch_size=batch_size, progress=not quiet)
    click.echo(format_eval_table(result, title=f"{model} ({rt.name}, {rt.device_name})"))
    if dataset.skipped_images:
        click.echo(f"warning: {dataset.skipped_images} unreadable images skipped", err=True)
    if json_out:
        write_metrics_json(json_out, result, extra={"model": str(model), "runtime": rt.name})
    if predictions:
        write_predictions_json(predictions, preds)


@click.command("predict", context_settings=CONTEXT)
@click.argument("model", type=click.Path())
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--out", "out_json", required=True, type=click.Path(dir_okay=False), help="Detections JSON to write.")
@click.option("--save-images", type=click.Path(file_okay=False),
              help="Draw the detections into this folder (names mirror the inputs' paths).")
@click.option("--draw-threshold", type=click.FloatRange(0, 1), default=0.3, show_default=True,
              help="Draw only detections scoring at least this (the JSON keeps every detection).")
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--score-threshold", type=float, help="Override the model's score threshold.")
@click.option("--quiet", is_flag=True)
def predict_cmd(model, paths, out_json, save_images, draw_threshold, device, batch_size, score_threshold, quiet):
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
                            save_images=Path(save_images) if save_images else None, progress=not quiet,
                            draw_threshold=draw_threshold)
    click.echo(f"{summary['detections']} detections in {summary['images']} images -> {out_json}"
               + (f" (skipped {summary['skipped']} unreadable: {', '.join(summary['skipped_files'][:3])})"
                  if summary["skipped"] else ""))
