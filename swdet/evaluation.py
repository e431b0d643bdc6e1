"""COCO box evaluation, prediction files and precision-recall plots.

The numbers are pycocotools' ``COCOeval`` (``iouType="bbox"``, default parameters): ten IoU
thresholds ``0.50:0.05:0.95``, 101 recall thresholds, area ranges all / small (< 32²) /
medium (32²–96²) / large (> 96²) and at most 1 / 10 / 100 detections per image. The optional
``faster-coco-eval`` package (``pip install "swdet[fast-eval]"``) computes the same numbers
faster and is used when installed and ``backend="auto"``.

Conventions:

- Predictions use the COCO results format: ``{"image_id", "category_id", "bbox": [x, y, w, h],
  "score"}`` in original image pixels with the dataset's category ids
  (:func:`to_coco_results` builds them from ``xyxy`` boxes and contiguous class indices).
- ``EvalResult.stats`` holds ``COCOeval.stats`` under the names of :data:`STAT_KEYS`, as
  fractions; like pycocotools, ``-1`` means undefined (e.g. ``APs`` when the ground truth has no
  small object). Metrics files write undefined values as ``null`` so every number in them lies
  in [0, 1].
- Per-class AP is the standard reduction of ``COCOeval.eval["precision"]`` (shape
  ``[T, R, K, A, M]``: IoU thresholds, recall thresholds, classes, area ranges, max detections):
  ``AP_k = mean{ p[t, r, k, all, 100] : p > -1 }`` over every ``t`` (``AP50_k``: ``t`` at IoU 0.5
  only); ``-1`` where class ``k`` has no ground truth. The mean of ``AP_k`` over the classes that
  have ground truth equals ``AP``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from swdet.artifact import atomic_write_bytes, atomic_write_json
from swdet.errors import MissingDependency, SwdetError

__all__ = [
    "STAT_KEYS",
    "BACKENDS",
    "ClassAP",
    "EvalResult",
    "load_coco",
    "to_coco_results",
    "evaluate_detections",
    "format_eval_table",
    "write_metrics_json",
    "write_predictions_json",
    "load_predictions_json",
    "plot_pr_curve",
    "faster_coco_eval_available",
]

#: Names of ``COCOeval.stats[0:12]``, in order.
STAT_KEYS: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)
BACKENDS: tuple[str, ...] = ("auto", "pycocotools", "faster_coco_eval")

# (ap, iouThr, areaRng, maxDets) of each stat, as in pycocotools' summarize(); used to print the
# standard 12-line table.
_SUMMARY_ROWS = (
    (True, None, "all", 100), (True, 0.5, "all", 100), (True, 0.75, "all", 100),
    (True, None, "small", 100), (True, None, "medium", 100), (True, None, "large", 100),
    (False, None, "all", 1), (False, None, "all", 10), (False, None, "all", 100),
    (False, None, "small", 100), (False, None, "medium", 100), (False, None, "large", 100),
)


class ClassAP(NamedTuple):
    """AP of one category (fractions; ``-1`` where the category has no ground truth)."""

    category_id: int
    name: str
    AP: float
    AP50: float


@dataclass
class EvalResult:
    """Result of :func:`evaluate_detections`.

    Attributes:
        stats: ``COCOeval.stats[0:12]`` under :data:`STAT_KEYS` (fractions, ``-1`` = undefined).
        per_class: one :class:`ClassAP` per ground-truth category, in the annotation file's order.
        precision: ``COCOeval.eval["precision"]``, shape ``[T, R, K, A, M]`` (``-1`` = undefined).
        iou_thresholds: the ``T`` IoU thresholds (0.50, 0.55, ..., 0.95).
        recall_thresholds: the ``R`` recall thresholds (0.00, 0.01, ..., 1.00).
        backend: ``"pycocotools"`` or ``"faster_coco_eval"``.
        num_images: images evaluated.
        num_detections: predictions on those images.
    """

    stats: dict[str, float]
    per_class: list[ClassAP]
    precision: np.ndarray
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray
    backend: str
    num_images: int
    num_detections: int

    def pr_curve(self, iou: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Interpolated precision-recall curve averaged over classes (area all, 100 detections).

        ``precision(r) = mean_k p[t, r, k]`` over the classes with ground truth, at IoU ``iou``
        (one of :attr:`iou_thresholds`), or also averaged over all IoU thresholds when ``iou`` is
        None. Returns ``(recall_thresholds [R], precision [R])``; NaN where no class has ground
        truth.
        """
        p = self.precision[:, :, :, 0, -1]  # [T, R, K]
        if iou is not None:
            hits = np.flatnonzero(np.isclose(self.iou_thresholds, iou))
            if hits.size == 0:
                raise ValueError(f"IoU {iou} is not one of the thresholds {self.iou_thresholds.tolist()}")
            p = p[hits]
        valid = p > -1
        count = valid.sum(axis=(0, 2))
        total = np.where(valid, p, 0.0).sum(axis=(0, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            curve = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        return self.recall_thresholds.copy(), curve

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the content of :func:`write_metrics_json` without ``extra``).

        Undefined values (``-1``) become ``None`` so that every number is a fraction in [0, 1].
        """
        out: dict[str, Any] = {k: _fraction_or_none(v) for k, v in self.stats.items()}
        out["per_class"] = [
            {"category_id": c.category_id, "name": c.name,
             "AP": _fraction_or_none(c.AP), "AP50": _fraction_or_none(c.AP50)}
            for c in self.per_class
        ]
        out["backend"] = self.backend
        out["num_images"] = self.num_images
        out["num_detections"] = self.num_detections
        return out


# --------------------------------------------------------------------------------------------
# Loading ground truth


def load_coco(ann_file: str | os.PathLike) -> Any:
    """Read a COCO annotation file into a ``pycocotools.coco.COCO`` object, quietly.

    The one policy of :mod:`swdet.data.coco` for a bad annotation file, the training dataset's
    too: a problem with the file (missing, invalid JSON, not an object, no ``images``, no
    ``annotations`` key, no ``categories``, an ambiguous category id) is a one-line
    :class:`SwdetError` naming it (:func:`~swdet.data.coco.read_coco_json`, the same reader); a
    problem with a record is skipped, counted and reported once per kind as a
    :class:`~swdet.data.coco.DataWarning` (:func:`~swdet.data.coco.clean_for_evaluation`).
    A missing ``area`` is filled with the box area ``w·h`` and a missing ``iscrowd`` with 0.
    """
    from pycocotools.coco import COCO

    from swdet.data.coco import clean_for_evaluation, read_coco_json

    path = Path(ann_file)
    data = clean_for_evaluation(read_coco_json(path), path)
    coco = COCO()
    coco.dataset = data
    with _quiet():
        coco.createIndex()
    return coco


# --------------------------------------------------------------------------------------------
# Predictions


def to_coco_results(
    image_id: int,
    boxes: Any,
    scores: Any,
    labels: Any,
    category_ids: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Detections of one image -> COCO results (``bbox = [x1, y1, x2 - x1, y2 - y1]``).

    Args:
        image_id: the dataset image id.
        boxes: ``[N, 4]`` ``(x1, y1, x2, y2)`` in original image pixels (numpy or CPU tensor).
        scores: ``[N]`` confidences.
        labels: ``[N]`` contiguous class indices ``0..C-1``.
        category_ids: dataset category id of each class index (``model.json``); None keeps
            ``labels`` as the category ids.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    lab = np.asarray(labels).reshape(-1).astype(np.int64)
    if not (len(b) == len(s) == len(lab)):
        raise ValueError(f"boxes {len(b)}, scores {len(s)} and labels {len(lab)} differ in length")
    if category_ids is not None:
        cats = np.asarray(list(category_ids), dtype=np.int64)
        bad = (lab < 0) | (lab >= len(cats))
        if bad.any():
            raise SwdetError(
                f"labels: class index {int(lab[bad][0])} out of range for {len(cats)} categories"
            )
        lab = cats[lab]
    xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1).tolist()
    iid = int(image_id)
    return [
        {"image_id": iid, "category_id": c, "bbox": bb, "score": sc}
        for c, bb, sc in zip(lab.tolist(), xywh, s.tolist())
    ]


def write_predictions_json(path: str | os.PathLike, predictions: Iterable[dict[str, Any]]) -> Path:
    """Write COCO results (a JSON list) to ``path`` atomically (temp file + ``os.replace``).

    numpy scalars and arrays inside the dicts are converted to plain JSON numbers and lists.
    """
    return atomic_write_json(path, list(predictions), indent=None, allow_nan=False)


def load_predictions_json(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a COCO results file (a JSON list of detections); one-line :class:`SwdetError` if bad."""
    path = Path(path)
    if not path.is_file():
        raise SwdetError(f"{path}: predictions file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise SwdetError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SwdetError(f"{path}: cannot read: {e}") from None
    if not isinstance(data, list):
        raise SwdetError(f"{path}: expected a JSON list of detections (COCO results format)")
    return data


def _normalize_predictions(
    predictions: Iterable[dict[str, Any]], valid_images: set, valid_cats: set, keep_images: set
) -> list[dict[str, Any]]:
    """Checked copies of the predictions on ``keep_images``, in input order, shaped as
    pycocotools' ``loadRes`` leaves them for box evaluation (``area = w·h``, ``iscrowd = 0``,
    ``id`` = 1-based position)."""
    out: list[dict[str, Any]] = []
    for i, p in enumerate(predictions):
        try:
            image_id, category_id, bbox, score = p["image_id"], p["category_id"], p["bbox"], p["score"]
        except (KeyError, TypeError, IndexError):
            raise SwdetError(
                f"predictions[{i}]: expected an object with image_id, category_id, bbox, score"
            ) from None
        try:
            image_id, category_id = int(image_id), int(category_id)
            x, y, w, h = (float(v) for v in bbox)
            score = float(score)
        except (TypeError, ValueError):
            raise SwdetError(
                f"predictions[{i}]: image_id and category_id must be integers, bbox 4 numbers "
                f"[x, y, w, h], score a number"
            ) from None
        if image_id not in valid_images:
            raise SwdetError(f"predictions[{i}]: image_id {image_id} is not in the annotation file")
        if category_id not in valid_cats:
            raise SwdetError(
                f"predictions[{i}]: category_id {category_id} is not in the annotation file's "
                f"categories (predictions must use dataset category ids)"
            )
        if not all(math.isfinite(v) for v in (x, y, w, h, score)):
            raise SwdetError(f"predictions[{i}]: bbox and score must be finite")
        if w < 0 or h < 0:
            raise SwdetError(
                f"predictions[{i}]: bbox has negative width or height (expected [x, y, w, h], "
                f"not [x1, y1, x2, y2])"
            )
        if image_id not in keep_images:
            continue
        out.append({
            "id": len(out) + 1, "image_id": image_id, "category_id": category_id,
            "bbox": [x, y, w, h], "score": score, "area": w * h, "iscrowd": 0,
        })
    return out


# --------------------------------------------------------------------------------------------
# Evaluation


def faster_coco_eval_available() -> bool:
    """True when the optional ``faster-coco-eval`` package can be imported."""
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        return False
    return True


def evaluate_detections(
    coco_gt: Any,
    predictions: Iterable[dict[str, Any]],
    *,
    image_ids: Iterable[int] | None = None,
    backend: str = "auto",
) -> EvalResult:
    """COCO box evaluation of ``predictions`` against ``coco_gt``.

    Args:
        coco_gt: a ``COCO`` object from :func:`load_coco` (or a path to the annotation file).
        predictions: COCO results (``image_id``, ``category_id``, ``bbox [x, y, w, h]``,
            ``score``); may be empty (every AP is then 0). Not modified.
        image_ids: evaluate on these images only (default: every image of ``coco_gt``);
            predictions on other images are ignored.
        backend: ``"auto"`` (faster-coco-eval when installed, else pycocotools),
            ``"pycocotools"`` or ``"faster_coco_eval"``.

    Equivalent to ``COCOeval(coco_gt, coco_gt.loadRes(predictions), "bbox")`` followed by
    ``evaluate(); accumulate(); summarize()``, without the prints, and without loadRes's failure
    on an empty list.
    """
    if isinstance(coco_gt, (str, os.PathLike)):
        coco_gt = load_coco(coco_gt)
    if backend not in BACKENDS:
        raise SwdetError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = "faster_coco_eval" if faster_coco_eval_available() else "pycocotools"
    elif backend == "faster_coco_eval" and not faster_coco_eval_available():
        raise MissingDependency("faster-coco-eval", "fast-eval", "backend 'faster_coco_eval'")

    dataset = coco_gt.dataset
    all_images = [img["id"] for img in dataset["images"]]
    valid_images = set(all_images)
    if image_ids is None:
        eval_images = all_images
    else:
        eval_images = [int(i) for i in image_ids]
        unknown = [i for i in eval_images if i not in valid_images]
        if unknown:
            raise SwdetError(f"image_ids: image {unknown[0]} is not in the annotation file")
    if not eval_images:
        raise SwdetError("image_ids: no images to evaluate")
    categories = dataset["categories"]
    dets = _normalize_predictions(
        predictions, valid_images, {c["id"] for c in categories}, set(eval_images)
    )

    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        gt = coco_gt
        dt = _results_coco(COCO, dataset, dets)
        with _quiet():
            E = COCOeval(gt, dt, iouType="bbox")
    else:
        from faster_coco_eval import COCO as FCOCO
        from faster_coco_eval import COCOeval_faster

        if isinstance(coco_gt, FCOCO):
            gt = coco_gt
        else:
            gt = FCOCO()
            gt.dataset = dataset
            with _quiet():
                gt.createIndex()
        dt = _results_coco(FCOCO, dataset, dets)
        with _quiet():
            E = COCOeval_faster(gt, dt, iouType="bbox", print_function=_no_print)
    E.params.imgIds = sorted(set(eval_images))
    with _quiet():
        E.evaluate()
        E.accumulate()
        E.summarize()

    stats = {k: float(v) for k, v in zip(STAT_KEYS, np.asarray(E.stats, dtype=np.float64)[:12])}
    precision = np.asarray(E.eval["precision"], dtype=np.float64)
    iou_thrs = np.asarray(E.params.iouThrs, dtype=np.float64)
    rec_thrs = np.asarray(E.params.recThrs, dtype=np.float64)
    cat_ids = [int(c) for c in E.params.catIds]  # sorted ids, the K axis of `precision`
    return EvalResult(
        stats=stats,
        per_class=_per_class_ap(precision, iou_thrs, cat_ids, categories),
        precision=precision,
        iou_thresholds=iou_thrs,
        recall_thresholds=rec_thrs,
        backend=backend,
        num_images=len(E.params.imgIds),
        num_detections=len(dets),
    )


def _results_coco(coco_cls: type, gt_dataset: dict, dets: list[dict[str, Any]]) -> Any:
    """A results COCO object like ``loadRes`` builds for boxes, also for an empty list."""
    res = coco_cls()
    res.dataset = {
        "info": gt_dataset.get("info", {}),
        "images": list(gt_dataset["images"]),
        "categories": [dict(c) for c in gt_dataset["categories"]],
        "annotations": dets,
    }
    with _quiet():
        res.createIndex()
    return res


def _per_class_ap(
    precision: np.ndarray, iou_thrs: np.ndarray, cat_ids: list[int], categories: list[dict]
) -> list[ClassAP]:
    """``AP_k = mean{p[t, r, k, all, maxDets[-1]] > -1}`` over (t, r); AP50 at t = IoU 0.5."""
    p = precision[:, :, :, 0, -1]  # [T, R, K]
    t50 = int(np.flatnonzero(np.isclose(iou_thrs, 0.5))[0])

    def masked_mean(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        valid = x > -1
        n = valid.sum(axis=axes)
        s = np.where(valid, x, 0.0).sum(axis=axes)
        return np.where(n > 0, s / np.maximum(n, 1), -1.0)

    ap = masked_mean(p, (0, 1))
    ap50 = masked_mean(p[t50], (0,))
    index = {cid: k for k, cid in enumerate(cat_ids)}
    out = []
    for c in categories:  # annotation-file order
        k = index.get(int(c["id"]))
        if k is None:
            continue
        out.append(ClassAP(int(c["id"]), str(c.get("name", c["id"])), float(ap[k]), float(ap50[k])))
    return out


# --------------------------------------------------------------------------------------------
# Reports


def format_eval_table(result: EvalResult, title: str | None = "COCO bbox evaluation") -> str:
    """Plain-text report: the standard 12-line COCO summary (the lines pycocotools' ``summarize``
    prints) followed by a per-class AP table. No ANSI codes."""
    lines: list[str] = []
    if title:
        lines.append(
            f"{title} ({result.backend}, {result.num_images} images, "
            f"{result.num_detections} detections)"
        )
    iou_all = f"{result.iou_thresholds[0]:0.2f}:{result.iou_thresholds[-1]:0.2f}"
    for key, (is_ap, iou, area, max_dets) in zip(STAT_KEYS, _SUMMARY_ROWS):
        name = "Average Precision" if is_ap else "Average Recall"
        kind = "(AP)" if is_ap else "(AR)"
        iou_str = iou_all if iou is None else f"{iou:0.2f}"
        lines.append(
            f" {name:<18} {kind} @[ IoU={iou_str:<9} | area={area:>6s} | "
            f"maxDets={max_dets:>3d} ] = {result.stats[key]:0.3f}"
        )
    if result.per_class:
        lines.append("")
        id_w = max(2, *(len(str(c.category_id)) for c in result.per_class))
        name_w = max(5, *(len(c.name) for c in result.per_class))

        def cell(v: float) -> str:
            return f"{v:6.3f}" if v > -1 else f"{'-':>6}"

        lines.append(f"{'id':>{id_w}}  {'class':<{name_w}}  {'AP':>6}  {'AP50':>6}")
        lines.append(f"{'-' * id_w}  {'-' * name_w}  {'-' * 6}  {'-' * 6}")
        for c in result.per_class:
            lines.append(
                f"{c.category_id:>{id_w}}  {c.name:<{name_w}}  {cell(c.AP)}  {cell(c.AP50)}"
            )
    return "\n".join(lines) + "\n"


def write_metrics_json(
    path: str | os.PathLike, result: EvalResult, extra: dict[str, Any] | None = None
) -> Path:
    """Write the metrics file (docs/design.md "Metrics files") atomically.

    Top-level keys: ``AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl`` (fractions
    in [0, 1], ``null`` where undefined), ``per_class`` (list of ``{category_id, name, AP,
    AP50}``), ``backend``, ``num_images``, ``num_detections``, then the keys of ``extra``
    (e.g. runtime, model, device), which may not replace any of those.
    """
    data = result.to_dict()
    if extra:
        clash = sorted(set(extra) & set(data))
        if clash:
            raise ValueError(f"extra keys {clash} would overwrite evaluation keys")
        data.update(extra)
    return atomic_write_json(path, data, indent=2, allow_nan=False)


def plot_pr_curve(result: EvalResult, path: str | os.PathLike, title: str | None = None) -> Path:
    """Save a PNG of the class-averaged precision-recall curves at IoU 0.5, IoU 0.75 and the mean
    over IoU 0.50:0.95 (see :meth:`EvalResult.pr_curve`). Uses matplotlib's Agg canvas directly
    (no pyplot state, no display); written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 5.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    curves = (
        (0.5, f"IoU 0.50 (AP50 {result.stats['AP50']:.3f})"),
        (0.75, f"IoU 0.75 (AP75 {result.stats['AP75']:.3f})"),
        (None, f"IoU 0.50:0.95 (AP {result.stats['AP']:.3f})"),
    )
    for iou, label in curves:
        r, p = result.pr_curve(iou)
        ax.plot(r, p, label=label, linewidth=1.8 if iou is None else 1.2,
                linestyle="-" if iou is None else "--")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision")
    ax.set_title(title or f"Precision-recall ({result.num_images} images)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------------------------
# Helpers


@contextlib.contextmanager
def _quiet():
    """Swallow pycocotools' prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _no_print(*args: Any, **kwargs: Any) -> None:
    return None


def _fraction_or_none(v: float) -> float | None:
    return None if v is None or v < 0 or not math.isfinite(v) else float(v)
