"""Where the INT8 time goes: ONNX Runtime's per-node profile of the FP32 and the INT8 graph of one
model, by op type, by section of the network and by kind of work.

The FP32 model is the ``swdet export`` of a trained run (``--run DIR``) or of a random-weights
preset (``--model NAME --imgsz N``; with ``--data`` the dataset's classes, as ``benchmarks/int8.py``
does); the INT8 model is its ``swdet calib`` (default method) on ``--num-images`` images of
``DATA/train``. Each graph runs in its own session with ``enable_profiling`` (``--threads``
intra-op threads, one inter-op) on one letterboxed batch of the first ``--batch`` images of
``DATA/val`` (synthetic images without ``--data``): ``--warmup`` calls, then ``--runs`` profiled
ones, whose ``*_kernel_time`` node events are summed in ms per call (ORT's raw profile is deleted).

Sections, from the node names of ORT's optimized graph (saved by the same session), first match:
``post/*`` (and ``box/*``, the R-CNN box head) -> post-processing (everything after the network's
``net/*`` outputs); ``net/normalize`` -> input normalization; ``net/head`` -> ``head: cls tower``
(``cls_subnet``, ``cls_logits``), ``head: box tower`` (``box_subnet``, ``bbox_pred``; also the INT8
graph's merged cls+box first conv, named there) or ``head: outputs`` (the output reshapes); any
other ``net/<module>`` (``backbone``, ``fpn``) -> that module. A node without such a name (those ORT
inserts: ``ReorderInput``, ``Transpose_token_*``, ...) takes the section of its first input's
producer, else of its first consumer. Kinds (first match): int8 conv (``QLinearConv``, ...), float
conv, Q/DQ, layout (``Transpose``/``Reshape``/``Reorder*`` not in the exported graph: ORT's), float
GroupNorm (``InstanceNormalization`` and the other ops of its module, or the ops of its
channels-last form, ``.../nhwc/...``, from ``swdet calib``'s rewrite), other. Convolutions ORT runs
as int8 vs float: :func:`swdet.calib.ort_conv_counts`.

    python benchmarks/int8_profile.py --run runs/methods/retinanet/focal/seed2 --data data/synth \\
        --out benchmarks/results/int8_profile
    python benchmarks/int8_profile.py --model retinanet_r50_fpn --imgsz 320 --data data/synth \\
        --out benchmarks/results/int8_profile_retinanet_r50_fpn_320_random
    python benchmarks/int8_profile.py --model retinanet_tiny --imgsz 128 --batch 2 --quick --out /tmp/p  # smoke

Writes ``--out`` ``.json`` and ``.md``; default stem in ``benchmarks/results``: ``int8_profile`` for
a run, ``int8_profile_<model>_<imgsz>_random`` for random weights.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import tempfile
from itertools import cycle, islice
from pathlib import Path

import numpy as np

from _results import write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from int8 import random_artifact  # noqa: E402
from roofline import _artifact, _images  # noqa: E402

from swdet.table import format_table  # noqa: E402

TOP_NODES = 30  # JSON "top_other_nodes": the slowest non-convolution nodes of each graph
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
LAYOUT_OPS = {"Transpose", "Reshape", "ReorderInput", "ReorderOutput"}
ORDER = ["input normalization", "backbone", "fpn", "head: cls tower", "head: box tower", "head: outputs",
         "post-processing"]
KINDS = ["int8 conv", "float conv", "Q/DQ", "layout (ORT-inserted)", "float GroupNorm", "other"]
_NET = re.compile(r"(?:^|/)net[/.]([A-Za-z]\w*)")


def name_section(name: str) -> str | None:
    """The section a node name says (module docstring), or None."""
    if re.match(r"/?(post|box)/", name):
        return "post-processing"
    m = _NET.search(name)
    if m is None:
        return None
    part = m.group(1)
    if re.match(r"(cls_logits|bbox_deltas)_p\d", part):  # the boundary tensors' own Q/DQ nodes
        return "head: outputs"
    if part == "head":
        return ("head: cls tower" if re.search(r"cls_(subnet|logits)", name) else
                "head: box tower" if re.search(r"box_subnet|bbox_pred", name) else "head: outputs")
    return "input normalization" if part == "normalize" else part


def sections(graph) -> dict[str, str]:
    """``{node name: section}`` for ORT's optimized graph: the name's, else the first input's
    producer's, else the first consumer's (repeated until nothing changes), else ``unassigned``."""
    nodes = list(graph.node)
    sec = {n.name: name_section(n.name) for n in nodes}
    prod = {o: n.name for n in nodes for o in n.output}
    cons = collections.defaultdict(list)
    for n in nodes:
        for i in n.input:
            cons[i].append(n.name)
    changed = True
    while changed:
        changed = False
        for n in nodes + nodes[::-1]:
            if sec[n.name] is None:
                near = [sec.get(prod.get(i)) for i in n.input] + [sec[c] for o in n.output for c in cons[o]]
                sec[n.name] = next((s for s in near if s), None)
                changed |= sec[n.name] is not None
    return {k: v or "unassigned" for k, v in sec.items()}


def kinds(graph, source_names: set[str]) -> dict[str, str]:
    """``{node name: kind}`` (module docstring) for ORT's optimized graph."""
    from swdet.calib.fusion import FLOAT_CONV_OPS, INT8_CONV_OPS

    gn = {n.name.rsplit("/", 1)[0] for n in graph.node if n.op_type == "InstanceNormalization"}
    out = {}
    for n in graph.node:
        op = n.op_type
        out[n.name] = ("int8 conv" if op in INT8_CONV_OPS else "float conv" if op in FLOAT_CONV_OPS else
                       "Q/DQ" if op in QDQ_OPS else
                       "layout (ORT-inserted)" if op in LAYOUT_OPS and n.name not in source_names else
                       "float GroupNorm" if n.name.rsplit("/", 1)[0] in gn or "/nhwc/" in n.name else "other")
    return out


def profile(path: Path, feeds: dict, args, tmp: Path) -> dict:
    """Profile ``path`` (``args.warmup`` + ``args.runs`` calls) and sum its kernel times, in ms per
    profiled call, by op type, section and kind."""
    import onnx
    import onnxruntime as ort

    from swdet.calib import ort_conv_counts

    opts = ort.SessionOptions()  # as roofline.session, plus profiling and the optimized graph
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = args.threads, 1, 3
    opts.enable_profiling, opts.profile_file_prefix = True, str(tmp / f"prof_{path.stem}")
    opts.optimized_model_filepath = str(tmp / f"{path.stem}.opt.onnx")
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    for _ in range(args.warmup + args.runs):
        sess.run(None, feeds)
    raw = Path(sess.end_profiling())
    events = json.loads(raw.read_text())
    raw.unlink()
    graph = onnx.load(opts.optimized_model_filepath).graph
    sec, kind = sections(graph), kinds(graph, {n.name for n in onnx.load(str(path)).graph.node})
    calls = sorted((e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"),
                   key=lambda e: e["ts"])[args.warmup:]
    start = calls[0]["ts"]
    nodes = [(e["name"][:-len("_kernel_time")], e["args"].get("op_name", "?"), e["dur"]) for e in events
             if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start]
    scale = 1.0 / (1000.0 * len(calls))  # us summed over the calls -> ms per call

    def by(key) -> dict[str, float]:
        acc = collections.Counter()
        for name, op, dur in nodes:
            acc[key(name, op)] += dur
        return {k: round(v * scale, 3) for k, v in acc.most_common()}

    counts = ort_conv_counts(path)
    return {"run_ms": round(float(np.mean([e["dur"] for e in calls])) / 1000.0, 3),
            "kernel_ms": round(sum(d for *_, d in nodes) * scale, 3), "nodes": len(graph.node),
            "conv_counts": {k: counts[k] for k in ("int8", "float", "total")},
            "by_op": by(lambda n, op: op),
            "by_section": by(lambda n, op: sec.get(n) or name_section(n) or "unassigned"),
            "by_kind": by(lambda n, op: kind.get(n, "other")),
            # the slowest nodes that are not convolutions: where the float detours are
            "top_other_nodes": dict([(k, v) for k, v in by(lambda n, op: "" if kind.get(n, "other").endswith("conv")
                                                          else f"{n} ({op})").items() if k][:TOP_NODES])}


def batch_images(data: Path | None, n: int) -> list[bytes]:
    """The first ``n`` images of ``data/val`` (repeated if fewer), or ``n`` synthetic ones."""
    if data is None:
        from swdet.serve.bench import synthetic_images

        return [b for _, b in synthetic_images(n, seed=1)]
    files = sorted(p for p in (data / "val").iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    return [p.read_bytes() for p in islice(cycle(files), n)]


def run(args) -> dict:
    import onnx

    from swdet.calib import calibrate
    from swdet.calib.quantize import DEFAULT_METHOD, input_size
    from swdet.deploy.onnx_meta import read_onnx_metadata
    from swdet.export.onnx_export import export_onnx
    from swdet.preprocess import prepare_batch
    from swdet.serve.bench import host_info

    data = Path(args.data) if args.data else None
    with tempfile.TemporaryDirectory(prefix="swdet_int8_profile_") as tmp:
        work = Path(tmp)
        if args.run:
            src = Path(args.run)
        elif data is not None:
            src = random_artifact(args.model, args.imgsz, work / "art", data)
        else:
            src = _artifact(args, work)[0]
        fp32 = export_onnx(src, work / "fp32.onnx", imgsz=args.imgsz)
        calib_dir = data / "train" if data is not None else _images(None, work, args.num_images)
        int8 = calibrate(fp32, calib_dir, work / "int8.onnx", num_images=args.num_images,
                         cache=work / "calib.npz", verify=False).out
        exported = onnx.load(str(fp32), load_external_data=False)
        imgsz, model = input_size(exported), read_onnx_metadata(exported)["model"].get("name", "?")
        x = prepare_batch(batch_images(data, args.batch), imgsz).images.astype(np.float32)
        graphs = {}
        for name, path in (("fp32", fp32), ("int8", int8)):
            graphs[name] = profile(path, {"images": x}, args, work)
            print(f"{name}: {graphs[name]['kernel_ms']:.2f} ms kernel time per call", flush=True)
    return {"model": model, "imgsz": imgsz, "trained": bool(args.run), "run": args.run, "data": args.data,
            "batch": args.batch, "threads": args.threads, "runs": args.runs, "warmup": args.warmup,
            "quick": bool(args.quick), "calibration": {"method": DEFAULT_METHOD, "num_images": args.num_images},
            "host": host_info(), "graphs": graphs}


def to_markdown(r: dict) -> str:
    h, g = r["host"], r["graphs"]
    f32, i8 = g["fp32"], g["int8"]
    pct = (lambda v, t: f"{100 * v / t:.1f}" if t else "-")
    ms = (lambda v: f"{v:.2f}")
    lines = [f"# Where the INT8 time goes: {r['model']} @ {r['imgsz']} "
             f"({'trained: ' + r['run'] if r['trained'] else 'random weights'})", "",
             f"ONNX Runtime {h.get('onnxruntime')} CPU: {h.get('cpu')} ({h.get('cpu_count')} cores), "
             f"{r['threads']} intra-op thread{'s' * (r['threads'] != 1)}, batch {r['batch']} "
             f"({'`' + r['data'] + '/val`' if r['data'] else 'synthetic'} images), {r['runs']} profiled calls after "
             f"{r['warmup']} warm-up. INT8: `swdet calib`, {r['calibration']['method']}, "
             f"{r['calibration']['num_images']} images. Times are ORT's per-node kernel "
             "times **under profiling** (`enable_profiling`), in ms per call (one batch): profiling adds overhead, "
             "so they are for the split, not for latency (`benchmarks/int8.py` times that). Sections and kinds: "
             "the rules in `benchmarks/int8_profile.py`.", ""]
    if r["quick"]:
        lines += ["**Quick setting** (`--quick`): a smoke run, not a measurement.", ""]
    lines.append(format_table([[k, ms(v["run_ms"]), ms(v["kernel_ms"]), v["nodes"], v["conv_counts"]["int8"],
                                v["conv_counts"]["float"]] for k, v in g.items()],
                              ["graph", "call ms (profiled)", "kernel ms", "nodes", "int8 convs", "float convs"],
                              markdown=True))
    for key, title, order in (("by_section", "section", ORDER), ("by_kind", "kind", KINDS)):
        names = [s for s in order if s in f32[key] or s in i8[key]]
        names += sorted((set(f32[key]) | set(i8[key])) - set(names))
        rows = [[s, ms(f32[key].get(s, 0.0)), pct(f32[key].get(s, 0.0), f32["kernel_ms"]), ms(i8[key].get(s, 0.0)),
                 pct(i8[key].get(s, 0.0), i8["kernel_ms"])] for s in names]
        rows.append(["total", ms(f32["kernel_ms"]), "100.0", ms(i8["kernel_ms"]), "100.0"])
        lines += ["", format_table(rows, [title, "fp32 ms", "fp32 %", "int8 ms", "int8 %"], markdown=True)]
    top = list(dict.fromkeys(list(f32["by_op"])[:15] + list(i8["by_op"])[:15]))
    top.sort(key=lambda op: -max(f32["by_op"].get(op, 0.0), i8["by_op"].get(op, 0.0)))
    rest = [max(0.0, round(v["kernel_ms"] - sum(v["by_op"].get(op, 0.0) for op in top), 3)) for v in (f32, i8)]
    rows = [[op, ms(f32["by_op"].get(op, 0.0)), ms(i8["by_op"].get(op, 0.0))] for op in top]
    rows.append(["(other ops)", *map(ms, rest)])
    lines += ["", format_table(rows, ["op type (top 15 of each)", "fp32 ms", "int8 ms"], markdown=True)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", help="trained run directory (or artifact) to export; without it a random-weights --model")
    ap.add_argument("--data", help="COCO-format dataset root (train/ calibrates, val/ is profiled); default synthetic")
    ap.add_argument("--model", default="retinanet_r50_fpn", help="preset for the random-weights case")
    ap.add_argument("--imgsz", type=int, help="input size (default: the run's; random models: 320)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    ap.add_argument("--runs", type=int, default=30, help="profiled calls per graph")
    ap.add_argument("--warmup", type=int, default=2, help="calls before the profiled ones (not counted)")
    ap.add_argument("--num-images", type=int, default=32, help="calibration images (ranges do not change speed)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 profiled calls, 1 warm-up, 4 calibration images")
    ap.add_argument("--out", type=Path, help="output stem: writes <stem>.json and <stem>.md (default: see above)")
    args = ap.parse_args(argv)
    if args.run is None and args.imgsz is None:
        args.imgsz = 320
    if args.quick:
        args.runs, args.warmup, args.num_images = min(args.runs, 3), min(args.warmup, 1), min(args.num_images, 4)
    if args.out is None:
        stem = "int8_profile" if args.run else f"int8_profile_{args.model}_{args.imgsz}_random"
        args.out = ROOT / "benchmarks" / "results" / stem
    result = run(args)
    md = to_markdown(result)
    print(md)
    write_results(args.out, result, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
