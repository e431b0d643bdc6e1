"""Plots of a run directory, from ``log.jsonl``: loss curves, the learning rate, validation AP
over training (with ``--eval-every N``) and the training diagnostics."""

from __future__ import annotations

import json
import math
from pathlib import Path


def _read_all(run_dir: Path) -> list[dict]:
    path = run_dir / "log.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in rows if isinstance(r, dict) and "iter" in r]


def _read_log(run_dir: Path) -> list[dict]:
    return [r for r in _read_all(run_dir) if "loss" in r]


def _number(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _figure(size=(7, 4.5)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write ``plots/losses.png``, ``plots/lr.png``, ``plots/val_ap.png`` (when the log has
    validation rows: ``--eval-every N``) and ``plots/diagnostics.png``; returns the files
    written."""
    run_dir = Path(run_dir)
    val_rows = [r for r in _read_all(run_dir) if "val/AP" in r]
    rows = _read_log(run_dir)
    if not rows:
        return []
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    written = []
    rows = [{k: (math.nan if v is None else v) for k, v in r.items()} for r in rows]
    it = [r["iter"] for r in rows]
    skip = ("iter", "epoch", "lr", "it_s", "time", "skipped_steps")
    loss_keys = [k for k in rows[-1] if k not in skip and not k.startswith(("diag/", "swn/", "val/"))]
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for k in loss_keys:
        ax.plot(it, [r.get(k, math.nan) for r in rows], label=k)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(f"{run_dir.name}: losses (cls/reg balance: Sampling-Free Fig. 3)")
    fig.tight_layout()
    fig.savefig(out / "losses.png")
    written.append(out / "losses.png")

    fig = _figure((7, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(it, [_number(r.get("lr")) for r in rows])
    ax.set_xlabel("iteration")
    ax.set_ylabel("learning rate")
    ax.set_title(f"{run_dir.name}: learning rate")
    fig.tight_layout()
    fig.savefig(out / "lr.png")
    written.append(out / "lr.png")

    if val_rows:
        fig = _figure((7, 4))
        ax = fig.add_subplot(1, 1, 1)
        vit = [r["iter"] for r in val_rows]
        for k in ("val/AP", "val/AP50", "val/AP75"):
            ax.plot(vit, [_number(r.get(k)) for r in val_rows], marker="o", label=k.split("/", 1)[1])
        ax.set_xlabel("iteration")
        ax.set_ylabel("COCO box AP (val)")
        ax.legend(fontsize=8)
        ax.set_title(f"{run_dir.name}: validation AP over training")
        fig.tight_layout()
        fig.savefig(out / "val_ap.png")
        written.append(out / "val_ap.png")

    last = rows[-1]
    iou_keys = [k for k in last if k.startswith("diag/score_iou_") and k != "diag/score_iou_corr"]
    rank_keys = [k for k in last if k.startswith("diag/score_rank_")]
    swn_keys = [k for k in last if k.startswith("swn/")]
    fig = _figure((12, 4))
    ax = fig.add_subplot(1, 3, 1)
    tail = rows[-max(1, len(rows) // 4):]

    def mean(k):
        vals = [r[k] for r in tail if isinstance(r.get(k), (int, float)) and not math.isnan(r[k])]
        return sum(vals) / len(vals) if vals else math.nan

    ax.bar([k.rsplit("_", 1)[-1] for k in iou_keys], [mean(k) for k in iou_keys])
    ax.set_title("mean score by IoU of positives")
    ax.set_xlabel("IoU after regression")
    ax = fig.add_subplot(1, 3, 2)
    ax.bar([k.rsplit("_", 1)[-1] for k in rank_keys], [mean(k) for k in rank_keys])
    ax.set_title("mean score by IoU-HLR rank")
    ax = fig.add_subplot(1, 3, 3)
    if swn_keys:
        for k in swn_keys:
            ax.plot(it, [r.get(k, math.nan) for r in rows], label=k)
        ax.set_title("SWN weights exp(-2m)")
        ax.legend(fontsize=8)
    else:
        ax.plot(it, [r.get("diag/score_iou_corr", math.nan) for r in rows])
        ax.set_title("score-IoU correlation (positives)")
    ax.set_xlabel("iteration")
    fig.tight_layout()
    fig.savefig(out / "diagnostics.png")
    written.append(out / "diagnostics.png")
    return written
