"""GPU speed in one short run (CUDA; speed only, synthetic inputs): the training step of every
method with AMP, and eager vs CUDA-graph serving.

1. **Training step** (``retinanet_r50_fpn`` by default, ``--imgsz`` / ``--batch``): for each method
   of ``--methods`` the real trainer (:class:`swdet.train.engine.Trainer`: its setup and its
   ``step``, AMP as ``train.amp`` resolves it -- bf16 where supported, fused optimizers,
   channels-last) on a synthetic in-memory dataset (random boxes; no images decoded, no COCO
   tools needed): ``--warmup`` untimed steps, then ``--steps`` steps timed with CUDA events;
   median step time, its ratio to focal, and the peak memory allocated during the timed steps.
   The papers' goals: each method within +5 % of focal's step, SWN within +10 %.
2. **Serving**: the detector (random weights) through :class:`swdet.serve.runtimes.torch_runtime.TorchRuntime`
   eager and with ``cuda_graphs=True``, at batch 1 and 8, timed alternately
   (:func:`swdet.serve.bench.interleaved_latency`: network + post-processing).

Writes ``--out``/``gpu.json`` and ``gpu.md`` (default ``benchmarks/results``). Without CUDA it
prints "no CUDA" and exits 0. It runs from a plain copy of the repository (no install needed:
the stage folders are mapped onto the ``swdet`` package here). ``benchmarks/gpu.sh`` runs it
under a time limit; the defaults fit in about 8 minutes on one recent GPU.

    bash benchmarks/gpu.sh                       # everything, defaults
    python benchmarks/gpu.py --methods focal,swn --batch 4 --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOALS = {"default": 1.05, "swn": 1.10}  # step time / focal's


def _use_checkout() -> None:
    """Import ``swdet`` from this copy: its stage folders (train/, export/, calib/, serve/,
    configs/) are subpackages of ``swdet`` once the repository root is on ``swdet.__path__``
    (what ``pip install`` maps with ``package-dir``)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import swdet

    if str(ROOT) not in list(swdet.__path__):
        swdet.__path__.append(str(ROOT))


def method_list(spec: str) -> list[str]:
    """``"focal,swn,pisa+swn"`` -> ``["focal", "swn", "pisa,swn"]`` (``+`` composes methods)."""
    out = [m.strip().replace("+", ",") for m in spec.split(",") if m.strip()]
    return list(dict.fromkeys(out))


# ----------------------------------------------------------------------------------------------
# A dataset without files


class SyntheticSet:
    """What the trainer reads from a dataset, with random boxes and no images: ``len``,
    ``get_target`` (Sampling-Free's statistics), ``class_names``, ``category_ids``,
    ``require_boxes`` (every image has boxes here)."""

    ann_file = None  # no statistics cache

    def __init__(self, n: int, imgsz: int, num_classes: int, seed: int = 0):
        import torch

        self.imgsz, self.n = imgsz, n
        self.class_names = [f"c{i}" for i in range(num_classes)]
        self.category_ids = list(range(1, num_classes + 1))
        g = torch.Generator().manual_seed(seed)
        self.targets = []
        for _ in range(n):
            k = int(torch.randint(2, 12, (1,), generator=g))
            xy = torch.rand(k, 2, generator=g) * imgsz * 0.75
            wh = 12 + torch.rand(k, 2, generator=g) * imgsz * 0.25
            boxes = torch.cat([xy, (xy + wh).clamp(max=imgsz - 1)], 1)
            self.targets.append({"boxes": boxes, "labels": torch.randint(0, num_classes, (k,), generator=g)})

    def __len__(self) -> int:
        return self.n

    def require_boxes(self, purpose: str = "train on") -> None:
        """Every synthetic image has 2-11 boxes: nothing to refuse."""

    def get_target(self, i: int) -> dict:
        return self.targets[i]

    def batch(self, start: int, size: int, seed: int):
        import torch

        g = torch.Generator().manual_seed(seed)
        images = (torch.rand(size, 3, self.imgsz, self.imgsz, generator=g) * 255).to(torch.uint8)
        return images, [self.targets[(start + j) % self.n] for j in range(size)]


# ----------------------------------------------------------------------------------------------
# Training step


def trainer(method: str, args, work: Path, dataset: SyntheticSet):
    """The real trainer of ``method`` on ``dataset`` (its data loading bypassed)."""
    import swdet.train.engine as engine
    from swdet.config import load_config
    from swdet.errors import SwdetError

    last = method.split(",")[-1]
    names = [f"{args.model}_1x_{last}", f"{args.model}_1x", f"{args.model}_{last}", args.model]
    cfg_file = next((ROOT / "configs" / f"{n}.yaml" for n in names if (ROOT / "configs" / f"{n}.yaml").is_file()),
                    None)
    sets = [f"loss.method={method}", "model.pretrained=none", f"model.imgsz={args.imgsz}",
            f"train.batch_size={args.batch}", f"train.device={args.device}", "data.workers=0",
            f"data.root={work}", "train.iters=1000000", *args.set]
    cfg = load_config(cfg_file, sets if cfg_file is not None else [f"model.name={args.model}", *sets])
    cfg.model.num_classes = len(dataset.class_names)

    def build_dataset(_cfg, split, train):
        if split != "train":
            raise SwdetError("synthetic: no validation split")
        return dataset

    saved = engine.build_dataset
    engine.build_dataset = build_dataset
    try:
        tr = engine.Trainer(cfg, work / method.replace(",", "+"), progress=False)
        import contextlib
        import io

        with contextlib.redirect_stderr(io.StringIO()):  # the "no validation split" notice
            tr.setup()
    finally:
        engine.build_dataset = saved
    tr.module.train()
    return tr


def time_training(method: str, args, work: Path, dataset: SyntheticSet) -> dict:
    import torch

    tr = trainer(method, args, work, dataset)
    cuda = tr.device.type == "cuda"
    batches = []
    for i in range(min(4, args.steps + args.warmup)):
        images, targets = dataset.batch(i * args.batch, args.batch, seed=i)
        batches.append((images, tr.loss.assigner.assign(targets)))
    it = 0
    for _ in range(args.warmup):
        im, a = batches[it % len(batches)]
        tr.step(im, a, it)
        it += 1
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        im, a = batches[it % len(batches)]
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            tr.step(im, a, it)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            tr.step(im, a, it)
            times.append(1e3 * (time.perf_counter() - t0))
        it += 1
    row = {"method": method, "amp": str(tr.amp).replace("torch.", "") if tr.amp is not None else "fp32",
           "step_ms": round(statistics.median(times), 2), "step_ms_min": round(min(times), 2),
           "step_ms_max": round(max(times), 2), "images_per_s": round(args.batch * 1e3 / statistics.median(times), 1)}
    if cuda:
        row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    del tr, batches
    import gc

    gc.collect()  # the next method's peak must not include this trainer's memory
    if cuda:
        torch.cuda.empty_cache()
    return row


# ----------------------------------------------------------------------------------------------
# Serving


def time_serving(args, work: Path, num_classes: int) -> list[dict]:
    import torch

    import swdet.artifact as A
    import swdet.config as C
    from swdet.models import build_model
    from swdet.serve.bench import interleaved_latency
    from swdet.serve.runtimes.torch_runtime import TorchRuntime

    cfg = C.model_preset(args.model)
    cfg.pretrained, cfg.imgsz, cfg.num_classes = "none", args.imgsz, num_classes
    torch.manual_seed(0)
    art = work / "artifact"
    A.save_artifact(art, build_model(cfg), A.build_metadata(
        cfg, C.PostprocessConfig(), class_names=[f"c{i}" for i in range(num_classes)],
        category_ids=list(range(1, num_classes + 1)), method=["focal"]))
    rows = []
    eager = TorchRuntime(art, device=args.device)
    graphs = TorchRuntime(art, device=args.device, cuda_graphs=True) if args.device.startswith("cuda") else None
    for b in args.serve_batches:
        if graphs is None:
            rows.append({"batch": b, "eager_ms": None, "cuda_graphs_ms": None, "note": "not run: no CUDA"})
            continue
        lat = interleaved_latency(eager, graphs, batch_size=b, rounds=args.serve_rounds, iters=args.serve_iters,
                                  warmup=3)
        lo, hi = lat["band"]
        rows.append({"batch": b, "eager_ms": round(lat["a_ms"]["median"], 3),
                     "cuda_graphs_ms": round(lat["b_ms"]["median"], 3), "speedup": round(1.0 / lat["ratio"], 3),
                     "band": [round(1.0 / hi, 3), round(1.0 / lo, 3)]})
    return rows


# ----------------------------------------------------------------------------------------------
# Report


def to_markdown(r: dict) -> str:
    from swdet.table import format_table

    lines = [f"# GPU: {r['model']} @ {r['imgsz']} px ({r['gpu']}, torch {r['torch']})", "",
             f"Training step: the trainer's `step` on synthetic batches of {r['batch']} (random boxes), "
             f"{r['warmup']} warm-up + {r['steps']} timed steps (CUDA events), median [min, max]; peak memory "
             "allocated during the timed steps. Goals: within +5 % of focal, SWN within +10 %.", ""]
    rows = []
    for row in r["train"]:
        if "error" in row:
            rows.append([row["method"], "-", "-", "-", "-", "-", "error: " + row["error"]])
            continue
        rows.append([row["method"], row["amp"], f"{row['step_ms']:.1f} [{row['step_ms_min']:.1f}, {row['step_ms_max']:.1f}]",
                     f"{row['images_per_s']:.1f}", "-" if row.get("peak_mem_gib") is None else f"{row['peak_mem_gib']:.2f}",
                     "-" if row.get("vs_focal") is None else f"{row['vs_focal']:.3f}", row.get("goal", "-")])
    lines.append(format_table(rows, ["method", "amp", "step ms", "images/s", "peak GiB", "step / focal", "goal"],
                              markdown=True))
    lines += ["", f"Serving: `TorchRuntime` eager vs CUDA graphs, `infer` (network + post-processing), "
                  f"{r['serve_rounds']} interleaved rounds x {r['serve_iters']} calls; speedup with its 95 % band.", ""]
    srows = [[s["batch"], "-" if s.get("eager_ms") is None else f"{s['eager_ms']:.2f}",
              "-" if s.get("cuda_graphs_ms") is None else f"{s['cuda_graphs_ms']:.2f}",
              f"{s['speedup']:.2f}x [{s['band'][0]:.2f}, {s['band'][1]:.2f}]" if s.get("speedup") else s.get("note", "-")]
             for s in r["serve"]]
    lines.append(format_table(srows, ["batch", "eager ms", "CUDA graphs ms", "speedup"], markdown=True))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="retinanet_r50_fpn")
    ap.add_argument("--imgsz", type=int, default=800)
    ap.add_argument("--batch", type=int, default=8, help="training batch")
    ap.add_argument("--methods", default="focal,iou_balanced,pisa,sampling_free,noisy_anchors,swn,pisa+swn",
                    help="comma-separated; 'a+b' composes (pisa+swn)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--serve-batches", default="1,8")
    ap.add_argument("--serve-rounds", type=int, default=10)
    ap.add_argument("--serve-iters", type=int, default=5)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-serve", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for training")
    ap.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)  # code-path check without a GPU
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    args.serve_batches = [int(b) for b in args.serve_batches.split(",") if b.strip()]

    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        print("no CUDA: benchmarks/gpu.py needs a CUDA GPU; nothing was run")
        return 0
    _use_checkout()
    args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    t0 = time.perf_counter()
    num_classes = 80
    result = {"model": args.model, "imgsz": args.imgsz, "batch": args.batch, "steps": args.steps,
              "warmup": args.warmup, "serve_rounds": args.serve_rounds, "serve_iters": args.serve_iters,
              "torch": torch.__version__, "device": args.device,
              "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu (code-path check)",
              "train": [], "serve": []}
    with tempfile.TemporaryDirectory(prefix="swdet_gpu_") as tmp:
        work = Path(tmp)
        if not args.skip_train:
            dataset = SyntheticSet(64, args.imgsz, num_classes)
            for m in method_list(args.methods):
                try:
                    row = time_training(m, args, work, dataset)
                except Exception as e:  # noqa: BLE001 - report the method, go on with the others
                    row = {"method": m, "error": f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"}
                result["train"].append(row)
                print(f"train {m}: " + (f"{row['step_ms']} ms" if "step_ms" in row else row["error"]), flush=True)
            focal = next((r for r in result["train"] if r["method"] == "focal" and "step_ms" in r), None)
            for row in result["train"]:
                if focal and "step_ms" in row:
                    row["vs_focal"] = round(row["step_ms"] / focal["step_ms"], 3)
                    limit = GOALS["swn"] if "swn" in row["method"] else GOALS["default"]
                    row["goal"] = (f"<= {limit:.2f}: {'met' if row['vs_focal'] <= limit else 'NOT met'}"
                                   if row["method"] != "focal" else "-")
        if not args.skip_serve:
            try:
                result["serve"] = time_serving(args, work, num_classes)
            except Exception as e:  # noqa: BLE001
                result["serve"] = [{"batch": b, "note": f"error: {type(e).__name__}: {str(e)[:150]}"}
                                   for b in args.serve_batches]
            for s in result["serve"]:
                print(f"serve b{s['batch']}: {s}", flush=True)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    md = to_markdown(result)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "gpu.md").write_text(md)
    print(f"-> {args.out / 'gpu.json'}, {args.out / 'gpu.md'} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    sys.exit(main())
