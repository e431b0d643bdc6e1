"""Faster R-CNN's CPU training step with the gather RoIAlign vs torchvision's ``roi_align``.

Two trainers of the same config and weights step on the *same* real batches, round-robin (machine
noise hits them alike): one pools RoIs with :func:`swdet.models.faster_rcnn.roi_align_gather` (the
default for CPU training), the other with torchvision's op (``gather=False``), whose CPU backward is
single-threaded. It reports each median step time, the ratio per round (median [min, max]), and the
largest difference of the loss values of the two paths on the first batch (same weights, so it must
be at float32 rounding).

    python benchmarks/roi_align_speed.py --data data/synth

Results: ``benchmarks/results/roi_align_speed.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from methods import config  # noqa: E402

from swdet.table import format_table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--method", default="random")
    ap.add_argument("--amp", default="bf16", help="train.amp of both trainers (the pipeline's CPU default)")
    ap.add_argument("--steps", type=int, default=5, help="steps per trainer and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()

    import swdet.models.faster_rcnn as frcnn
    from swdet.data.loader import iterate_batches
    from swdet.train.engine import Trainer

    original = frcnn.multilevel_roi_align
    cfg = config("faster_rcnn", args.method, args.data, 10**6, ["data.workers=0", f"train.amp={args.amp}"])
    trainers = {}
    for name in ("gather", "torchvision"):
        tr = Trainer(copy.deepcopy(cfg), Path("/tmp") / f"roi_align_speed_{name}", progress=False)
        tr.setup()
        tr.module.train()
        trainers[name] = tr
    trainers["torchvision"].module.load_state_dict(trainers["gather"].module.state_dict())
    modes = {"gather": original, "torchvision": partial(original, gather=False)}
    batches = iter(iterate_batches(trainers["gather"].loader, start_iter=0,
                                   iters_per_epoch=trainers["gather"].iters_per_epoch))
    n = args.steps * (args.rounds + 1)
    data = [next(batches)[1] for _ in range(n)]

    # the same weights and batch through both paths: the losses must agree
    images, _, assign = data[0]
    losses = {}
    for name, tr in trainers.items():
        frcnn.multilevel_roi_align = modes[name]
        torch.manual_seed(0)  # the same RoI sampling draws
        _, parts = tr.model(images, assign, tr.loss, 0)  # float32, gradients on: the training path
        losses[name] = {k: float(v) for k, v in parts.items()}
    loss_diff = max(abs(losses["gather"][k] - losses["torchvision"][k]) for k in losses["gather"])

    times = {name: [] for name in trainers}
    ratios = []
    for rnd in range(args.rounds + 1):  # round 0 warms up
        chunk = data[rnd * args.steps:(rnd + 1) * args.steps]
        per = {}
        for name, tr in trainers.items():
            frcnn.multilevel_roi_align = modes[name]
            t0 = time.perf_counter()
            for i, (images, _, assign) in enumerate(chunk):
                tr.step(images, assign, 100 + i)
            per[name] = (time.perf_counter() - t0) / len(chunk) * 1000
        if rnd:
            for name in trainers:
                times[name].append(per[name])
            ratios.append(per["torchvision"] / per["gather"])
    frcnn.multilevel_roi_align = original

    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"arch": "faster_rcnn_tiny", "method": args.method, "amp": args.amp, "threads": torch.get_num_threads(),
              "steps_per_round": args.steps, "rounds": args.rounds, "step_ms": med, "step_ms_rounds": times,
              "speedup": statistics.median(ratios), "speedup_min": min(ratios), "speedup_max": max(ratios),
              "loss_max_abs_diff": loss_diff, "losses": losses, "torch": torch.__version__}
    rows = [["torchvision roi_align", f"{med['torchvision']:.1f}", "1.00x"],
            ["gather (default)", f"{med['gather']:.1f}",
             f"{result['speedup']:.2f}x [{min(ratios):.2f}, {max(ratios):.2f}]"]]
    table = format_table(rows, ["RoIAlign in training", "step ms (median)", "speedup (per-round median [min, max])"])
    head = (f"faster_rcnn_tiny ({args.method}, amp {args.amp}), CPU training step on real batches of "
            f"{args.data}, {torch.get_num_threads()} threads, {args.rounds} rounds x {args.steps} steps; "
            f"largest loss difference between the paths on one batch: {loss_diff:.2e}")
    print(head)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "roi_align_speed.json").write_text(json.dumps(result, indent=2))
    (args.out / "roi_align_speed.md").write_text(
        f"{head}\n\n```\n{table}\n```\n\n`python benchmarks/roi_align_speed.py --data {args.data}`\n")


if __name__ == "__main__":
    main()
