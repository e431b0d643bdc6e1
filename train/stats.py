"""Anchor statistics of a training set: how many anchors are foreground, over the whole dataset.

Sampling-Free (Chen et al., Sec. 3.2) needs ``N_f`` (foreground anchors) and ``N`` (foreground
+ background anchors; ignored ones excluded) summed over the training set, for its optimal bias
``π = N_f/(N·C)`` (Eq. 10) and its inference threshold ``θ = N_f/N``. They depend only on the
anchors, the GT boxes and the matching rule, so they come from one pass that matches the anchors
to every image's boxes -- no forward pass and no image decoding ("N/N_f can be computed by
pre-defined anchors, thus the computation is efficient as it does not require network
forwarding").

The result is cached as JSON in ``cache_dir/anchor_stats.json``, keyed by a fingerprint of
everything it depends on (annotation file path, modification time and size, number of images,
input size, the anchors themselves, and the matching rule and thresholds), and reused while the
fingerprint matches.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor

from swdet.artifact import atomic_write_json
from swdet.errors import SwdetError
from swdet.train.assign import IGNORE

CACHE_NAME = "anchor_stats.json"
CACHE_VERSION = 1
MAX_CACHE_ENTRIES = 16


def _target_boxes(dataset, i: int) -> Tensor:
    """GT boxes ``[n, 4]`` of image ``i`` in the (un-augmented) letterboxed canvas, image unread."""
    if hasattr(dataset, "get_target"):
        boxes = dataset.get_target(i)["boxes"]
    elif hasattr(dataset, "gt_boxes"):
        boxes = dataset.gt_boxes(i)[0]
    else:
        raise TypeError(f"{type(dataset).__name__}: needs get_target(i) (boxes without reading the image)")
    return torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def fingerprint(dataset, assigner) -> dict | None:
    """What the statistics depend on; None when the dataset names no annotation file (no cache)."""
    ann = getattr(dataset, "ann_file", None)
    if not ann or not Path(ann).is_file():
        return None
    st = os.stat(ann)
    anchors = assigner.anchors.detach().cpu().float().contiguous()
    digest = hashlib.sha256(anchors.numpy().tobytes()).hexdigest()
    return {
        "version": CACHE_VERSION,
        "ann_file": str(Path(ann).resolve()),
        "ann_mtime_ns": st.st_mtime_ns,
        "ann_size": st.st_size,
        "num_images": len(dataset),
        "imgsz": int(getattr(dataset, "imgsz", 0)),
        "num_anchors": int(anchors.shape[0]),
        "anchors_sha256": digest,
        "rule": assigner.rule,
        "fg_iou": float(assigner.fg_iou),
        "bg_iou": float(assigner.bg_iou),
        "allow_low_quality": bool(assigner.allow_low_quality),
        "topn": int(assigner.topn),
    }


def _key(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:20]


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # missing or corrupt: recompute
    entries = data.get("entries") if isinstance(data, dict) else None
    return entries if isinstance(entries, dict) else {}


def _write_cache(path: Path, entries: dict) -> None:
    """Atomic write (a unique temp file + rename), so a kill or a parallel rank never leaves half
    a file; an unwritable folder is a :class:`SwdetError`."""
    atomic_write_json(path, {"entries": entries}, indent=1)


def _matcher_on(assigner, device):
    """The assigner with its anchors on ``device`` (a shallow copy; the original is untouched)."""
    if device is None or torch.device(device) == assigner.anchors.device:
        return assigner
    matcher = copy.copy(assigner)
    matcher.anchors = assigner.anchors.to(device)
    return matcher


@torch.inference_mode()
def count_anchors(dataset, assigner, progress: bool = True, device=None) -> dict:
    """One matching pass over ``dataset`` (no cache). See :func:`anchor_statistics`."""
    from tqdm import tqdm

    matcher = _matcher_on(assigner, device)
    dev = matcher.anchors.device
    num_anchors = int(matcher.anchors.shape[0])
    # device-side running counts: one host read at the end, not one per image
    fg = torch.zeros((), dtype=torch.int64, device=dev)
    ignored = torch.zeros((), dtype=torch.int64, device=dev)
    num_gt = empty = 0
    for i in tqdm(range(len(dataset)), desc="anchor statistics", unit="img", disable=not progress,
                  dynamic_ncols=True, leave=False):
        boxes = _target_boxes(dataset, i)
        num_gt += len(boxes)
        if len(boxes) == 0:  # every anchor is background
            empty += 1
            continue
        matched, _ = matcher.match(boxes.to(dev))  # vectorized over anchors and GTs
        fg += (matched >= 0).sum()
        ignored += (matched == IGNORE).sum()
    num_fg, num_ignored = int(fg), int(ignored)
    num_all = num_anchors * len(dataset) - num_ignored
    return {
        "num_fg": num_fg,
        "num_all": num_all,
        "num_ignored": num_ignored,
        "num_images": len(dataset),
        "num_images_without_boxes": empty,
        "num_gt": num_gt,
        "num_anchors_per_image": num_anchors,
        "fg_fraction": num_fg / num_all if num_all else 0.0,
        "rule": assigner.rule,
    }


def anchor_statistics(dataset, assigner, cache_dir: str | os.PathLike | None = None, progress: bool = True,
                      device=None) -> dict:
    """``N_f`` and ``N`` of the training set by matching the anchors to every image's GT boxes.

    Args:
        dataset: has ``len()`` and ``get_target(i) -> {"boxes": [n, 4] canvas xyxy, ...}`` (the
            target of ``dataset[i]`` without augmentation and without reading the image); its
            ``ann_file`` and ``imgsz`` enter the cache fingerprint.
        assigner: a :class:`~swdet.train.assign.TargetAssigner`; ``assigner.match(boxes)`` gives
            each anchor's GT index, -1 negative, -2 ignored.
        cache_dir: where ``anchor_stats.json`` is read and written; None disables the cache.
        progress: show a progress bar.
        device: where to match, e.g. the training GPU (COCO at 800: 118k images x 120k anchors,
            ~10-20 ms per image on one CPU core); None = where ``assigner.anchors`` are (the CPU).

    Returns:
        ``{"num_fg": N_f, "num_all": N (fg + bg, ignored excluded), "num_ignored",
        "num_images", "num_images_without_boxes", "num_gt", "num_anchors_per_image",
        "fg_fraction": N_f/N, "rule"}`` (plain ints/floats, JSON-serializable).
    """
    fp = fingerprint(dataset, assigner) if cache_dir is not None else None
    path = Path(cache_dir) / CACHE_NAME if fp is not None else None
    if path is not None:
        entries = _read_cache(path)
        hit = entries.get(_key(fp))
        if isinstance(hit, dict) and hit.get("fingerprint") == fp and isinstance(hit.get("stats"), dict):
            return dict(hit["stats"])
    stats = count_anchors(dataset, assigner, progress=progress, device=device)
    if path is not None:
        entries = _read_cache(path)
        entries.pop(_key(fp), None)
        entries[_key(fp)] = {"fingerprint": fp, "stats": stats}  # newest last
        while len(entries) > MAX_CACHE_ENTRIES:
            entries.pop(next(iter(entries)))  # drop the oldest
        try:
            _write_cache(path, entries)
        except SwdetError as e:  # a read-only run directory only loses the cache
            warnings.warn(f"anchor statistics not cached: {e}", stacklevel=2)
    return stats
