"""``swdet pipeline``: every stage on the embedded default, no dataset or GPU needed.

1. ``data synth``: the synthetic COCO-format set (``OUT/data``), generated once;
2. ``train``: ``retinanet_tiny`` with the baseline loss (``OUT/runs/<method>``), and a short
   candidate run with a weighting method (default SWN: the one with a training-only network);
3. ``export``: ONNX with post-processing baked in;
4. ``calib``: INT8 QDQ ONNX (when the calibration stage is installed);
5. ``eval``: COCO mAP of the PyTorch model, the FP32 ONNX and the INT8 ONNX on the val split;
6. ``serve bench``: latency and throughput of each (batch 1 and 8);
7. ``verify``: the candidate costs exactly what the baseline costs at test time.

Everything lands in ``OUT`` (``pipeline.json`` holds the summary); a final table compares the
runtimes side by side.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from swdet.cli.common import CONTEXT, write_json
from swdet.errors import SwdetError


RECIPE = "retinanet_tiny.yaml"  # the embedded default's training recipe: configs/retinanet_tiny.yaml


def recipe_path(name: str = RECIPE) -> Path:
    """A shipped config: ``configs/<name>``, installed with the package as ``swdet.configs`` (one
    source for the recipe, whether swdet runs from a wheel or from a checkout)."""
    import importlib.resources

    try:
        found = importlib.resources.files("swdet.configs") / name
        if found.is_file():
            return Path(str(found))
    except ModuleNotFoundError:  # an editable install maps no data-only package
        pass
    path = Path(__file__).resolve().parents[2] / "configs" / name
    if not path.is_file():
        raise SwdetError(f"{path}: the pipeline's recipe is missing from this installation")
    return path


def __getattr__(name: str):
    if name == "TINY_RECIPE":  # the recipe as --set overrides (model and train sections of the YAML)
        import yaml

        data = yaml.safe_load(recipe_path().read_text())
        return (f"model={data['model']}", *(f"train.{k}={v}" for k, v in data["train"].items()))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _stage(name: str) -> None:
    click.echo(click.style(f"\n== {name}", bold=True), err=True)


def _size_mb(path: Path) -> float:
    size = path.stat().st_size
    data = Path(str(path) + ".data")
    if data.exists():
        size += data.stat().st_size
    return round(size / 2**20, 2)


def run_pipeline(out: Path, *, iters: int | None = None, candidate_iters: int | None = None,
                 method: str = "focal", candidate: str = "swn", n_train: int = 2000, n_val: int = 300,
                 seed: int = 0, bench_iters: int = 20, calib_images: int = 64, workers: int | None = None,
                 amp: str = "auto", progress: bool = True) -> dict:
    """Every stage; ``amp`` is the training autocast: ``auto`` is bf16 on a CPU that computes it
    natively (AVX512_BF16 / AMX: the step is 1.9x faster at the same AP, README "First run") and
    the recipe's setting elsewhere; ``bf16`` / ``none`` force it.

    ``workers``: processes of the data synthesis and of the training loader. ``None`` (auto): 2
    for the synthesis; for the loader 2 with CUDA and 0 (load in the training process) on the
    CPU, where loader processes take cores from the step's threads (measured on 2 cores with bf16:
    165 ms per iteration in-process, 186 ms with 1 or 2 workers; README "First run")."""
    from swdet.config import load_config
    from swdet.data.synth import write_synthetic_dataset
    from swdet.export import export_onnx
    from swdet.inference import evaluate_runtime
    from swdet.serve.bench import benchmark
    from swdet.serve.runtimes import load_runtime
    from swdet.serve.verify import format_verify_report, verify
    from swdet.train.engine import train
    from swdet.train.schedule import cpu_has_native_bf16

    t0 = time.perf_counter()
    marks: list[tuple[str, float]] = []

    def stage(name: str) -> None:
        marks.append((name, time.perf_counter()))
        _stage(name)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SwdetError(f"{out}: cannot create the output folder ({e.strerror or e})") from None
    data = out / "data"
    summary: dict = {"out": str(out), "stages": {}}

    stage("data synth")
    ann_val = data / "annotations" / "instances_val.json"
    if ann_val.is_file() and (data / "annotations" / "instances_train.json").is_file():
        click.echo(f"reusing {data}", err=True)
    else:
        write_synthetic_dataset(data, n_train=n_train, n_val=n_val, seed=seed,
                                workers=2 if workers is None else workers)

    if amp == "auto":
        amp = "bf16" if cpu_has_native_bf16() and not _cuda() else None
    summary["train_amp"] = amp or "recipe"
    loader_workers = (2 if _cuda() else 0) if workers is None else workers
    summary["train_workers"] = loader_workers

    def config_for(m: str, n_iters: int | None):
        sets = [f"data.root={data}", f"loss.method={m}", f"data.workers={loader_workers}"]
        if amp is not None:
            sets.append(f"train.amp={amp}")
        if n_iters is not None:
            sets.append(f"train.iters={n_iters}")
        return load_config(recipe_path(), sets)

    runs = {}
    for tag, m, n_iters in (("baseline", method, iters), ("candidate", candidate, candidate_iters)):
        stage(f"train {m} ({tag})")
        run_dir = out / "runs" / m
        cfg = config_for(m, n_iters)
        cfg.name = m
        if (run_dir / "model.safetensors").is_file():  # the artifact is written once training completes
            click.echo(f"reusing {run_dir}", err=True)
            summary_file = run_dir / "train_summary.json"
            res = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
        else:
            # no evaluation inside train: the "eval torch" stage below evaluates the same weights
            res = train(cfg, run_dir, progress=progress, evaluate=False)
            write_json(run_dir / "train_summary.json", {"train_time_s": res.get("train_time_s")})
        runs[tag] = run_dir
        summary["stages"][f"train_{tag}"] = {"method": m, "iters": cfg.train.iters,
                                             "time_s": res.get("train_time_s")}

    stage("export onnx")
    onnx_fp32 = out / "model.onnx"
    export_onnx(runs["baseline"], onnx_fp32)
    models = [("torch", runs["baseline"], None), ("onnxruntime", onnx_fp32, _size_mb(onnx_fp32))]

    try:
        from swdet.calib import calibrate
    except ImportError:  # a deployment without the calibration stage
        calibrate = None
    if calibrate is not None:
        stage("calib int8")
        onnx_int8 = out / "model.int8.onnx"
        calibrate(onnx_fp32, data / "train", onnx_int8, num_images=calib_images, method="percentile",
                  progress=progress)
        models.append(("onnxruntime-int8", onnx_int8, _size_mb(onnx_int8)))

    rows = []
    for name, path, size in models:
        stage(f"eval {name}")
        rt = load_runtime(path, device="cpu")
        stats = evaluate_runtime(rt, ann_val, data / "val", batch_size=8, progress=progress,
                                 desc=f"eval {name}", warn=False).result.stats
        stage(f"serve bench {name}")
        bench = benchmark(rt, batch_sizes=(1, 8), iters=bench_iters, warmup=3, images=data / "val")
        b1, b8 = bench["results"]
        if size is None:
            size = round(sum(f.stat().st_size for f in [path / "model.safetensors"]) / 2**20, 2)
        rows.append({"runtime": name, "precision": rt.precision, "AP": stats["AP"], "AP50": stats["AP50"],
                     "AP75": stats["AP75"], "latency_b1_ms": b1["latency_ms"]["p50"],
                     "throughput_b8_ips": b8["throughput_ips"], "size_mb": size})
        rt.close()
    summary["stages"]["runtimes"] = rows

    stage(f"verify {method} vs {candidate}")
    onnx_cand = out / f"{candidate}.onnx"
    export_onnx(runs["candidate"], onnx_cand)
    report = verify(onnx_fp32, onnx_cand, rounds=10)
    click.echo(format_verify_report(report), err=True)
    summary["stages"]["verify"] = report.to_dict()
    summary["verify_ok"] = bool(report.ok)
    summary["time_s"] = round(time.perf_counter() - t0, 1)
    ends = [t for _, t in marks[1:]] + [t0 + summary["time_s"]]
    summary["stage_times_s"] = {name: round(end - start, 1) for (name, start), end in zip(marks, ends)}
    write_json(out / "pipeline.json", summary)
    return summary


@click.command("pipeline", context_settings=CONTEXT)
@click.option("--out", default="runs/pipeline", show_default=True, type=click.Path(file_okay=False))
@click.option("--iters", type=click.IntRange(min=1), help="Training iterations of the baseline (default: the config's).")
@click.option("--candidate-iters", default=50, show_default=True, type=click.IntRange(min=1),
              help="Training iterations of the candidate: it is trained only for verify (its test-time "
                   "cost does not depend on them) and not evaluated.")
@click.option("--method", default="focal", show_default=True, help="Baseline method.")
@click.option("--candidate", default="swn", show_default=True, help="Candidate method for verify.")
@click.option("--train-images", default=2000, show_default=True, type=click.IntRange(min=8))
@click.option("--val-images", default=300, show_default=True, type=click.IntRange(min=4))
@click.option("--workers", type=click.IntRange(min=0),
              help="Processes for the data synthesis and the training loader (default: 2 for the "
                   "synthesis; the loader 2 with CUDA, 0 on the CPU, where loader processes slow the step).")
@click.option("--amp", default="auto", show_default=True, type=click.Choice(["auto", "bf16", "none"]),
              help="Training autocast: auto = bf16 on a CPU with native bf16 (AVX512_BF16/AMX), "
                   "else the recipe's.")
@click.option("--quiet", is_flag=True)
def pipeline(out, iters, candidate_iters, method, candidate, train_images, val_images, workers, amp, quiet):
    """Run every stage on the embedded default (synthetic data, retinanet_tiny, ONNX Runtime).

    \b
    Examples:
      swdet pipeline                       # about 5 minutes on 2 CPU cores (bf16-capable)
      swdet pipeline --iters 200 --train-images 200 --val-images 50 --out /tmp/quick
    """
    from swdet.table import format_table

    summary = run_pipeline(Path(out), iters=iters, candidate_iters=candidate_iters, method=method,
                           candidate=candidate, n_train=train_images, n_val=val_images, workers=workers,
                           amp=amp, progress=not quiet)
    click.echo(format_table(summary["stages"]["runtimes"], title=f"\nswdet pipeline ({summary['time_s']} s)"))
    click.echo(f"verify {method} vs {candidate}: " + ("same test-time cost" if summary["verify_ok"] else "DIFFERENT"))
    if not summary["verify_ok"]:
        raise SwdetError("verify failed: the candidate's test-time cost differs from the baseline's")
