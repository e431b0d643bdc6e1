"""Training step time: swdet's RetinaNet + focal loss vs torchvision's ``RetinaNet``, one run.

Both detectors get the *same* backbone and FPN modules (swdet's, so the trunk is identical) and the
same images, boxes, image size and batch; what differs is everything the comparison is about: the
head, anchor matching, loss and their implementation. torchvision's own transform (normalize +
resize) runs inside its step, as it does in its reference scripts. swdet assigns anchors on the
host in the data-loader workers, so its step receives the assignment; that assignment time is
reported separately, and the data loader's images/s (decode + augment + assign, real synthetic
images) is compared with the step's images/s.

    python benchmarks/train_speed.py                 # CPU: retinanet_tiny (4-conv head) and r50 @ 512
    python benchmarks/train_speed.py --device cuda   # GPU, adds AMP rows

Results: ``benchmarks/results/train_speed_<device>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from _results import write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from swdet.config import load_config  # noqa: E402
from swdet.models import build_model  # noqa: E402
from swdet.train.methods import build_methods  # noqa: E402
from swdet.train.retina_loss import RetinaNetLoss  # noqa: E402


def synthetic_batch(batch: int, imgsz: int, num_classes: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(batch, 3, imgsz, imgsz, generator=g) * 255).to(torch.uint8)
    targets = []
    for _ in range(batch):
        n = int(torch.randint(2, 9, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * imgsz * 0.7
        wh = 16 + torch.rand(n, 2, generator=g) * imgsz * 0.3
        boxes = torch.cat([xy, (xy + wh).clamp(max=imgsz)], 1)
        targets.append({"boxes": boxes, "labels": torch.randint(0, num_classes, (n,), generator=g)})
    return images, targets


class TrunkForTorchvision(nn.Module):
    """swdet's backbone + FPN presented as a torchvision detection backbone."""

    def __init__(self, model):
        super().__init__()
        self.backbone, self.fpn = model.backbone, model.fpn
        self.out_channels = model.fpn.output[0].out_channels

    def forward(self, x):
        feats = self.fpn(self.backbone(x))
        return OrderedDict((str(i), f) for i, f in enumerate(feats))


def torchvision_retinanet(cfg, trunk):
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    levels = range(cfg.model.min_level, cfg.model.max_level + 1)
    sizes = tuple(tuple(cfg.model.anchor_size * 2**lv * s for s in cfg.model.anchor_scales) for lv in levels)
    ratios = (tuple(cfg.model.anchor_ratios),) * len(sizes)
    model = RetinaNet(trunk, num_classes=cfg.model.num_classes, min_size=cfg.model.imgsz,
                      max_size=cfg.model.imgsz, anchor_generator=AnchorGenerator(sizes, ratios))
    return model


def time_steps(step, iters: int, warmup: int, device) -> list[float]:
    out = []
    for i in range(warmup + iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            out.append(time.perf_counter() - t)
    return out


def bench_model(name: str, cfg, device, iters: int, warmup: int, amp: torch.dtype | None) -> dict:
    torch.manual_seed(0)
    ours = build_model(cfg.model).to(device).train()
    methods = build_methods(["focal"], cfg.methods)
    loss = RetinaNetLoss(cfg, methods, device)
    images, targets = synthetic_batch(cfg.train.batch_size, cfg.model.imgsz, cfg.model.num_classes)
    t = time.perf_counter()
    assign = loss.assigner.assign(targets)
    assign_ms = (time.perf_counter() - t) * 1e3
    assign = assign.to(device)
    x = images.to(device)
    opt = torch.optim.SGD([p for p in ours.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    ctx = (lambda: torch.autocast(device.type, dtype=amp)) if amp else torch.enable_grad

    def ours_step():
        with ctx():
            total, _ = loss(ours(x), assign, 0)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()

    torch.manual_seed(0)
    ref_trunk = TrunkForTorchvision(build_model(cfg.model))
    tv = torchvision_retinanet(cfg, ref_trunk).to(device).train()
    tv_images = [im.float().to(device) / 255.0 for im in images]
    tv_targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
    opt_tv = torch.optim.SGD([p for p in tv.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

    def tv_step():
        with ctx():
            losses = tv(tv_images, tv_targets)
            total = sum(losses.values())
        opt_tv.zero_grad(set_to_none=True)
        total.backward()
        opt_tv.step()

    # interleave in blocks so drift hits both equally
    a, b = [], []
    for _ in range(3):
        a += time_steps(ours_step, iters // 3, warmup, device)
        b += time_steps(tv_step, iters // 3, warmup, device)
    row = {
        "model": name, "imgsz": cfg.model.imgsz, "batch": cfg.train.batch_size, "device": device.type,
        "amp": str(amp).replace("torch.", "") if amp else "fp32",
        "swdet_step_ms": round(statistics.median(a) * 1e3, 2),
        "torchvision_step_ms": round(statistics.median(b) * 1e3, 2),
        "host_assign_ms": round(assign_ms, 2),
    }
    row["speedup_vs_torchvision"] = round(row["torchvision_step_ms"] / row["swdet_step_ms"], 3)
    row["step_images_per_s"] = round(cfg.train.batch_size / statistics.median(a), 2)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        ours_step()
        torch.cuda.synchronize()
        row["swdet_peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return row


def loader_rate(data: Path, cfg, workers: int, batches: int) -> float:
    from swdet.data.coco import CocoDetection
    from swdet.data.loader import build_loader, iterate_batches

    methods = build_methods(["focal"], cfg.methods)
    loss = RetinaNetLoss(cfg, methods, torch.device("cpu"))
    ds = CocoDetection(data / "annotations" / "instances_train.json", data / "train", imgsz=cfg.model.imgsz,
                       train=True, warn=False)
    loader = build_loader(ds, cfg.train.batch_size, train=True, workers=workers, batch_transform=loss.assigner)
    stream = iter(iterate_batches(loader))
    next(stream)  # start the workers
    t = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return cfg.train.batch_size * batches / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--data", type=Path, help="synthetic dataset root for the loader rate (swdet data synth)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    device = torch.device(args.device)
    setups = [
        # the tiny model with torchvision's fixed 4-conv head so the heads match
        ("retinanet_tiny(4-conv head)", ["model=retinanet_tiny", "model.head_convs=4", "model.head_norm=none",
                                         "train.batch_size=8", "model.num_classes=6"]),
        ("retinanet_r50_fpn", ["model=retinanet_r50_fpn", "model.pretrained=none", "model.imgsz=512",
                               "train.batch_size=2", "model.num_classes=80"]),
    ]
    if device.type == "cuda":
        setups = [(n, [s.replace("model.imgsz=512", "model.imgsz=800").replace("train.batch_size=2",
                                                                             "train.batch_size=8") for s in sets])
                  for n, sets in setups]
    rows = []
    for name, sets in setups:
        cfg = load_config(None, sets)
        amps = [None] + ([torch.bfloat16] if device.type == "cuda" else [])
        for amp in amps:
            row = bench_model(name, cfg, device, args.iters, args.warmup, amp)
            if args.data and amp is None and name.startswith("retinanet_tiny"):
                row["loader_images_per_s"] = round(loader_rate(args.data, cfg, args.workers, 20), 2)
            rows.append(row)
            print(json.dumps(row))
    from swdet.table import format_table

    table = format_table(rows, title=f"train step: swdet vs torchvision RetinaNet ({device.type}, "
                                     f"torch {torch.__version__}, {torch.get_num_threads()} threads)")
    print(table)
    write_results(args.out / f"train_speed_{device.type}",
                  {"rows": rows, "torch": torch.__version__, "threads": torch.get_num_threads()}, table, fenced=True)


if __name__ == "__main__":
    main()
