"""``swdet export``: ONNX, TensorRT engine or Triton repository from a trained model.

Only click is imported at module level; the stage is imported inside the command.
"""

from __future__ import annotations

import click

from swdet.cli.common import CONTEXT, int_list

SOURCE_HELP = "run directory, model.safetensors, model.json, training checkpoint (.pt), .onnx or .engine"


def _row(path, summary: dict | None = None, precision: str | None = None) -> dict:
    from pathlib import Path

    p = Path(path)
    size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
    s = summary or {}
    return {"file": str(p), "size_mb": round(size / 2**20, 2), "opset": s.get("opset"), "ops": s.get("nodes"),
            "nms": s.get("nms"), "precision": precision or s.get("precision"),
            "threshold": s.get("score_threshold")}


@click.command("export", context_settings=CONTEXT)
@click.argument("model", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["onnx", "tensorrt", "triton"]), default="onnx",
              show_default=True, help="What to write.")
@click.option("--out", type=click.Path(), help="Output .onnx / .engine file, or Triton repository folder.")
@click.option("--imgsz", type=int, help="Input size S (multiple of 32; default: the model's). Anchors are regenerated.")
@click.option("--batch", default="dynamic", show_default=True, help="Batch dimension: 'dynamic' or a fixed size.")
@click.option("--score-threshold", default="auto", show_default=True,
              help="'auto' = the model.json threshold (θ = N_f/N for Sampling-Free runs) or a number in [0, 1).")
@click.option("--nms", type=click.Choice(["onnx", "efficient"]), default="onnx", show_default=True,
              help="onnx: NonMaxSuppression op (ONNX Runtime and TensorRT); efficient: EfficientNMS_TRT plugin (TensorRT only).")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="Network precision (post-processing stays fp32). INT8: 'swdet calib' writes a Q/DQ ONNX.")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (13-20).")
@click.option("--max-det", type=int, help="Detections per image K (default: model.json).")
@click.option("--pre-nms-topk", type=int, help="Candidates per FPN level before NMS (default: model.json).")
@click.option("--min-batch", type=int, default=1, show_default=True, help="TensorRT profile: smallest batch.")
@click.option("--opt-batch", type=int, help="TensorRT profile: batch to optimize for (default 8).")
@click.option("--max-batch", type=int, help="TensorRT profile / Triton max_batch_size (default 32 / 8).")
@click.option("--workspace-gb", type=float, help="TensorRT builder workspace limit in GiB.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), help="TensorRT timing cache file (read and updated).")
@click.option("--model-name", default="swdet", show_default=True, help="Triton model name.")
@click.option("--preferred-batch-sizes", help="Triton dynamic batcher preferred sizes, e.g. 4,8.")
@click.option("--max-queue-delay-us", type=int, default=100, show_default=True, help="Triton dynamic batcher delay.")
@click.option("--check-only", is_flag=True, help="Only run the static TensorRT check (nothing is written).")
@click.option("--verbose", is_flag=True, help="TensorRT builder log.")
def export(model, fmt, out, imgsz, batch, score_threshold, nms, precision, opset, max_det, pre_nms_topk, min_batch,
           opt_batch, max_batch, workspace_gb, timing_cache, model_name, preferred_batch_sizes, max_queue_delay_us,
           check_only, verbose):
    """Export MODEL (run directory, model.safetensors, model.json, training checkpoint, or for
    tensorrt/triton an .onnx, e.g. an INT8 Q/DQ model from 'swdet calib') with the
    post-processing inside the graph. Training-only parts never reach the output; a checkpoint
    is first turned into an artifact next to it.

    \b
    Examples:
      swdet export runs/pisa --format onnx --out pisa.onnx
      swdet export runs/pisa --format onnx --precision fp16 --batch 8 --out pisa.fp16.onnx
      swdet export runs/sf/checkpoints/last.pt --format onnx --out sf.onnx
      swdet export pisa.int8.onnx --format tensorrt --out pisa.int8.engine --max-batch 32
      swdet export runs/pisa --format onnx --nms efficient --out pisa.trtnms.onnx
      swdet export pisa.onnx --format triton --out model_repository --max-batch 16 --preferred-batch-sizes 4,8
      swdet export pisa.onnx --check-only
    """
    import tempfile
    from pathlib import Path

    from swdet.errors import SwdetError
    from swdet.export.onnx_export import export_onnx, graph_summary
    from swdet.export.strip import is_checkpoint, to_artifact
    from swdet.table import format_table
    from swdet.deploy.trt_rules import check_tensorrt_compat, format_problems, has_errors

    src = Path(model)
    if not src.exists():
        raise SwdetError(f"{src}: no such file or directory (expected a {SOURCE_HELP})")
    suffix = src.suffix.lower() if src.is_file() else ""
    if out is None and not check_only:
        raise SwdetError("--out is required (the file or folder to write), unless --check-only")
    out_path = Path(out) if out is not None else None
    if fmt == "tensorrt" and not check_only:
        from swdet.export.tensorrt_build import import_tensorrt

        import_tensorrt("building engines")  # fail before a minute of export
    prefs = int_list(preferred_batch_sizes, "--preferred-batch-sizes")
    onnx_opts = dict(imgsz=imgsz, batch=batch, score_threshold=score_threshold, nms=nms, precision=precision,
                     opset=opset, max_det=max_det, pre_nms_topk=pre_nms_topk)

    def report_check(onnx_file) -> list:
        problems = check_tensorrt_compat(onnx_file)
        click.echo(format_problems(problems))
        return problems

    # -- an existing engine: only a Triton repository can be made from it ------------------
    if suffix in (".engine", ".plan"):
        if fmt != "triton" or check_only:
            raise SwdetError(f"{src}: a TensorRT engine can only go into a Triton repository (--format triton)")
        from swdet.export.triton import write_triton_repository

        folder = write_triton_repository(src, out_path, model_name, max_batch, prefs, max_queue_delay_us)
        click.echo(format_table([_row(folder, precision=None)], title="swdet export: triton"))
        return

    # -- the ONNX file to check, build or package ------------------------------------------
    with tempfile.TemporaryDirectory(prefix="swdet-export-") as tmp:
        if suffix == ".onnx":
            if fmt == "onnx" and not check_only:
                raise SwdetError(f"{src}: already ONNX; use --format tensorrt or triton, or --check-only")
            onnx_file = src
        else:
            if (src.is_dir() and not (src / "model.safetensors").is_file()) or (src.is_file() and is_checkpoint(src)):
                if not check_only:
                    art = to_artifact(src)
                    click.echo(f"artifact: {art} + {art.with_name('model.json').name} (detector weights only)")
                    src = art
            onnx_file = out_path if fmt == "onnx" and not check_only else Path(tmp) / "model.onnx"
            export_onnx(src, onnx_file, **onnx_opts)
        summary = graph_summary(onnx_file)
        problems = report_check(onnx_file)
        if check_only:
            if has_errors(problems):
                raise SwdetError(f"{model}: the TensorRT static check found "
                                 f"{sum(p.severity == 'error' for p in problems)} error(s)")
            return
        if fmt == "onnx":
            written = _row(onnx_file, summary)
        elif fmt == "tensorrt":
            from swdet.export.tensorrt_build import build_engine

            build_engine(onnx_file, out_path, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                         workspace_gb=workspace_gb, timing_cache=timing_cache, verbose=verbose)
            written = _row(out_path, summary)
        else:
            from swdet.export.triton import write_triton_repository

            folder = write_triton_repository(onnx_file, out_path, model_name, max_batch, prefs, max_queue_delay_us)
            written = _row(folder, summary)
    click.echo(format_table([written], title=f"swdet export: {fmt}"))
