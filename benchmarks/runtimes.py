"""Runtime speed: PyTorch eager vs ONNX Runtime on CPU (and, where present, CUDA graphs and
TensorRT), measured as ratios in one run.

For each model (random weights: speed does not depend on training) the script writes the
artifact, exports it with :func:`swdet.export.onnx_export.export_onnx` (post-processing in the
graph), and compares the runtimes with :func:`swdet.serve.bench.interleaved_latency`: the same
letterboxed batch, ``runtime.infer`` + ``synchronize`` timed, A and B alternating every round
(ABBA) so machine drift hits both; ``speedup = 1 / median_rounds(t_B / t_A)`` with a 95 %
bootstrap band. Both CPU runtimes use the same number of threads (``--threads``, default: all
cores). ``infer`` covers the network *and* the post-processing (torch: eager top-k/NMS;
ONNX: the baked-in graph), i.e. what a deployment calls.

    python benchmarks/runtimes.py                       # retinanet_tiny @320, retinanet_r50_fpn @512, batch 1 and 8
    python benchmarks/runtimes.py --quick               # retinanet_tiny only, batch 1 and 2, few rounds

Rows: ``torch eager`` vs ``onnxruntime`` on CPU (goal: ONNX Runtime >= 1.3x eager); on a CUDA
machine ``torch eager`` vs ``torch + CUDA graphs`` (and ``onnxruntime`` CUDA with
onnxruntime-gpu); ``tensorrt`` rows say "not run" where TensorRT (or its builder) is absent.
Writes ``benchmarks/results/runtimes.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from _results import write_results

GOAL_ORT_SPEEDUP = 1.3


def build_model(name: str, imgsz: int, out: Path, num_classes: int = 80) -> Path:
    import torch

    import swdet.artifact as A
    import swdet.config as C
    from swdet.models import build_model as _build

    cfg = C.model_preset(name)
    cfg.pretrained = "none"
    cfg.num_classes = num_classes
    cfg.imgsz = imgsz
    torch.manual_seed(0)
    model = _build(cfg)
    A.save_artifact(out, model, A.build_metadata(cfg, C.PostprocessConfig(), class_names=[f"c{i}" for i in range(num_classes)],
                                                 category_ids=list(range(1, num_classes + 1)), method=["focal"]))
    return out


def compare(label_a, rt_a, label_b, rt_b, batch, args, images) -> dict:
    from swdet.serve.bench import interleaved_latency

    t0 = time.perf_counter()
    lat = interleaved_latency(rt_a, rt_b, batch_size=batch, rounds=args.rounds, iters=args.iters, warmup=args.warmup,
                              images=images)
    lo, hi = lat["band"]
    return {"a": label_a, "b": label_b, "batch": batch, "a_ms": lat["a_ms"]["median"], "b_ms": lat["b_ms"]["median"],
            "speedup": round(1.0 / lat["ratio"], 3), "speedup_band": [round(1.0 / hi, 3), round(1.0 / lo, 3)],
            "rounds": lat["rounds"], "iters": lat["iters"], "wall_s": round(time.perf_counter() - t0, 1)}


def not_run(label_a, label_b, batch, why) -> dict:
    return {"a": label_a, "b": label_b, "batch": batch, "a_ms": None, "b_ms": None, "speedup": None,
            "speedup_band": None, "note": f"not run: {why}"}


def tensorrt_reason() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU"
    try:
        import swdet.export.tensorrt_build  # noqa: F401
    except ImportError:
        return "swdet.export.tensorrt_build is not available"
    return None


def run_model(name: str, imgsz: int, args, work: Path, images) -> list[dict]:
    import torch

    from swdet.export.onnx_export import export_onnx
    from swdet.serve.runtimes.onnxruntime_runtime import OnnxRuntime
    from swdet.serve.runtimes.torch_runtime import TorchRuntime

    art = build_model(name, imgsz, work / f"{name}_{imgsz}")
    onnx_path = export_onnx(art, work / f"{name}_{imgsz}.onnx")
    rows = []
    torch_cpu = TorchRuntime(art, device="cpu")
    ort_cpu = OnnxRuntime(onnx_path, device="cpu", intra_op_threads=args.threads)
    for b in args.batch_sizes:
        r = compare("torch eager (cpu)", torch_cpu, "onnxruntime (cpu)", ort_cpu, b, args, images)
        r["goal"] = f">= {GOAL_ORT_SPEEDUP}x: {'met' if r['speedup'] >= GOAL_ORT_SPEEDUP else 'NOT met'}"
        rows.append(r)
        print(f"  {name}@{imgsz} b{b}: torch {r['a_ms']:.1f} ms, ort {r['b_ms']:.1f} ms, x{r['speedup']:.2f}",
              flush=True)
    del torch_cpu, ort_cpu
    trt_why = tensorrt_reason()
    if torch.cuda.is_available():
        eager = TorchRuntime(art, device="cuda")
        graphed = TorchRuntime(art, device="cuda", cuda_graphs=True)
        for b in args.batch_sizes:
            rows.append(compare("torch eager (cuda)", eager, "torch + CUDA graphs (cuda)", graphed, b, args, images))
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            ort_gpu = OnnxRuntime(onnx_path, device="cuda")
            for b in args.batch_sizes:
                rows.append(compare("torch eager (cuda)", eager, "onnxruntime (cuda)", ort_gpu, b, args, images))
        if trt_why is None:
            from swdet.export import tensorrt_build
            from swdet.serve.runtimes.tensorrt_runtime import TensorRTRuntime

            try:
                engine = work / f"{name}_{imgsz}.engine"
                tensorrt_build.build_engine(onnx_path, engine, max_batch=max(args.batch_sizes))
                trt_rt = TensorRTRuntime(engine)
                for b in args.batch_sizes:
                    rows.append(compare("torch eager (cuda)", eager, "tensorrt (cuda)", trt_rt, b, args, images))
            except Exception as e:  # noqa: BLE001 - report, keep the other rows
                trt_why = f"engine build failed: {type(e).__name__}: {str(e).splitlines()[0][:100]}"
    else:
        for b in args.batch_sizes:
            rows.append(not_run("torch eager (cuda)", "torch + CUDA graphs (cuda)", b, "no CUDA GPU"))
    if trt_why is not None:
        for b in args.batch_sizes:
            rows.append(not_run("torch eager (cuda)", "tensorrt (cuda)", b, trt_why))
    for r in rows:
        r.update(model=name, imgsz=imgsz)
    return rows


def to_markdown(result: dict) -> str:
    from swdet.table import format_table

    h = result["host"]
    lines = ["# Runtime speed", "",
             f"{h.get('cpu')} ({h.get('cpu_count')} cores visible, {result['threads']} threads), torch {h.get('torch')}, "
             f"onnxruntime {h.get('onnxruntime')}, GPU: {result['gpu'] or 'none'}. Random weights, 80 classes. "
             f"Interleaved A/B rounds: {result['rounds']} x {result['iters']} calls each; speedup = 1 / median "
             f"round ratio t_B/t_A with its 95 % bootstrap band. `infer` = network + post-processing.", "",
             *(["**Quick setting** (`--quick`): a functional check with few rounds, not a measurement.", ""]
               if result.get("quick") else [])]
    fmt = (lambda v: f"{v:.2f}" if isinstance(v, (int, float)) else "-")
    rows = []
    for r in result["rows"]:
        band = f"[{r['speedup_band'][0]:.2f}, {r['speedup_band'][1]:.2f}]" if r.get("speedup_band") else "-"
        rows.append([r["model"], str(r["imgsz"]), str(r["batch"]), r["a"], r["b"], fmt(r["a_ms"]), fmt(r["b_ms"]),
                     fmt(r["speedup"]) + "x" if r["speedup"] else "-", band, r.get("goal") or r.get("note", "")])
    lines.append(format_table(rows, ["model", "imgsz", "batch", "A", "B", "A ms", "B ms", "B speedup", "band",
                                     "note"], markdown=True))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="retinanet_tiny:320,retinanet_r50_fpn:512",
                    help="name:imgsz pairs, comma separated")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads of both runtimes")
    ap.add_argument("--images", help="folder of real images (default: synthetic scenes)")
    ap.add_argument("--quick", action="store_true", help="retinanet_tiny@320 only, batch 1 and 2, 3 rounds")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "runtimes")
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.batch_sizes, args.rounds, args.iters, args.warmup = "retinanet_tiny:320", "1,2", 3, 2, 1
    args.batch_sizes = [int(b) for b in str(args.batch_sizes).split(",")]

    import torch

    from swdet.serve.bench import host_info

    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="swdet_bench_") as tmp:
        for spec in args.models.split(","):
            name, _, size = spec.partition(":")
            print(f"{name} @ {size or 'preset'}", flush=True)
            rows.extend(run_model(name, int(size) if size else 320, args, Path(tmp), args.images))
    result = {"host": host_info(), "threads": args.threads, "rounds": args.rounds, "iters": args.iters,
              "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
              "goal": f"onnxruntime >= {GOAL_ORT_SPEEDUP}x torch eager on CPU", "quick": bool(args.quick), "rows": rows}
    md = to_markdown(result)
    print(md)
    write_results(args.out, result, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
