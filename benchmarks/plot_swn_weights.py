"""SWN's learned weights over training (SWN Fig. A.2), from the runs' ``log.jsonl``: the mean
``exp(-s·m)`` of the classification weight (positives, negatives) and of the positives'
regression weight, one panel per run, with the clip ``e^2`` marked.

    python benchmarks/plot_swn_weights.py runs/methods/retinanet-tune/swn/seed0 \\
        runs/methods/faster_rcnn-tune/swn/seed0 --out benchmarks/results/swn_weights.png

A run is labelled by its directory below ``runs/methods/`` (or ``--labels``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

KEYS = (("swn/w_cls_pos", "cls weight, positives"), ("swn/w_cls_neg", "cls weight, negatives"),
        ("swn/w_reg", "reg weight (positives' mean)"))


def series(log: Path) -> dict[str, tuple[list[int], list[float]]]:
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    out = {}
    for key, _ in KEYS:
        pts = [(r["iter"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        out[key] = ([p[0] for p in pts], [p[1] for p in pts])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--labels", nargs="*")
    ap.add_argument("--clip", type=float, default=2.0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = args.labels or [str(r).split("runs/methods/")[-1] for r in args.runs]
    fig, axes = plt.subplots(1, len(args.runs), figsize=(4.2 * len(args.runs), 3.4), squeeze=False)
    for ax, run, label in zip(axes[0], args.runs, labels):
        data = series(run / "log.jsonl")
        for key, name in KEYS:
            x, y = data[key]
            if x:
                ax.plot(x, y, label=name)
        ax.axhline(math.exp(args.clip), color="grey", ls="--", lw=0.8, label=f"clip e^{args.clip:g}")
        ax.axhline(1.0, color="grey", ls=":", lw=0.8)
        ax.set_yscale("log")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("iteration")
    axes[0][0].set_ylabel("mean weight exp(-s·m)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
