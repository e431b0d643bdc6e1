"""``swdet serve ...`` commands (only click is imported at module level).

``swdet verify`` has its own module (:mod:`swdet.cli.verify`): it exports run directories first.
"""

from __future__ import annotations

import click

from swdet.cli.common import CONTEXT, int_list, write_json



def format_bench_table(result: dict) -> str:
    """The ``swdet serve bench`` table: one row per batch size."""
    from swdet.table import format_table

    rows = []
    for r in result["results"]:
        lat = r["latency_ms"]
        rows.append([r["batch_size"], f"{lat['mean']:.2f}", f"{lat['p50']:.2f}", f"{lat['p90']:.2f}",
                     f"{lat['p99']:.2f}", f"{r['throughput_ips']:.1f}", f"{r['preprocess_ms']['mean']:.2f}",
                     f"{r['inference_ms']['mean']:.2f}", f"{r['postprocess_ms']['mean']:.2f}"])
    title = (f"{result['source']}: {result['runtime']} on {result['device']} ({result['precision']}, "
             f"{result['imgsz']}x{result['imgsz']}, {result['images']} images, {result['iters']} iters)")
    return format_table(rows, headers=["batch", "mean ms", "p50", "p90", "p99", "img/s", "pre ms", "infer ms",
                                       "post ms"], title=title)


@click.group("serve", context_settings=CONTEXT)
def serve() -> None:
    """Serve exported models: benchmarks of the full serving path.

    \b
    Examples:
      swdet serve bench pisa.onnx --batch-sizes 1,8,32
      swdet serve bench pisa.int8.engine --images coco/val2017 --json bench.json
    """


@serve.command("bench", context_settings=CONTEXT)
@click.argument("model", type=click.Path())
@click.option("--batch-sizes", default="1,8,32", show_default=True, help="Comma-separated batch sizes.")
@click.option("--iters", default=50, show_default=True, type=int, help="Timed batches per batch size.")
@click.option("--warmup", default=10, show_default=True, type=int, help="Untimed batches first.")
@click.option("--images", type=click.Path(), help="Folder of real images (decoded every batch); default synthetic.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option("--threads", type=int, help="ONNX Runtime intra-op threads (default: its own choice).")
@click.option("--cuda-graphs", is_flag=True, help="Torch runtime on CUDA: replay the network from CUDA graphs.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the results as JSON here.")
def bench_cmd(model, batch_sizes, iters, warmup, images, device, threads, cuda_graphs, json_out):
    """Latency and throughput of MODEL (run directory, .safetensors, .onnx or .engine).

    Each batch is timed end to end: decode + letterbox (pre), the runtime (infer, device
    synchronized), the mapping back to image pixels (post). Prints mean/p50/p90/p99 latency
    per batch and images per second.

    \b
    Examples:
      swdet serve bench runs/pisa --device cpu --batch-sizes 1,8
      swdet serve bench pisa.onnx --batch-sizes 1,8,32 --json bench.json
      swdet serve bench pisa.onnx --images coco/val2017 --iters 100 --threads 4
      swdet serve bench runs/pisa --device cuda --cuda-graphs
      swdet serve bench pisa.int8.engine --batch-sizes 1,8,32
    """
    from pathlib import Path

    from swdet.errors import SwdetError
    from swdet.serve.bench import benchmark
    from swdet.serve.runtimes import load_runtime

    sizes = int_list(batch_sizes, "--batch-sizes", positive=True) or [1]
    if iters < 1:
        raise SwdetError(f"--iters {iters}: must be >= 1")
    if warmup < 0:
        raise SwdetError(f"--warmup {warmup}: must be >= 0")
    kwargs = {}
    suffix = Path(model).suffix.lower()
    if threads is not None:
        if suffix != ".onnx":
            raise SwdetError("--threads: only for .onnx models (ONNX Runtime)")
        kwargs["intra_op_threads"] = threads
    if cuda_graphs:
        if suffix in (".onnx", ".engine", ".plan"):
            raise SwdetError("--cuda-graphs: only for the torch runtime (run directory or .safetensors)")
        kwargs["cuda_graphs"] = True
    rt = load_runtime(model, device=device, **kwargs)
    try:
        result = benchmark(rt, sizes, iters=iters, warmup=warmup, images=images)
    finally:
        rt.close()
    result["source"] = str(model)
    click.echo(format_bench_table(result))
    if result.get("skipped_images"):
        click.echo(f"warning: {len(result['skipped_images'])} unreadable images skipped "
                   f"(e.g. {result['skipped_images'][0]})", err=True)
    if json_out:
        write_json(json_out, result)
        click.echo(f"results -> {json_out}")
