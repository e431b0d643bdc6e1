"""INT8 (``swdet calib``) vs FP32 on ONNX Runtime CPU, in one run: accuracy, latency, throughput
and model size for each calibration method.

The FP32 model is the ``swdet export`` of a run (``--run DIR``, a trained run directory) or, for
the speed part only, a random-weights preset (``--model NAME --imgsz N``; AP is then not
meaningful and shown as "-"). Each method calibrates on ``--num-images`` images of
``DATA/train`` (the statistics are collected once and read from the cache by the other methods);
AP and AP50 are COCO box AP on ``DATA/val`` through the same host pre/post-processing as
``swdet eval``. Speed: :func:`swdet.serve.bench.interleaved_latency` times ``infer`` (network +
baked-in post-processing) of FP32 and INT8 alternately (ABBA rounds) on the same letterboxed
batch, both with ``--threads`` intra-op threads; ``speedup = 1 / median round ratio`` with its
95 % bootstrap band; throughput = batch / INT8 latency. The batch is the first images of
``DATA/val`` (``--timing-images val``, default: the post-processing's share of the time depends
on how many candidates pass the score threshold, so on the images a model was trained for) or
serve's synthetic scenes (``synthetic``, the tables before 2026-12).

    python benchmarks/int8.py --run runs/tiny_focal --data data/synth             # the acceptance table
    python benchmarks/int8.py --run runs/r50_192 --data data/synth --out benchmarks/results/int8_r50
        # runs/r50_192: swdet train benchmarks/configs/retinanet_r50_fpn_scratch_192.yaml --data data/synth --out runs/r50_192
    python benchmarks/int8.py --model retinanet_r50_fpn --imgsz 320 --data data/synth --val-limit 40 --rounds 6 \
        --out benchmarks/results/int8_r50_320_random                           # speed only
    python benchmarks/int8.py --quick --data data/synth                           # functional check (random tiny)
    python benchmarks/int8.py --run runs/tiny_focal --data data/synth --no-rewrite --head-outputs float \
        --out benchmarks/results/int8_before_rewrite                             # the INT8 graph before swdet.calib.fusion

Goals (printed per row): trained model: ``|AP_int8 - AP_fp32| <= 1.0`` AP point for every method;
``>= 1.5x`` throughput at batch 8. Writes ``--out`` ``.json`` and ``.md`` (default
``benchmarks/results/int8``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from _results import write_results

GOAL_AP_DROP = 0.01  # 1.0 AP point (AP is a fraction)
GOAL_SPEEDUP = 1.5  # throughput at batch 8


def random_artifact(name: str, imgsz: int, out: Path, data: Path) -> Path:
    """A random-weights preset with the dataset's classes (speed only)."""
    import torch

    import swdet.artifact as A
    import swdet.config as C
    from swdet.models import build_model

    cats = json.loads((data / "annotations" / "instances_val.json").read_text())["categories"]
    cfg = C.model_preset(name)
    cfg.pretrained, cfg.num_classes, cfg.imgsz = "none", len(cats), imgsz
    torch.manual_seed(0)
    model = build_model(cfg)
    A.save_artifact(out, model, A.build_metadata(cfg, C.PostprocessConfig(), class_names=[c["name"] for c in cats],
                                                 category_ids=[c["id"] for c in cats], method=["focal"]))
    return out


def evaluate(rt, data: Path, limit: int | None) -> dict:
    """COCO AP on ``data/val`` (the first ``limit`` images): evaluation covers the images that
    were predicted and read (:func:`swdet.inference.evaluate_runtime`)."""
    from swdet.data.coco import CocoDetection
    from swdet.inference import evaluate_runtime

    ann = data / "annotations" / "instances_val.json"
    ds = CocoDetection(ann, data / "val", imgsz=rt.imgsz, train=False)
    if limit:
        import torch

        full = ds
        ds = torch.utils.data.Subset(full, range(min(limit, len(full))))
        ds.category_ids, ds.coco = full.category_ids, full.coco
    stats = evaluate_runtime(rt, ann, dataset=ds, batch_size=8, progress=False).result.stats
    return {"AP": stats["AP"], "AP50": stats["AP50"]}


def speed(rt_fp32, rt_int8, batch_sizes, args) -> dict:
    from swdet.serve.bench import interleaved_latency

    images = Path(args.data) / "val" if args.timing_images == "val" else None
    out = {}
    for b in batch_sizes:
        lat = interleaved_latency(rt_fp32, rt_int8, batch_size=b, rounds=args.rounds, iters=args.iters,
                                  warmup=args.warmup, images=images)
        lo, hi = lat["band"]
        out[b] = {"fp32_ms": lat["a_ms"]["median"], "int8_ms": lat["b_ms"]["median"],
                  "speedup": round(1.0 / lat["ratio"], 3), "band": [round(1.0 / hi, 3), round(1.0 / lo, 3)],
                  "throughput_ips": round(b * 1000.0 / lat["b_ms"]["median"], 2),
                  "fp32_throughput_ips": round(b * 1000.0 / lat["a_ms"]["median"], 2)}
    return out


def run(args) -> dict:
    from swdet.calib import calibrate
    from swdet.export.onnx_export import export_onnx
    from swdet.serve.runtimes.onnxruntime_runtime import OnnxRuntime

    data = Path(args.data)
    trained = args.run is not None
    rows = []
    with tempfile.TemporaryDirectory(prefix="swdet_int8_") as tmp:
        work = Path(tmp)
        src = Path(args.run) if trained else random_artifact(args.model, args.imgsz, work / "art", data)
        fp32 = export_onnx(src, work / "fp32.onnx", imgsz=args.imgsz if trained and args.imgsz else None)
        rt32 = OnnxRuntime(fp32, device="cpu", intra_op_threads=args.threads)
        model_name = rt32.meta["model"].get("name", "?")
        print(f"{model_name} @ {rt32.imgsz} ({'trained: ' + str(src) if trained else 'random weights'})", flush=True)
        acc32 = evaluate(rt32, data, args.val_limit) if trained else {"AP": None, "AP50": None}
        fp32_row = {"precision": "fp32", "method": "-", "calib_images": None, **acc32,
                    "size_mb": round(fp32.stat().st_size / 2**20, 2), "calib_s": None}
        rows.append(fp32_row)
        cache = work / "fp32.calib.npz"
        for method in args.methods:
            t0 = time.perf_counter()
            res = calibrate(fp32, data / "train", work / f"int8_{method}.onnx", num_images=args.num_images,
                            method=method, percentile=args.percentile, cache=cache, batch_size=args.calib_batch,
                            rewrite=not args.no_rewrite, head_outputs=args.head_outputs, stem=args.stem)
            calib_s = time.perf_counter() - t0
            rt8 = OnnxRuntime(res.out, device="cpu", intra_op_threads=args.threads)
            acc = evaluate(rt8, data, args.val_limit) if trained else {"AP": None, "AP50": None}
            sp = speed(rt32, rt8, args.batch_sizes, args)
            row = {"precision": "int8", "method": method + (f" {args.percentile:g}" if method == "percentile" else ""),
                   "calib_images": res.num_images, **acc, "size_mb": round(res.size_mb, 2),
                   "calib_s": round(calib_s, 1), "cache": "hit" if res.cache_hit else "new", "speed": sp}
            if trained:
                drop = acc32["AP"] - acc["AP"]
                row["ap_drop_points"] = round(100 * drop, 2)
                row["ap_goal"] = f"drop <= {100 * GOAL_AP_DROP:.1f}: {'met' if drop <= GOAL_AP_DROP else 'NOT met'}"
            b8 = sp.get(8) or sp[max(sp)]
            row["speed_goal"] = (f">= {GOAL_SPEEDUP}x at batch {8 if 8 in sp else max(sp)}: "
                                 f"{'met' if b8['speedup'] >= GOAL_SPEEDUP else 'NOT met'}")
            rows.append(row)
            print(f"  {method}: AP {acc['AP']}, size {row['size_mb']} MB, calib {calib_s:.1f} s, "
                  + ", ".join(f"b{b} x{v['speedup']:.2f}" for b, v in sp.items()), flush=True)
            del rt8
        # the FP32 row's latencies are those measured against the first method's model
        first = rows[1]["speed"]
        fp32_row["speed"] = {b: {"fp32_ms": v["fp32_ms"], "throughput_ips": v["fp32_throughput_ips"]}
                             for b, v in first.items()}
    from swdet.serve.bench import host_info

    return {"model": model_name, "imgsz": rt32.imgsz, "trained": trained,
            "calib_flavour": {"head_outputs": args.head_outputs, "rewrite": not args.no_rewrite, "stem": args.stem},
            "timing_images": args.timing_images,
            "run": str(args.run) if trained else None,
            "data": str(data), "threads": args.threads, "rounds": args.rounds, "iters": args.iters,
            "batch_sizes": args.batch_sizes, "num_images": args.num_images, "quick": bool(args.quick),
            "host": host_info(), "goals": {"ap_drop_points": 100 * GOAL_AP_DROP, "speedup_batch8": GOAL_SPEEDUP},
            "rows": rows}


def to_markdown(r: dict) -> str:
    from swdet.table import format_table

    h = r["host"]
    bs = r["batch_sizes"]
    fmt = (lambda v, d=2: "-" if v is None else f"{v:.{d}f}")
    ap = (lambda v: "-" if v is None else f"{100 * v:.1f}")
    lines = [f"# INT8 vs FP32: {r['model']} @ {r['imgsz']} ({'trained' if r['trained'] else 'random weights'})", "",
             (f"ONNX Runtime {h.get('onnxruntime')} CPU: {h.get('cpu')} ({h.get('cpu_count')} cores, {r['threads']} "
             f"threads). Calibration: {r['num_images']} images of `{r['data']}/train`; AP on `{r['data']}/val` "
             f"(COCO box AP, points). Latency: median `infer` (network + post-processing) of "
             f"{'the first images of `' + str(r['data']) + '/val`' if r.get('timing_images') == 'val' else 'synthetic scenes'}"
             f" in interleaved FP32/INT8 rounds ({r['rounds']} x {r['iters']}); speedup with its 95 % bootstrap band. Each INT8 row is timed against "
             f"its own interleaved FP32 runs (column `fp32 b{r['batch_sizes'][-1]} ms (paired)`: the speedup's "
             f"reference); the fp32 row shows the first method's pairing. Calibration flavour: "
             f"{', '.join(f'{k} {v}' for k, v in (r.get('calib_flavour') or {}).items())}."), "",
             *(["**Quick setting** (`--quick`): a functional check, not a measurement.", ""] if r["quick"] else []),
             *([] if r["trained"] else ["Random weights: AP is not meaningful and not shown (speed and size only).",
                                        ""])]
    headers = ["precision", "calib method", "calib images", "AP", "AP50", "ΔAP",
               *(f"latency b{b} ms" for b in bs), f"img/s b{bs[-1]}", f"fp32 b{bs[-1]} ms (paired)", f"speedup b{bs[-1]} (band)", "size MB"]
    rows = []
    for row in r["rows"]:
        sp = {int(k): v for k, v in (row.get("speed") or {}).items()}
        if row["precision"] == "fp32":
            lat = [fmt(sp.get(b, {}).get("fp32_ms")) for b in bs]
            thr, spd, ref = fmt(sp.get(bs[-1], {}).get("throughput_ips"), 1), "1.00x", "-"
        else:
            lat = [fmt(sp.get(b, {}).get("int8_ms")) for b in bs]
            last = sp.get(bs[-1], {})
            thr, ref = fmt(last.get("throughput_ips"), 1), fmt(last.get("fp32_ms"))
            spd = f"{last['speedup']:.2f}x [{last['band'][0]:.2f}, {last['band'][1]:.2f}]" if last else "-"
        drop = "-" if row.get("ap_drop_points") is None else f"{-row['ap_drop_points']:+.1f}"
        rows.append([row["precision"], row["method"], str(row["calib_images"] or "-"), ap(row["AP"]), ap(row["AP50"]),
                     drop, *lat, thr, ref, spd, f"{row['size_mb']:.2f}"])
    lines.append(format_table(rows, headers, markdown=True))
    goals = [f"- {row['method']}: " + "; ".join(g for g in (row.get("ap_goal"), row.get("speed_goal")) if g)
             for row in r["rows"] if row["precision"] == "int8"]
    return "\n".join(lines + ["", "Goals (AP drop <= 1.0 point on a trained model; >= 1.5x throughput at batch 8):",
                              *goals]) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", help="trained run directory (or artifact) to export; without it a random-weights --model")
    ap.add_argument("--data", required=True, help="COCO-format dataset root with train/, val/, annotations/")
    ap.add_argument("--model", default="retinanet_tiny", help="preset for the random-weights (speed-only) case")
    ap.add_argument("--imgsz", type=int, help="input size (default: the run's; random models: 320)")
    ap.add_argument("--methods", default="entropy,percentile,minmax")
    ap.add_argument("--percentile", type=float, default=99.99)
    ap.add_argument("--num-images", type=int, default=128)
    ap.add_argument("--calib-batch", type=int, default=4)
    ap.add_argument("--val-limit", type=int, help="evaluate on the first N val images only")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ONNX Runtime intra-op threads")
    ap.add_argument("--head-outputs", choices=["int8", "float"], default="int8",
                    help="swdet calib --head-outputs: the prediction convolutions' outputs int8 (default) or float")
    ap.add_argument("--timing-images", choices=["val", "synthetic"], default="val",
                    help="the timed batch: the first images of DATA/val (default) or serve's synthetic scenes")
    ap.add_argument("--stem", choices=["float", "int8"], default="float",
                    help="swdet calib --stem: the image stem convolution float32 (default) or int8")
    ap.add_argument("--no-rewrite", action="store_true",
                    help="swdet calib --no-rewrite: the graph before the int8 rewrites (with --head-outputs float: "
                         "the previous INT8 model)")
    ap.add_argument("--quick", action="store_true",
                    help="8 calibration images, 3 rounds x 1 call (a functional check, not a measurement)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "int8",
                    help="output stem: writes <stem>.json and <stem>.md")
    args = ap.parse_args(argv)
    if args.quick:
        args.num_images, args.rounds, args.iters, args.warmup = min(args.num_images, 8), 3, 1, 1
    if args.run is None and args.imgsz is None:
        args.imgsz = 320
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.batch_sizes = [int(b) for b in str(args.batch_sizes).split(",")]
    result = run(args)
    md = to_markdown(result)
    print(md)
    write_results(args.out, result, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
