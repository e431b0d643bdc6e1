"""Every method on the embedded default: accuracy, diagnostics and training step time, one run.

Phase 1 (timing): the trainers of all methods step on the *same* batches, round-robin, so
machine noise hits them equally; the step time of each is a median and its ratio to the baseline
(``focal`` for RetinaNet, ``random`` for Faster R-CNN) is reported. Host-side anchor assignment
runs in the data-loader workers during training, so it is excluded from the step here too.

Phase 2 (accuracy): each method trains for the same iterations on the same data and seed and is
evaluated on the val split (runs are reused when their ``metrics.json`` matches the settings).
Diagnostics: mean score of positives with IoU >= 0.9 vs 0.5-0.6 after regression (IoU-balanced
Fig. 2, PISA Fig. 9), mean score of IoU-HLR ranks 0-4 vs 50+ (PISA Fig. 8), the score-IoU Pearson
correlation over training positives and before NMS on val (noisy anchors Table 7), SWN's mean
weights (SWN Fig. A.2) and the cls/reg loss ratio at the end (Sampling-Free Fig. 3).

    python benchmarks/methods.py --data data/synth --iters 3000
    python benchmarks/methods.py --data data/synth --arch faster_rcnn --iters 2000

On a 2-core CPU two single-threaded trainings run about 1.7x faster in total than one trainer on
two threads, so the accuracy runs can be split: ``OMP_NUM_THREADS=1 ... --accuracy-only
--methods "focal;pisa"`` and another on the rest, then the plain command reuses every finished run
(same ``--iters``) and only adds the step timing and the table.

Results: ``benchmarks/results/methods_<arch>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from swdet.config import load_config  # noqa: E402
from swdet.table import format_table  # noqa: E402

RETINA_METHODS = ["focal", "bce", "ghm", "sampling_free", "pisa", "iou_balanced", "noisy_anchors", "swn", "pisa,swn"]
RCNN_METHODS = ["random", "ohem", "pisa", "swn", "sampling_free", "noisy_anchors"]


def config(arch: str, method: str, data: Path, iters: int, extra: list[str]):
    name = "retinanet_tiny" if arch == "retinanet" else "faster_rcnn_tiny"
    cfg_file = ROOT / "configs" / f"{name}.yaml"
    sets = [f"data.root={data}", f"loss.method={method}", f"train.iters={iters}", *extra]
    return load_config(cfg_file if cfg_file.is_file() else None,
                       sets if cfg_file.is_file() else [f"model={name}", *sets])


def time_steps(arch, methods, data, steps: int, rounds: int, extra) -> dict[str, float]:
    from swdet.data.loader import build_loader, iterate_batches
    from swdet.train.engine import Trainer

    trainers = {}
    for m in methods:
        tr = Trainer(config(arch, m, data, 10**6, [*extra, "data.workers=0"]), ROOT / "runs" / "_timing" / m,
                     progress=False)
        tr.setup()
        tr.module.train()
        trainers[m] = tr
    first = next(iter(trainers.values()))
    loader = build_loader(first.train_set, first.cfg.train.batch_size, train=True, workers=0, seed=1)
    stream = iter(iterate_batches(loader))
    batches = [next(stream)[1] for _ in range(steps)]
    assigned = {m: [(im, tr.loss.assigner.assign(t)) for im, t in batches] for m, tr in trainers.items()}
    times = {m: [] for m in methods}
    for r in range(rounds):
        order = methods if r % 2 == 0 else methods[::-1]
        for m in order:
            tr = trainers[m]
            for i, (im, a) in enumerate(assigned[m]):
                t = time.perf_counter()
                ok, _ = tr.step(im, a, 1000 + i)  # past the warmup: full learning rate
                if tr.device.type == "cuda":
                    torch.cuda.synchronize()
                if r > 0 or i > 1:  # the first steps of the first round warm up
                    times[m].append(time.perf_counter() - t)
    return {m: statistics.median(v) * 1e3 for m, v in times.items()}


def accuracy(arch, method, data, iters, out_root: Path, extra) -> dict:
    from swdet.train.engine import train

    run = out_root / f"{arch}_{method.replace(',', '+')}"
    metrics_file = run / "metrics.json"
    if metrics_file.is_file():
        m = json.loads(metrics_file.read_text())
        if m.get("train", {}).get("iterations") == iters:
            return m
    cfg = config(arch, method, data, iters, extra)
    cfg.name = method
    train(cfg, run, progress=True, evaluate=True)
    return json.loads(metrics_file.read_text())


def row_from(method: str, m: dict, step_ms: float | None, base_ms: float | None, log: Path) -> dict:
    d = m.get("diagnostics", {})
    last = {}
    if log.is_file():
        rows = [json.loads(line) for line in log.read_text().splitlines()]
        tail = rows[-max(1, len(rows) // 10):]
        for k in ("cls", "reg", "swn/w_cls_pos", "swn/w_cls_neg", "swn/w_reg"):
            vals = [r[k] for r in tail if isinstance(r.get(k), (int, float))]
            if vals:
                last[k] = sum(vals) / len(vals)

    def ratio(a, b):
        return round(a / b, 3) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None

    return {
        "method": method, "AP": m.get("AP"), "AP50": m.get("AP50"), "AP75": m.get("AP75"),
        "score@IoU.9+": d.get("diag/score_iou_0.9-1.0"), "score@IoU.5-.6": d.get("diag/score_iou_0.5-0.6"),
        "hiIoU/loIoU": ratio(d.get("diag/score_iou_0.9-1.0"), d.get("diag/score_iou_0.5-0.6")),
        "score@HLR0-4": d.get("diag/score_rank_0-4"), "score@HLR50+": d.get("diag/score_rank_50-99"),
        "corr_train": d.get("diag/score_iou_corr"), "corr_preNMS": d.get("eval/prenms_score_iou_corr"),
        "cls/reg": ratio(last.get("cls"), last.get("reg")),
        "swn_w(pos,neg,reg)": (f"{last['swn/w_cls_pos']:.2f},{last['swn/w_cls_neg']:.2f},{last['swn/w_reg']:.2f}"
                               if "swn/w_reg" in last else None),
        "step_ms": round(step_ms, 1) if step_ms else None,
        "step_ratio": ratio(step_ms, base_ms),
        "train_s": round(m.get("train", {}).get("train_time_s", 0), 1),
    }


def nobias_row(args) -> dict:
    """Sampling-Free without its optimal bias initialization (the paper's ablation: a BCE run that
    should stall or diverge); a run that stops is recorded as such and not retried."""
    from swdet.train.engine import train

    label = "sampling_free (no bias init)"
    run = args.runs / f"{args.arch}_sampling_free_nobias"
    stopped = run / "stopped.json"
    if stopped.is_file():
        return json.loads(stopped.read_text())
    metrics_file = run / "metrics.json"
    if not (metrics_file.is_file()
            and json.loads(metrics_file.read_text()).get("train", {}).get("iterations") == args.iters):
        cfg = config(args.arch, "sampling_free", args.data, args.iters,
                     [*args.sets, "methods.sampling_free.bias_init=false"])
        cfg.name = "sampling_free_nobias"
        try:
            train(cfg, run, progress=True, evaluate=True)
        except Exception as e:  # noqa: BLE001 - divergence is the expected outcome to record
            row = {"method": label, "AP": None, "note": f"stopped: {e}"}
            run.mkdir(parents=True, exist_ok=True)
            stopped.write_text(json.dumps(row))
            return row
    return row_from(label, json.loads(metrics_file.read_text()), None, None, run / "log.jsonl")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--arch", choices=["retinanet", "faster_rcnn"], default="retinanet")
    ap.add_argument("--methods", help="comma-separated subset (';' separates composed methods)")
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--timing-steps", type=int, default=6)
    ap.add_argument("--timing-rounds", type=int, default=4)
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--accuracy-only", action="store_true",
                    help="only train and evaluate the runs (no timing, no table): start several of these "
                         "on disjoint --methods in parallel, then one full invocation reuses the runs")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "methods")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra config override")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    methods = args.methods.split(";") if args.methods else (RETINA_METHODS if args.arch == "retinanet"
                                                             else RCNN_METHODS)
    base = methods[0]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.accuracy_only:
        for method in methods:
            accuracy(args.arch, method, args.data, args.iters, args.runs, args.sets)
        if args.arch == "retinanet" and "sampling_free" in methods:
            nobias_row(args)
        return
    step = time_steps(args.arch, methods, args.data, args.timing_steps, args.timing_rounds, args.sets)
    print(json.dumps({"step_ms": step}))
    rows = []
    extra_rows = args.arch == "retinanet" and "sampling_free" in methods
    for method in methods:
        m = {} if args.skip_accuracy else accuracy(args.arch, method, args.data, args.iters, args.runs, args.sets)
        log = args.runs / f"{args.arch}_{method.replace(',', '+')}" / "log.jsonl"
        rows.append(row_from(method, m, step.get(method), step.get(base), log))
        print(json.dumps(rows[-1]))
    if extra_rows and not args.skip_accuracy:
        rows.append(nobias_row(args))
    title = (f"methods on the embedded default ({args.arch}, {args.iters} iters, {device}, "
             f"step ratio vs {base} measured round-robin in one run"
             + (f"; overrides: {' '.join(args.sets)}" if args.sets else "") + ")")
    table = format_table(rows, title=title)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"methods_{args.arch}"
    stem.with_suffix(".json").write_text(json.dumps({"rows": rows, "iters": args.iters, "device": device,
                                                     "sets": args.sets, "command": " ".join(sys.argv),
                                                     "torch": torch.__version__, "step_ms": step}, indent=2))
    stem.with_suffix(".md").write_text("```\n" + table + "\n```\n")


if __name__ == "__main__":
    main()
