"""SWN's training-step overhead on the CPU, and where its time goes.

Three trainers step on the *same* batches, round-robin (machine noise hits them alike):
``focal``, ``swn`` (the CPU path: the negatives' mean weight from the network's linear pieces)
and ``swn`` with ``pieces_on_cpu = False`` (the network on every anchor, the reference). It
reports each median step time, the ratios to focal, the largest difference of the loss values
between the two SWN paths on the same batches and weights (their numbers must agree), and a
profiler table of one SWN step per path (``--profile``).

    python benchmarks/swn_speed.py --data data/synth
    python benchmarks/swn_speed.py --data data/synth --arch faster_rcnn

Results: ``benchmarks/results/swn_speed_<arch>.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

from _results import write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from methods import MODELS, config  # noqa: E402

from swdet.table import format_table  # noqa: E402


def trainer(arch: str, method: str, data: Path, out: Path):
    from swdet.train.engine import Trainer

    tr = Trainer(config(arch, method, data, 10**6, ["data.workers=0"]), out, progress=False)
    tr.setup()
    tr.module.train()
    return tr


def swn_of(tr):
    return next(m for m in tr.methods.methods if m.name == "swn")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--arch", choices=sorted(MODELS), default="retinanet")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="print a profiler table of one step per SWN path")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    from swdet.data.loader import build_loader, iterate_batches

    base = "focal" if args.arch == "retinanet" else "random"
    work = ROOT / "runs" / "_swn_speed"
    trainers = {base: trainer(args.arch, base, args.data, work / base),
                "swn": trainer(args.arch, "swn", args.data, work / "swn"),
                "swn (network on every anchor)": trainer(args.arch, "swn", args.data, work / "swn_dense")}
    ref = trainers["swn (network on every anchor)"]
    swn_of(ref).pieces_on_cpu = False
    loader = build_loader(trainers[base].train_set, trainers[base].cfg.train.batch_size, train=True, workers=0,
                          seed=1)
    stream = iter(iterate_batches(loader))
    batches = [next(stream)[1] for _ in range(args.steps)]
    assigned = {m: [(im, tr.loss.assigner.assign(t)) for im, t in batches] for m, tr in trainers.items()}

    # 2. step times, round-robin
    names = list(trainers)
    times: dict[str, list[float]] = {m: [] for m in names}
    for r in range(args.rounds):
        for m in (names if r % 2 == 0 else names[::-1]):
            tr = trainers[m]
            for i, (im, a) in enumerate(assigned[m]):
                t = time.perf_counter()
                tr.step(im, a, 1000 + i)
                if r > 0 or i > 1:
                    times[m].append(time.perf_counter() - t)
    med = {m: statistics.median(v) * 1e3 for m, v in times.items()}
    # the two SWN paths give the same losses on the same batches from the same (trained) weights
    ref.module.load_state_dict(copy.deepcopy(trainers["swn"].module.state_dict()))
    diffs = []
    with torch.no_grad():
        for (im, a), (im2, a2) in zip(assigned["swn"], assigned["swn (network on every anchor)"]):
            fast = trainers["swn"].model(im, a, trainers["swn"].loss, 1000)[0]
            dense = ref.model(im2, a2, ref.loss, 1000)[0]
            diffs.append(abs(float(fast) - float(dense)))
    rows = [{"trainer": m, "step ms": round(med[m], 1), f"step / {base}": round(med[m] / med[base], 3)} for m in names]
    title = (f"{MODELS[args.arch]} training step on the CPU ({torch.get_num_threads()} threads), median of "
             f"{args.rounds} rounds x {args.steps} batches; max |loss(swn) - loss(network on every anchor)| "
             f"on the same batches, with the weights after those steps: {max(diffs):.2e}")
    table = format_table(rows, title=title)
    print(table)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for m in ("swn", "swn (network on every anchor)"):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                im, a = assigned[m][0]
                trainers[m].step(im, a, 1000)
            print(f"\n{m}: one step\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    write_results(args.out / f"swn_speed_{args.arch}",
                  {"rows": rows, "max_loss_diff": max(diffs), "loss_diffs": diffs, "threads": torch.get_num_threads(),
                   "torch": torch.__version__, "command": "python " + " ".join(sys.argv)},
                  format_table(rows, title=title, markdown=True) + "\n\n`python " + " ".join(sys.argv) + "`\n")


if __name__ == "__main__":
    main()
