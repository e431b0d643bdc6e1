"""``swdet calib``: INT8 calibration of an fp32 ONNX export to a Q/DQ model.

Only click is imported at module level; the stage is imported inside the command.
"""

from __future__ import annotations

import click

from swdet.cli.common import CONTEXT, write_json



@click.command("calib", context_settings=CONTEXT)
@click.argument("model", type=click.Path())
@click.option("--images", required=True, type=click.Path(),
              help="Folder of calibration images (searched recursively), e.g. a COCO split's image folder.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The INT8 Q/DQ .onnx to write.")
@click.option("--num-images", default=128, show_default=True, type=int,
              help="Calibration images, drawn in a seeded random order (unreadable ones are skipped).")
@click.option("--method", type=click.Choice(["entropy", "percentile", "minmax"]), default="percentile",
              show_default=True, help="How activation ranges are chosen from the statistics.")
@click.option("--percentile", default=99.99, show_default=True, type=float,
              help="For --method percentile: the percentile of |x| used as the range.")
@click.option("--per-channel/--per-tensor", default=True, show_default=True,
              help="Weight scales per output channel (TensorRT's recommendation) or one per tensor.")
@click.option("--exclude", multiple=True, metavar="PATTERN",
              help="Keep layers whose node name matches PATTERN (fnmatch, or a substring) in float; repeatable. "
                   "Names are those of the --report table.")
@click.option("--report", is_flag=True,
              help="Per-layer sensitivity: SNR of the head outputs with only that layer in INT8, worst first "
                   "(printed and saved as OUT.report.json).")
@click.option("--report-images", default=4, show_default=True, type=click.IntRange(min=1),
              help="Images used by --report.")
@click.option("--cache", type=click.Path(dir_okay=False),
              help="Calibration statistics file (default: MODEL's name with .calib.npz, beside it). Re-runs with "
                   "other --method/--percentile/--exclude/--per-tensor read it instead of the images.")
@click.option("--no-cache", is_flag=True, help="Recompute the statistics even when the cache matches.")
@click.option("--batch-size", default=4, show_default=True, type=int, help="Images per calibration batch.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the image order.")
@click.option("--head-outputs", type=click.Choice(["int8", "float"]), default="int8", show_default=True,
              help="The prediction convolutions' outputs: int8 (a Q/DQ pair, dequantized before the "
                   "post-processing; ONNX Runtime runs them as int8) or float (float32 output).")
@click.option("--stem", type=click.Choice(["float", "int8"]), default="float", show_default=True,
              help="The image stem (convolutions reading at most 4 channels): float32 (faster than int8 on x86 "
                   "CPUs for 3 input channels) or int8.")
@click.option("--no-rewrite", is_flag=True,
              help="Skip the graph rewrites that let ONNX Runtime run every quantized convolution as int8 "
                   "(sibling convolutions merged, shared outputs duplicated, GroupNorms channels-last).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write a summary of the run as JSON here.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def calib(model, images, out, num_images, method, percentile, per_channel, exclude, report, report_images, cache,
          no_cache, batch_size, seed, head_outputs, stem, no_rewrite, json_out, quiet):
    """Calibrate MODEL (an fp32 .onnx from 'swdet export') on images and write an INT8 model
    with QuantizeLinear/DequantizeLinear pairs for TensorRT's explicit quantization:
    symmetric int8 (zero points 0), per-channel weights, Q/DQ on the convolution inputs and
    outputs and residual additions, post-processing (decoding, threshold, NMS) left in float32.
    It runs in ONNX Runtime as it is (every convolution as int8), and 'swdet export OUT
    --format tensorrt' builds an INT8 engine.

    \b
    Examples:
      swdet calib pisa.onnx --images coco/val2017 --out pisa.int8.onnx
      swdet calib pisa.onnx --images coco/val2017 --out pisa.int8.onnx --method entropy
      swdet calib pisa.onnx --images coco/val2017 --out pisa.int8.onnx --report
      swdet calib pisa.onnx --images coco/val2017 --out pisa.int8.onnx --exclude '*/head/cls_subnet.0*'
      swdet export pisa.int8.onnx --format tensorrt --out pisa.int8.engine
    """
    from swdet.calib.quantize import asdict_result, calibrate, summary_row

    from swdet.table import format_table

    def log(line: str) -> None:
        if line.startswith("warning:") or not quiet:
            click.echo(line, err=True)

    result = calibrate(model, images, out, num_images=num_images, method=method, percentile=percentile,
                       per_channel=per_channel, exclude=list(exclude), cache=cache, use_cache=not no_cache,
                       report=report, report_images=report_images, batch_size=batch_size, seed=seed,
                       rewrite=not no_rewrite, head_outputs=head_outputs, stem=stem, progress=not quiet, log=log)
    if result.report:
        from swdet.calib.report import format_report

        click.echo(format_report(result.report))
        click.echo(f"report: {result.report_path}")
    click.echo(format_table([summary_row(result)], title="swdet calib: int8 (Q/DQ)"))
    click.echo(f"cache: {result.cache}")
    if json_out:
        summary = asdict_result(result)
        summary.pop("report", None)
        write_json(json_out, summary)
