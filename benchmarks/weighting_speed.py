"""Speed of the weighting core on CPU.

IoU-HLR is the one weighting rule whose public implementation (mmdetection's PISA) loops in
Python: over the classes of a batch, then over the GTs of each class, sorting inside each. This
script times :func:`swdet.train.weighting.iou_hlr_rank` (stable sorts and scatters, no loop)
against a loop reference with that structure, in one run on the same inputs, checks that both
give identical ranks, and times every other weighting function at the same size.

    python benchmarks/weighting_speed.py                  # 20,000 positives, 2,000 GTs, 80 classes
    python benchmarks/weighting_speed.py --positives 5000 --repeats 10

Prints a table and writes ``benchmarks/results/weighting_speed.json`` and ``.md``. Goal: the
vectorized IoU-HLR at least 10x faster than the loop.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from swdet.train import losses as L
from swdet.train import weighting as W

from _results import write_results

GOAL_SPEEDUP = 10.0


def loop_reference_hlr(ious: torch.Tensor, gt_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """IoU-HLR with the structure of the public PISA code: loop over classes, then over the GTs
    of each class, sorting within each GT (local rank), then sorting each class by
    (local rank, IoU desc). Ties go to the lower sample index (stable sorts)."""
    rank = torch.empty(ious.numel(), dtype=torch.int64)
    for c in labels.unique():
        idx_c = (labels == c).nonzero().squeeze(1)
        ious_c = ious[idx_c]
        gts_c = gt_ids[idx_c]
        local = torch.empty(idx_c.numel(), dtype=torch.int64)
        for g in gts_c.unique():
            sel = (gts_c == g).nonzero().squeeze(1)
            order = torch.sort(ious_c[sel], descending=True, stable=True).indices
            local[sel[order]] = torch.arange(sel.numel())
        by_iou = torch.sort(ious_c, descending=True, stable=True).indices
        order = by_iou[torch.sort(local[by_iou], stable=True).indices]
        rank[idx_c[order]] = torch.arange(idx_c.numel())
    return rank


def time_ms(fn, repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples), samples


def make_inputs(num_pos: int, num_gts: int, num_classes: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    gt_class = torch.randint(0, num_classes, (num_gts,), generator=g)
    gt_ids = torch.randint(0, num_gts, (num_pos,), generator=g)
    labels = gt_class[gt_ids]
    # IoU after regression in [0.4, 1), quantized to 1e-3 so that ties occur as in real batches
    ious = (0.4 + 0.6 * torch.rand(num_pos, generator=g)).mul(1000).floor().div(1000)
    return dict(
        ious=ious,
        gt_ids=gt_ids,
        labels=labels,
        scores=torch.rand(num_pos, generator=g),
        reg_losses=torch.rand(num_pos, 4, generator=g),
        cls_losses=torch.rand(num_pos, num_classes, generator=g),
        logits=torch.randn(num_pos, num_classes, generator=g),
        targets=(torch.rand(num_pos, num_classes, generator=g) > 0.99).float(),
        m_cls=torch.randn(num_pos, generator=g) * 0.1,
        m_reg=torch.randn(num_pos, generator=g) * 0.1,
        pos_mask=torch.rand(num_pos, generator=g) > 0.5,
        sample_cls_loss=torch.rand(num_pos, generator=g),
        sample_reg_loss=torch.rand(num_pos, generator=g),
        anchor_gt_ious=torch.rand(num_pos, num_gts, generator=g).mul(100).floor().div(100),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--positives", type=int, default=20_000)
    ap.add_argument("--gts", type=int, default=2_000)
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=30, help="repeats of each vectorized function")
    ap.add_argument("--loop-repeats", type=int, default=5, help="repeats of the loop reference")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "weighting_speed")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    x = make_inputs(args.positives, args.gts, args.classes)
    P, G, C = args.positives, args.gts, args.classes

    # -- IoU-HLR: vectorized vs loop, same inputs, same run --------------------------------------
    vec_rank = W.iou_hlr_rank(x["ious"], x["gt_ids"], x["labels"])
    ref_rank = loop_reference_hlr(x["ious"], x["gt_ids"], x["labels"])
    identical = bool(torch.equal(vec_rank, ref_rank))
    vec_ms, _ = time_ms(lambda: W.iou_hlr_rank(x["ious"], x["gt_ids"], x["labels"]), args.repeats)
    loop_ms, _ = time_ms(lambda: loop_reference_hlr(x["ious"], x["gt_ids"], x["labels"]), args.loop_repeats, warmup=0)
    speedup = loop_ms / vec_ms

    # -- every other weighting function at the same size ----------------------------------------
    def carl_fwd_bwd():
        s = x["scores"].clone().requires_grad_()
        r = x["reg_losses"].clone().requires_grad_()
        W.carl_loss(s, r).backward()

    def swn_fwd_bwd():
        mc = x["m_cls"].clone().requires_grad_()
        mr = x["m_reg"].clone().requires_grad_()
        c, r = W.swn_terms(mc, mr, x["sample_cls_loss"], x["sample_reg_loss"], x["pos_mask"])
        (c.sum() + r.sum()).backward()

    isr = W.isr_weights(x["ious"], x["gt_ids"], x["labels"])
    cases = [
        ("isr_weights", f"[{P}]", lambda: W.isr_weights(x["ious"], x["gt_ids"], x["labels"])),
        ("rescale_to", f"[{P}] w, [{P}] L", lambda: W.rescale_to(isr, x["sample_cls_loss"])),
        ("rescale_to", f"[{P}] w, [{P},{C}] L", lambda: W.rescale_to(isr, x["cls_losses"])),
        ("carl_weights", f"[{P}]", lambda: W.carl_weights(x["scores"])),
        ("carl_loss", f"[{P}], [{P},4]", lambda: W.carl_loss(x["scores"], x["reg_losses"])),
        ("carl_loss fwd+bwd", f"[{P}], [{P},4]", carl_fwd_bwd),
        ("iou_balanced_cls_weights", f"[{P}], [{P},{C}] L", lambda: W.iou_balanced_cls_weights(x["ious"], x["cls_losses"])),
        ("iou_balanced_loc_weights", f"[{P}]", lambda: W.iou_balanced_loc_weights(x["ious"])),
        ("guided_loss_scale", "scalar", lambda: W.guided_loss_scale(x["sample_cls_loss"].sum(), x["sample_reg_loss"].sum())),
        ("optimal_prior", "numbers", lambda: W.optimal_prior(P, P * 1000, C)),
        ("optimal_bias", "numbers", lambda: W.optimal_bias(P, P * 1000, C)),
        ("adaptive_threshold", "numbers", lambda: W.adaptive_threshold(P, P * 1000)),
        ("cleanliness", f"[{P}]", lambda: W.cleanliness(x["ious"], x["scores"])),
        ("cleanliness_weights", f"[{P}]", lambda: W.cleanliness_weights(x["ious"], x["scores"])),
        ("topn_positives", f"[{P},{G}] (A x G)", lambda: W.topn_positives(x["anchor_gt_ious"], n=40)),
        ("swn_terms", f"[{P}]", lambda: W.swn_terms(x["m_cls"], x["m_reg"], x["sample_cls_loss"], x["sample_reg_loss"], x["pos_mask"])),
        ("swn_terms fwd+bwd", f"[{P}]", swn_fwd_bwd),
        ("sigmoid_focal_loss (losses)", f"[{P},{C}]", lambda: L.sigmoid_focal_loss(x["logits"], x["targets"])),
        ("ghm_c_loss (losses)", f"[{P},{C}]", lambda: L.ghm_c_loss(x["logits"], x["targets"])),
    ]
    rows = []
    for name, shape, fn in cases:
        reps = max(3, args.repeats // 5) if name.startswith("topn") else args.repeats
        ms, _ = time_ms(fn, reps)
        rows.append({"function": name, "inputs": shape, "median_ms": round(ms, 4), "repeats": reps})

    result = {
        "benchmark": "weighting_speed",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "device": "cpu",
        "sizes": {"positives": P, "gts": G, "classes": C},
        "iou_hlr_rank": {
            "vectorized_median_ms": round(vec_ms, 4),
            "loop_reference_median_ms": round(loop_ms, 4),
            "speedup": round(speedup, 2),
            "identical_ranks": identical,
            "repeats": {"vectorized": args.repeats, "loop_reference": args.loop_repeats},
            "loop_reference": "per class, per GT, sorting within each (structure of the public PISA code)",
        },
        "goal_speedup": GOAL_SPEEDUP,
        "goal_met": identical and speedup >= GOAL_SPEEDUP,
        "functions": rows,
    }

    lines = [
        "# Weighting core speed (CPU)",
        "",
        f"torch {result['torch']}, Python {result['python']}, {result['cpu_threads']} CPU threads, "
        f"{P:,} positives, {G:,} GTs, {C} classes. Median over repeats.",
        "",
        "## IoU-HLR: vectorized vs per-class/per-GT loop (same inputs, one run)",
        "",
        "| implementation | median ms | repeats |",
        "| --- | ---: | ---: |",
        f"| `iou_hlr_rank` (stable sorts + scatter) | {vec_ms:.3f} | {args.repeats} |",
        f"| loop reference (classes -> GTs -> sort) | {loop_ms:.3f} | {args.loop_repeats} |",
        "",
        f"Speedup **{speedup:.1f}x** (goal >= {GOAL_SPEEDUP:.0f}x: {'met' if result['goal_met'] else 'NOT met'}); "
        f"identical ranks: **{identical}**.",
        "",
        "## Every weighting function at the same size",
        "",
        "| function | inputs | median ms | repeats |",
        "| --- | --- | ---: | ---: |",
        f"| iou_hlr_rank | [{P}] | {vec_ms:.3f} | {args.repeats} |",
    ]
    lines += [f"| {r['function']} | {r['inputs']} | {r['median_ms']:.3f} | {r['repeats']} |" for r in rows]
    md = "\n".join(lines) + "\n"

    print(md)
    write_results(args.out, result, md)
    return 0 if result["goal_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
