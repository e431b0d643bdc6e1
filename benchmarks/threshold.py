"""Sampling-Free's adaptive score threshold at test time: AP and post-processing cost of
θ = N_f/N (auto) against θ = 0 and θ = 0.05, on ONNX Runtime (CPU), in one run.

For a trained run directory (``--run``), the script exports three ONNX graphs that differ only in
the baked threshold, then measures on the same data:

- **AP** of each graph on ``--ann`` / ``--images`` (COCO, fractions in [0, 1]) and the mean
  number of detections per image;
- **end-to-end latency**: ``infer`` of the full graph on letterboxed batches of real images
  (the first ``--latency-images`` in batches of ``--batch-size``; ms per batch);
- **post-processing latency**: the post-processing *subgraph* alone. Each exported graph has a
  named boundary between the network and the post-processing (``net/cls_logits_p*``,
  ``net/bbox_deltas_p*``), so :class:`onnx.utils.Extractor` cuts it into ``network`` (images ->
  head outputs) and ``post`` (head outputs -> detections). The network is run once per batch to
  get the *real* head outputs, and the ``post`` sessions are timed on exactly those tensors.
  This is sound because the work in the post-processing is data dependent (how many (anchor,
  class) candidates pass θ and enter NMS): feeding real scores measures the real work, and
  timing the subgraph isolates it from the network's much larger and noisier cost, which a
  difference of two end-to-end timings would inherit. The network subgraph's time is reported
  too, so ``network + post ≈ end-to-end`` can be checked.

All timings are taken round-robin (each round times every graph, the order rotating per round),
so drift of a shared machine hits all three alike; medians with the spread across rounds.

    python benchmarks/threshold.py --run runs/retinanet_tiny_sampling_free \\
        --ann data/synth/annotations/instances_val.json --images data/synth/val

Writes ``benchmarks/results/threshold.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _results import write_results

THRESHOLDS = (("auto", "auto"), ("0", 0.0), ("0.05", 0.05))


def split_graph(path: Path) -> tuple[bytes, bytes, list[str]]:
    """``(network model bytes, post-processing model bytes, boundary tensor names)``."""
    import onnx
    from onnx.utils import Extractor

    from swdet.serve.runtimes.base import OUTPUT_NAMES

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    produced = [o for n in model.graph.node for o in n.output]
    boundary = sorted(o for o in produced if o.startswith(("net/cls_logits_p", "net/bbox_deltas_p")))
    if not boundary:
        raise SystemExit(f"{path}: no net/cls_logits_p*/net/bbox_deltas_p* tensors; cannot split network and "
                         "post-processing (export with swdet.export)")
    ex = Extractor(model)
    net = ex.extract_model([model.graph.input[0].name], boundary)
    post = ex.extract_model(boundary, list(OUTPUT_NAMES))
    return net.SerializeToString(), post.SerializeToString(), boundary


def session(data: bytes, threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])


def round_robin(fns: dict, rounds: int, iters: int, warmup: int) -> dict:
    """Median ms per callable, timed in rotating order every round; plus the round medians."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    per_round = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            ts = []
            for _ in range(iters):
                t0 = time.perf_counter()
                fns[n]()
                ts.append(time.perf_counter() - t0)
            per_round[n].append(float(np.median(ts)) * 1000)
    return {n: {"median_ms": round(float(np.median(v)), 3), "round_min_ms": round(min(v), 3),
                "round_max_ms": round(max(v), 3)} for n, v in per_round.items()}


def evaluate(rt, ann, images, batch_size: int) -> tuple[float, float, int]:
    from swdet.inference import evaluate_runtime

    ev = evaluate_runtime(rt, ann, images, batch_size=batch_size, progress=False, warn=False)
    n = len(ev.predictions.image_ids)
    return float(ev.result.stats["AP"]), len(ev.predictions) / max(1, n), n


def to_markdown(res: dict) -> str:
    from swdet.table import format_table

    lines = ["# Adaptive score threshold (Sampling-Free θ = N_f/N) at test time", "",
             f"Run `{res['run']}` (method {res['method']}, threshold source `{res['threshold_source']}`), "
             f"{res['num_images']} evaluation images (latency: the first {res['latency_images']} in batches of {res['batch_size']}, ms per batch), ONNX Runtime {res['host'].get('onnxruntime')} on "
             f"{res['host'].get('cpu')} ({res['threads'] or 'default'} threads), batch {res['batch_size']}, "
             f"{res['rounds']} rounds x {res['iters']} calls, round-robin. Post-processing = the extracted "
             "subgraph after `net/*` fed the real head outputs (see the script's docstring).", ""]
    rows = []
    for r in res["rows"]:
        p = r["post"]
        rows.append([r["label"], f"{r['theta']:.5g}", f"{r['AP']:.4f}", f"{r['dets_per_image']:.1f}",
                     f"{r['end_to_end']['median_ms']:.2f}", f"{res['network']['median_ms']:.2f}",
                     f"{p['median_ms']:.3f} ({p['round_min_ms']:.3f}-{p['round_max_ms']:.3f})"])
    lines.append(format_table(rows, ["θ", "value", "AP", "dets/img", "end-to-end ms", "network ms",
                                     "post-processing ms (round range)"], markdown=True))
    g = res.get("goal")
    if g:
        lines += ["", f"Goal (θ = N_f/N vs θ = 0): AP within 0.1 point: {g['ap_diff_points']:+.2f} points, "
                      f"{'met' if g['ap_met'] else 'NOT met'}; post-processing >= 1.5x faster: "
                      f"{g['post_speedup']:.2f}x (round-median ratio), {'met' if g['speed_met'] else 'NOT met'}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, type=Path, help="trained run directory (Sampling-Free)")
    ap.add_argument("--ann", required=True, type=Path)
    ap.add_argument("--images", required=True, type=Path)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--latency-images", type=int, default=8,
                    help="latency: the first N images in batches of --batch-size, per-batch mean (default 8)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "threshold")
    args = ap.parse_args(argv)

    from swdet.artifact import META_NAME, read_metadata
    from swdet.export.onnx_export import export_onnx
    from swdet.preprocess import list_images, prepare_batch
    from swdet.serve.bench import host_info
    from swdet.deploy.onnx_meta import baked_score_threshold
    from swdet.serve.runtimes.onnxruntime_runtime import OnnxRuntime

    meta = read_metadata(args.run / META_NAME)
    thr_info = meta.get("threshold") or {}
    if thr_info.get("source") != "sampling_free":
        print(f"note: {args.run} has threshold source {thr_info.get('source')!r}, not sampling_free; "
              "'auto' is its model.json threshold", file=sys.stderr)
    rows, fns_e2e, fns_post = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="swdet_thr_") as tmp:
        files = list_images(args.images)[: max(args.batch_size, args.latency_images)]
        runtimes = {}
        for label, thr in THRESHOLDS:
            path = export_onnx(args.run, Path(tmp) / f"theta_{label}.onnx", score_threshold=thr)
            runtimes[label] = rt = OnnxRuntime(path, device="cpu", intra_op_threads=args.threads)
            print(f"θ={label} ({baked_score_threshold(rt.meta):.5g}): evaluating ...", flush=True)
            ap_, dets, n_eval = evaluate(rt, args.ann, args.images, args.batch_size)
            rows.append({"label": label, "theta": baked_score_threshold(rt.meta), "AP": ap_, "dets_per_image": dets,
                         "path": path})
        first = runtimes[THRESHOLDS[0][0]]
        x_all = prepare_batch(files, first.imgsz, on_error="skip").images.astype(np.float32)
        xs = [x_all[i:i + args.batch_size] for i in range(0, len(x_all) - args.batch_size + 1, args.batch_size)]
        net_bytes, _, boundary = split_graph(rows[0]["path"])
        net = session(net_bytes, args.threads)
        in_name = net.get_inputs()[0].name
        heads = [dict(zip(boundary, net.run(boundary, {in_name: x}))) for x in xs]
        for r in rows:
            _, post_bytes, _ = split_graph(r["path"])
            post = session(post_bytes, args.threads)
            feeds = [{i.name: h[i.name] for i in post.get_inputs()} for h in heads]
            fns_post[r["label"]] = (lambda s=post, fs=feeds: [s.run(None, f) for f in fs])
            fns_e2e[r["label"]] = (lambda rt=runtimes[r["label"]]: [rt.infer(x) for x in xs])
        fns_net = {"network": lambda: [net.run(boundary, {in_name: x}) for x in xs]}
        timed = round_robin({**{f"e2e:{k}": v for k, v in fns_e2e.items()},
                             **{f"post:{k}": v for k, v in fns_post.items()}, **fns_net},
                            args.rounds, args.iters, args.warmup)
        timed = {n: {k: round(v / len(xs), 3) for k, v in t.items()} for n, t in timed.items()}  # per batch
    for r in rows:
        r.pop("path")
        r["end_to_end"] = timed[f"e2e:{r['label']}"]
        r["post"] = timed[f"post:{r['label']}"]
    res = {"run": str(args.run), "method": ",".join((meta.get("training") or {}).get("method", [])),
           "threshold_source": thr_info.get("source"), "threshold_info": thr_info, "num_images": n_eval,
           "batch_size": int(xs[0].shape[0]), "latency_images": int(len(xs) * xs[0].shape[0]), "rounds": args.rounds, "iters": args.iters, "threads": args.threads,
           "host": host_info(), "network": timed["network"], "boundary": boundary, "rows": rows,
           "method_note": "post = extracted post-processing subgraph fed the real head outputs of the batch"}
    by = {r["label"]: r for r in rows}
    if "auto" in by and "0" in by:
        diff = 100 * (by["auto"]["AP"] - by["0"]["AP"])
        speed = by["0"]["post"]["median_ms"] / max(by["auto"]["post"]["median_ms"], 1e-9)
        res["goal"] = {"ap_diff_points": round(diff, 3), "ap_met": abs(diff) <= 0.1,
                       "post_speedup": round(speed, 3), "speed_met": speed >= 1.5}
    md = to_markdown(res)
    print(md)
    write_results(args.out, res, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
