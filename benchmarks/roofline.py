"""How close the FP32 and INT8 exports run to this machine's limit (ONNX Runtime, CPU).

One run measures, in the same session and interleaved (every round times every item once, the
order rotating per round, so drift of a shared machine hits all alike):

- the **model**: its FLOPs per image, network only (``torch.utils.flop_counter`` on the detector's
  forward: normalization, backbone, FPN, head; no post-processing), and the achieved GFLOP/s of the
  FP32 export's network and of the INT8 one's (``swdet calib``; the network part, cut at the
  ``net/*`` boundary with :func:`swdet.calib.split_network`); with ``--legacy`` also the INT8
  model calibrated without the int8 rewrites (``rewrite=False, head_outputs="float"``, the
  graph before :mod:`swdet.calib.fusion`); with ``--end-to-end`` the full graphs too
  (post-processing included, credited with the network's FLOPs only);
- the **peak**: one large FP32 ``Conv`` (3x3, ``--peak-channels`` in and out, ``--peak-size``
  square, the same batch) and the same convolution as an int8 ``QLinearConv`` (uint8 activations,
  int8 weights: ONNX Runtime's x86 format) and as its im2col GEMM in ``MatMulInteger``;
  the int8 peak is the faster of the two in each round.

Ratios per round, reported as median with [min, max] over the rounds: FP32 model / FP32 conv
peak, INT8 model / int8 peak, INT8 model / FP32 model (the INT8 speedup). The INT8 rewrites
duplicate a few convolutions (see the JSON's ``rewrite``); that work is not credited. The
convolutions ONNX Runtime runs as float vs int8 in each INT8 model are counted from its
optimized graph (:func:`swdet.calib.ort_conv_counts`).

    python benchmarks/roofline.py                                  # retinanet_r50_fpn, 512 px, batch 8, 2 threads
    python benchmarks/roofline.py --model retinanet_tiny --imgsz 320 --out benchmarks/results/roofline_tiny
    python benchmarks/roofline.py --quick                          # smoke run (tiny model, seconds)

Random weights unless ``--run DIR`` (a trained run directory; speed does not depend on the
weights, except the post-processing in ``--end-to-end``). Writes ``--out`` ``.json`` and ``.md``
(default ``benchmarks/results/roofline``); the README quotes the ``.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _results import write_results


# ----------------------------------------------------------------------------------------------
# FLOPs


def model_flops(module, imgsz: int) -> float:
    """FLOPs of one image through the detector's network (torch's flop counter; a multiply-add
    counts 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 3, imgsz, imgsz) * 255
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module.eval()(x)
    return float(counter.get_total_flops())


def conv_flops(batch: int, channels: int, size: int, k: int = 3) -> float:
    return 2.0 * batch * channels * channels * k * k * size * size


# ----------------------------------------------------------------------------------------------
# The peak: one large convolution, three ways


def peak_models(batch: int, channels: int, size: int, seed: int = 0) -> dict:
    """``{name: (onnx.ModelProto, feeds)}``: a 3x3 ``Conv`` (float32), the same as a
    ``QLinearConv`` (uint8 x, int8 w, uint8 y) and its im2col GEMM as ``MatMulInteger``
    (``[B·H·W, 9·C] x [9·C, C]``, uint8 x int8 -> int32)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    c, s, b = channels, size, batch
    w = rng.normal(0, 0.05, (c, c, 3, 3)).astype(np.float32)
    bias = np.zeros(c, np.float32)
    opset = [helper.make_opsetid("", 17)]

    def model(nodes, inputs, outputs, inits):
        g = helper.make_graph(nodes, "peak", inputs, outputs, inits)
        m = helper.make_model(g, opset_imports=opset)
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m

    conv_attrs = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    fp32 = model([helper.make_node("Conv", ["x", "w", "b"], ["y"], **conv_attrs)],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, c, s, s])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [b, c, s, s])],
                 [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b")])
    wq = np.clip(np.round(w / 0.05 * 40), -127, 127).astype(np.int8)
    scal = lambda v, name, dt=np.float32: numpy_helper.from_array(np.array(v, dt), name)  # noqa: E731
    qconv = model([helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"],
                                    **conv_attrs)],
                  [helper.make_tensor_value_info("x", TensorProto.UINT8, [b, c, s, s])],
                  [helper.make_tensor_value_info("y", TensorProto.UINT8, [b, c, s, s])],
                  [scal(0.02, "xs"), scal(128, "xz", np.uint8), numpy_helper.from_array(wq, "w"),
                   scal(0.001, "ws"), scal(0, "wz", np.int8), scal(0.05, "ys"), scal(128, "yz", np.uint8),
                   numpy_helper.from_array(np.zeros(c, np.int32), "b")])
    m, k = b * s * s, 9 * c
    mmi = model([helper.make_node("MatMulInteger", ["a", "w", "az", "wz"], ["y"])],
                [helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k])],
                [helper.make_tensor_value_info("y", TensorProto.INT32, [m, c])],
                [numpy_helper.from_array(wq.reshape(c, k).T.copy(), "w"), scal(128, "az", np.uint8),
                 scal(0, "wz", np.int8)])
    x = rng.uniform(-2, 2, (b, c, s, s)).astype(np.float32)
    xq = rng.integers(0, 256, (b, c, s, s), dtype=np.uint8)
    aq = rng.integers(0, 256, (m, k), dtype=np.uint8)
    return {"fp32 Conv": (fp32, {"x": x}), "int8 QLinearConv": (qconv, {"x": xq}),
            "int8 MatMulInteger": (mmi, {"a": aq})}


# ----------------------------------------------------------------------------------------------
# Timing


def session(model, threads: int):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads (one inter-op thread)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    src = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])


def interleaved(items: dict, rounds: int, iters: int, warmup: int) -> dict:
    """``items``: ``{name: (session, feeds)}``. Every round times ``iters`` calls of every item,
    the order rotating by one per round; returns ``{name: [per-round median seconds]}``."""
    names = list(items)
    for name in names:
        sess, feeds = items[name]
        for _ in range(int(warmup)):
            sess.run(None, feeds)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(int(rounds)):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            sess, feeds = items[name]
            times = []
            for _ in range(int(iters)):
                t0 = time.perf_counter()
                sess.run(None, feeds)
                times.append(time.perf_counter() - t0)
            out[name].append(float(np.median(times)))
    return out


def band(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max())}


# ----------------------------------------------------------------------------------------------
# The run


def _images(folder: Path | None, work: Path, n: int) -> Path:
    """The calibration image folder: ``folder``, or ``n`` synthetic JPEGs written under ``work``."""
    if folder is not None:
        return Path(folder)
    from swdet.serve.bench import synthetic_images

    out = work / "calib_images"
    out.mkdir(parents=True, exist_ok=True)
    for name, data in synthetic_images(n):
        (out / (Path(name).stem + ".jpg")).write_bytes(data)
    return out


def _artifact(args, work: Path):
    """``(artifact path, nn.Module)``: the run given, or a random-weights preset."""
    import torch

    import swdet.artifact as A
    import swdet.config as C
    from swdet.export.strip import load_for_export
    from swdet.models import build_model

    if args.run:
        module, _ = load_for_export(args.run)
        return Path(args.run), module
    cfg = C.model_preset(args.model)
    cfg.pretrained, cfg.imgsz = "none", args.imgsz
    torch.manual_seed(0)
    module = build_model(cfg)
    out = work / "artifact"
    names = [f"c{i}" for i in range(cfg.num_classes)]
    A.save_artifact(out, module, A.build_metadata(cfg, C.PostprocessConfig(), class_names=names,
                                                  category_ids=list(range(1, cfg.num_classes + 1)),
                                                  method=["focal"]))
    return out, module


def run(args) -> dict:
    import onnx

    from swdet.calib import calibrate, ort_conv_counts, split_network
    from swdet.deploy.onnx_meta import read_onnx_metadata
    from swdet.export.onnx_export import export_onnx
    from swdet.preprocess import prepare_batch
    from swdet.serve.bench import host_info, synthetic_images

    with tempfile.TemporaryDirectory(prefix="swdet_roofline_") as tmp:
        work = Path(tmp)
        src, module = _artifact(args, work)
        imgsz = args.imgsz
        flops_img = model_flops(module, imgsz)
        del module
        fp32 = export_onnx(src, work / "fp32.onnx", imgsz=imgsz)
        images = _images(args.images, work, args.num_images)
        flavours = {"int8": dict(rewrite=True, head_outputs="int8")}
        if args.legacy:
            flavours["int8 (no rewrite, float heads)"] = dict(rewrite=False, head_outputs="float")
        int8_paths, counts, rewrite = {}, {}, None
        for i, (name, kw) in enumerate(flavours.items()):
            res = calibrate(fp32, images, work / f"int8_{i}.onnx", num_images=args.num_images, method="minmax",
                            cache=work / f"calib_{i}.npz", verify=False, **kw)
            int8_paths[name] = res.out
            counts[name] = {k: v for k, v in ort_conv_counts(res.out).items() if k != "ops"}
            if kw["rewrite"]:
                rewrite = read_onnx_metadata(onnx.load(str(res.out), load_external_data=False))["calibration"]["rewrite"]

        b = args.batch
        pool = synthetic_images(b, seed=1)
        x = prepare_batch([d for _, d in pool], imgsz).images.astype(np.float32)
        items, gflop = {}, {}
        models = {"fp32": fp32, **int8_paths}
        for name, path in models.items():
            net = split_network(onnx.load(str(path))).network
            items[f"{name} model"] = (session(net, args.threads), {"images": x})
            gflop[f"{name} model"] = flops_img * b / 1e9
            if args.end_to_end:
                items[f"{name} end-to-end"] = (session(path, args.threads), {"images": x})
                gflop[f"{name} end-to-end"] = flops_img * b / 1e9
        for name, (m, feeds) in peak_models(b, args.peak_channels, args.peak_size).items():
            items[f"peak {name}"] = (session(m, args.threads), feeds)
            gflop[f"peak {name}"] = conv_flops(b, args.peak_channels, args.peak_size) / 1e9
        print(f"timing {len(items)} items: {args.rounds} rounds x {args.iters} calls, {args.threads} threads",
              flush=True)
        times = interleaved(items, args.rounds, args.iters, args.warmup)

    rows = []
    rates = {n: [gflop[n] / t for t in ts] for n, ts in times.items()}
    for name, ts in times.items():
        rows.append({"item": name, "gflop_per_call": round(gflop[name], 3),
                     "ms": {k: round(1000 * v, 3) for k, v in band(ts).items()},
                     "gflops": {k: round(v, 2) for k, v in band(rates[name]).items()}})
    int8_peak = [max(a, c) for a, c in zip(rates["peak int8 QLinearConv"], rates["peak int8 MatMulInteger"])]
    ratios = {"fp32 model / fp32 Conv peak": band(np.divide(rates["fp32 model"], rates["peak fp32 Conv"])),
              "int8 Conv peak / fp32 Conv peak": band(np.divide(int8_peak, rates["peak fp32 Conv"]))}
    for name in int8_paths:
        ratios[f"{name} model / int8 peak"] = band(np.divide(rates[f"{name} model"], int8_peak))
        ratios[f"{name} model / fp32 model (speedup)"] = band(np.divide(rates[f"{name} model"], rates["fp32 model"]))
        if args.end_to_end:
            ratios[f"{name} end-to-end / fp32 end-to-end (speedup)"] = band(
                np.divide(rates[f"{name} end-to-end"], rates["fp32 end-to-end"]))
    ratios = {k: {kk: round(vv, 3) for kk, vv in v.items()} for k, v in ratios.items()}
    return {"model": args.model if not args.run else str(args.run), "imgsz": imgsz, "batch": b,
            "threads": args.threads, "rounds": args.rounds, "iters": args.iters, "quick": bool(args.quick),
            "trained": bool(args.run), "model_gflop_per_image": round(flops_img / 1e9, 3),
            "peak_conv": {"channels": args.peak_channels, "size": args.peak_size, "kernel": 3},
            "host": host_info(), "rows": rows, "ratios": ratios, "conv_counts": counts, "rewrite": rewrite}


def to_markdown(r: dict) -> str:
    from swdet.table import format_table

    h = r["host"]
    pc = r["peak_conv"]
    lines = [f"# How close to the limit: {r['model']} @ {r['imgsz']} px, batch {r['batch']}", "",
             f"ONNX Runtime {h.get('onnxruntime')} CPU, {r['threads']} threads: {h.get('cpu')} "
             f"({h.get('cpu_count')} cores). Model: {r['model_gflop_per_image']} GFLOP per image (torch's flop "
             f"counter, network only; a multiply-add is 2 FLOPs). Peak: one {pc['kernel']}x{pc['kernel']} "
             f"convolution, {pc['channels']} channels in and out, {pc['size']}x{pc['size']}, the same batch. "
             f"{r['rounds']} interleaved rounds x {r['iters']} calls; median [min, max] over the rounds.", ""]
    if r["quick"]:
        lines += ["**Quick setting** (`--quick`): a smoke run, not a measurement.", ""]
    rows = [[row["item"], f"{row['gflop_per_call']:.2f}", f"{row['ms']['median']:.2f}",
             f"{row['gflops']['median']:.1f} [{row['gflops']['min']:.1f}, {row['gflops']['max']:.1f}]"]
            for row in r["rows"]]
    lines.append(format_table(rows, ["item", "GFLOP per call", "ms (median)", "GFLOP/s (GOP/s for int8)"],
                              markdown=True))
    lines += ["", format_table([[k, f"{v['median']:.2f}", f"[{v['min']:.2f}, {v['max']:.2f}]"]
                                for k, v in r["ratios"].items()], ["ratio", "median", "band [min, max]"],
                               markdown=True)]
    lines += ["", "Convolutions ONNX Runtime runs as int8 vs float (its optimized graph):", "",
              format_table([[k, v["int8"], v["float"], v["total"]] for k, v in r["conv_counts"].items()],
                           ["INT8 model", "int8 convs", "float convs", "total"], markdown=True)]
    rw = r.get("rewrite")
    if rw:
        lines += ["", f"The rewrite merged {len(rw['merged'])} pairs of sibling convolutions and duplicated "
                      f"{sum(rw['duplicated'].values())} ({2 * rw['extra_macs_per_image'] / 1e9:.3g} GFLOP per "
                      "image of extra work, not credited above)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="retinanet_r50_fpn", help="preset (random weights) unless --run")
    ap.add_argument("--run", help="a trained run directory (or artifact) instead of a random-weights preset")
    ap.add_argument("--imgsz", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    ap.add_argument("--images", type=Path, help="calibration images (default: synthetic)")
    ap.add_argument("--num-images", type=int, default=16, help="calibration images (ranges do not change speed)")
    ap.add_argument("--peak-channels", type=int, default=256)
    ap.add_argument("--peak-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--legacy", action=argparse.BooleanOptionalAction, default=True,
                    help="also time the INT8 model without the int8 rewrites (the graph before them)")
    ap.add_argument("--end-to-end", action="store_true", help="also time the full graphs (post-processing included)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: retinanet_tiny at 128 px, batch 2, 1 thread, a small peak conv, 2 rounds x 1")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "roofline",
                    help="output stem: writes <stem>.json and <stem>.md")
    args = ap.parse_args(argv)
    if args.quick:
        args.model, args.imgsz, args.batch, args.threads = "retinanet_tiny", 128, 2, 1
        args.peak_channels, args.peak_size, args.rounds, args.iters, args.warmup = 64, 32, 2, 1, 1
        args.num_images = min(args.num_images, 2)
    result = run(args)
    md = to_markdown(result)
    print(md)
    write_results(args.out, result, md)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    sys.exit(main())
