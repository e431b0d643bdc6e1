"""The embedded default's training step on the CPU: fp32 vs bfloat16 autocast (vs channels-last).

The recipe of ``swdet pipeline`` (``configs/retinanet_tiny.yaml``: batch 8, 320 px, AdamW, focal
loss) on one batch of real synthetic images (``--data``) or random ones; every variant starts
from the same weights and steps on the same batch. Variants run in interleaved rounds (one step
each per round, after a warm-up round) so drift hits all alike; the table shows the median step
time over the rounds with [min, max] and the speedup over fp32 per round (median [min, max]).
bf16 autocast is only faster on a CPU that computes bf16 natively (AVX512_BF16 / AMX); the header
says whether this one does.

    python benchmarks/cpu_step.py --data data/synth          # 2 threads, 10 rounds

Results: ``benchmarks/results/cpu_step.{json,md}``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from _results import write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from swdet.config import load_config  # noqa: E402
from swdet.models import build_model  # noqa: E402
from swdet.table import format_table  # noqa: E402
from swdet.train.methods import build_methods  # noqa: E402
from swdet.train.retina_loss import RetinaNetLoss  # noqa: E402
from swdet.train.schedule import cpu_has_native_bf16  # noqa: E402

VARIANTS = {  # name: (autocast dtype, channels-last)
    "fp32": (None, False),
    "bf16": (torch.bfloat16, False),
    "fp32 channels-last": (None, True),
    "bf16 channels-last": (torch.bfloat16, True),
}


def batch(cfg, data: Path | None):
    if data is None:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from train_speed import synthetic_batch

        return synthetic_batch(cfg.train.batch_size, cfg.model.imgsz, cfg.model.num_classes)
    from swdet.train.engine import build_dataset

    cfg.data.root = str(data)
    ds = build_dataset(cfg, "train", train=False)
    cfg.model.num_classes = len(ds.class_names)  # as the trainer sets it: the head's width follows the data
    samples = [ds[i] for i in range(cfg.train.batch_size)]
    return torch.stack([s[0] for s in samples]), [s[1] for s in samples]


def make_step(cfg, loss, images, assign, amp, channels_last: bool):
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)

    def step() -> float:
        with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
            total, _ = loss(model(images), assign, 0)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        return float(total.detach())

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="a synthetic dataset (swdet data synth); random images without")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "retinanet_tiny.yaml")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_step")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [])
    images, targets = batch(cfg, args.data)  # first: it sets the class count, which sizes the head and loss
    loss = RetinaNetLoss(cfg, build_methods(cfg.loss.method, cfg.methods), torch.device("cpu"))
    assign = loss.assigner.assign(targets)
    steps = {name: make_step(cfg, loss, images, assign, amp, cl) for name, (amp, cl) in VARIANTS.items()}
    times: dict[str, list[float]] = {k: [] for k in steps}
    first_loss: dict[str, float] = {}
    for r in range(args.rounds + 1):  # round 0: warm-up
        for name, step in steps.items():
            t = time.perf_counter()
            value = step()
            dt = time.perf_counter() - t
            if r == 0:
                first_loss[name] = value
            else:
                times[name].append(dt)
    rows = []
    for name, ts in times.items():
        ratio = [f / t for f, t in zip(times["fp32"], ts)]
        rows.append({"variant": name, "step ms": round(statistics.median(ts) * 1e3, 1),
                     "step ms [min, max]": f"[{min(ts) * 1e3:.0f}, {max(ts) * 1e3:.0f}]",
                     "speedup vs fp32": round(statistics.median(ratio), 3),
                     "speedup [min, max]": f"[{min(ratio):.2f}, {max(ratio):.2f}]",
                     "first-step loss": round(first_loss[name], 5)})
    cpu = platform.processor() or platform.machine()
    title = (f"training step of {args.config.name} (batch {cfg.train.batch_size}, {cfg.model.imgsz} px, "
             f"{cfg.model.num_classes} classes) on the CPU, "
             f"{args.threads} threads, {args.rounds} interleaved rounds; torch {torch.__version__}; "
             f"native bf16: {cpu_has_native_bf16()} ({cpu})")
    text = format_table(rows, title=title)
    print(text)
    write_results(args.out, {"title": title, "rows": rows, "times_s": times}, text, fenced=True, indent=1)


if __name__ == "__main__":
    main()
