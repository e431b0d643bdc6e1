"""Dataset-level inference shared by training-time evaluation and ``swdet eval`` / ``predict``.

Any runtime is a callable ``infer(images uint8/float [B, 3, S, S]) -> {num_dets, det_boxes,
det_scores, det_classes}`` (numpy or torch). Host code maps the detections back to original
image pixels and dataset category ids here, once, for all runtimes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from swdet.data.letterbox import Letterbox


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def unpack_detections(outputs: dict, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(boxes [n, 4], scores [n], classes [n])`` of image ``index`` (padding dropped)."""
    n = int(_np(outputs["num_dets"])[index].reshape(-1)[0])
    boxes = _np(outputs["det_boxes"])[index, :n].astype(np.float64)
    scores = _np(outputs["det_scores"])[index, :n].astype(np.float64)
    classes = _np(outputs["det_classes"])[index, :n].astype(np.int64)
    return boxes, scores, classes


def to_coco_results(outputs: dict, letterboxes: list[Letterbox], image_ids: list[int],
                    category_ids: list[int], keep: list[bool] | None = None) -> list[dict]:
    """COCO results records of a batch of runtime outputs: each image's boxes mapped from the
    canvas to original pixels through its letterbox (``box / scale``, clipped), then
    :func:`swdet.evaluation.to_coco_results` (xyxy -> xywh, class index -> dataset category id).
    ``keep[i] = False`` drops image ``i`` (an unreadable image evaluated as a blank canvas)."""
    from swdet.evaluation import to_coco_results as image_results

    results = []
    for i, (lb, image_id) in enumerate(zip(letterboxes, image_ids)):
        if keep is not None and not keep[i]:
            continue
        boxes, scores, classes = unpack_detections(outputs, i)
        if len(boxes):
            results.extend(image_results(image_id, lb.to_original(boxes), scores, classes, category_ids))
    return results


class Predictions(list):
    """COCO results records (a plain list of dicts) plus ``image_ids``: the images that were read
    and predicted. An unreadable image is predicted as a blank canvas (so each image is seen
    once) but is not in ``image_ids``: evaluate on ``image_ids`` so its ground truth does not
    count as missed (``evaluate_detections(gt, preds, image_ids=preds.image_ids)``)."""

    def __init__(self, records=(), image_ids=()):
        super().__init__(records)
        self.image_ids: list[int] = [int(i) for i in image_ids]


# Size check: more than this fraction of the images read differ from the annotation file's
# width/height -> an error (the --images folder is not the one the annotations describe); fewer
# -> one counted warning. Checked early once EARLY_AFTER images are read.
SIZE_MISMATCH_FRACTION = 0.25
SIZE_MISMATCH_EARLY_AFTER = 20


class SizeCheck:
    """Decoded image sizes against the annotation file's ``width``/``height`` (a pure swap is an
    EXIF rotation, handled by the data layer, and not counted)."""

    def __init__(self, dataset):
        self.ann = getattr(dataset, "ann_file", "the annotation file")
        self.images = getattr(dataset, "image_dir", "the image folder")
        self.read = 0
        self.mismatched: list[str] = []

    def add(self, target: dict) -> None:
        ann = target.get("annotated_size")
        if ann is None or target.get("unreadable"):
            return
        self.read += 1
        got, want = tuple(int(v) for v in target["orig_size"]), tuple(int(v) for v in ann)
        if got != want and got != want[::-1]:
            self.mismatched.append(f"{Path(str(target.get('file', '?'))).name} is {got[1]}x{got[0]}, "
                                   f"not {want[1]}x{want[0]}")

    def _many(self) -> bool:
        return len(self.mismatched) > SIZE_MISMATCH_FRACTION * self.read

    def _line(self) -> str:
        return (f"{len(self.mismatched)} of {self.read} images in {self.images} differ in size from "
                f"{Path(str(self.ann)).name} (e.g. {'; '.join(self.mismatched[:3])})")

    def check_early(self) -> None:
        if self.read >= SIZE_MISMATCH_EARLY_AFTER and self._many():
            self.fail()

    def fail(self) -> None:
        from swdet.errors import SwdetError

        raise SwdetError(f"{self._line()}: are these the images the annotations describe?")

    def finish(self) -> None:
        if not self.mismatched:
            return
        if self._many():
            self.fail()
        import warnings

        from swdet.data.coco import DataWarning

        warnings.warn(f"{self._line()}; their boxes were scaled to the files, AP may be off", DataWarning,
                      stacklevel=2)


def predict_dataset(infer: Callable, dataset, *, batch_size: int = 8, workers: int = 0,
                    progress: bool = True, desc: str = "eval") -> Predictions:
    """Run ``infer`` over an evaluation dataset (``train=False``); returns the COCO results as
    :class:`Predictions` (with the readable image ids). Decoded sizes are checked against the
    annotation file (:class:`SizeCheck`): many mismatches are an error, a few one counted warning."""
    import torch
    from tqdm import tqdm

    from swdet.data.loader import collate
    from swdet.report import relay

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         collate_fn=collate)
    results = Predictions()
    sizes = SizeCheck(dataset)
    for images, targets in tqdm(loader, desc=desc, disable=not progress, leave=False, unit="batch"):
        relay(targets)
        for t in targets:
            sizes.add(t)
        sizes.check_early()
        outputs = infer(images)
        lbs = [Letterbox(t["orig_size"][0], t["orig_size"][1], images.shape[-1], t["scale"]) for t in targets]
        keep = [not t.get("unreadable") for t in targets]
        results.extend(to_coco_results(outputs, lbs, [t["image_id"] for t in targets], dataset.category_ids,
                                       keep=keep))
        results.image_ids.extend(int(t["image_id"]) for t, k in zip(targets, keep) if k)
    sizes.finish()
    return results


class DatasetEval(NamedTuple):
    """What :func:`evaluate_runtime` returns: the COCO evaluation, the predictions (with the
    readable image ids) and the dataset (``dataset.skipped_images`` counts the unreadable)."""

    result: Any  # swdet.evaluation.EvalResult
    predictions: Predictions
    dataset: Any  # swdet.data.coco.CocoDetection


def evaluate_runtime(infer: Callable, ann_file=None, image_dir=None, *, imgsz: int | None = None,
                     category_ids: list[int] | None = None, dataset=None, batch_size: int = 8, workers: int = 0,
                     progress: bool = True, desc: str = "eval", warn: bool = True,
                     backend: str = "auto") -> DatasetEval:
    """COCO box AP of a runtime on a dataset: the one path behind ``swdet eval``, ``swdet verify``,
    ``swdet pipeline`` and the trainer's evaluation.

    1. the evaluation dataset: ``dataset`` when given (an evaluation ``CocoDetection``, e.g. the
       trainer's validation split), else ``CocoDetection(ann_file, image_dir, imgsz, train=False)``;
    2. its category ids must equal the model's (``category_ids``, default ``infer.category_ids``):
       class index ``k`` of the model is dataset category ``category_ids[k]``; otherwise a
       one-line :class:`SwdetError`;
    3. :func:`predict_dataset`;
    4. :func:`swdet.evaluation.evaluate_detections` against the dataset's ground truth
       (``dataset.coco``: the annotation file as the data layer cleaned it; the same as the file
       for a well-formed one) over the images that were read: an unreadable image is skipped and
       counted (``dataset.skipped_images``), its ground truth is not counted as missed.

    ``infer`` is a runtime (``imgsz`` and ``category_ids`` are read from it) or any callable
    ``images [B, 3, S, S] -> {num_dets, det_boxes, det_scores, det_classes}``.
    """
    from swdet.errors import SwdetError
    from swdet.evaluation import evaluate_detections

    if category_ids is None:
        category_ids = getattr(infer, "category_ids", None)
        if category_ids is None:
            raise TypeError("evaluate_runtime: pass category_ids for a plain infer callable")
    if dataset is None:
        from swdet.data.coco import CocoDetection

        if ann_file is None or image_dir is None:
            raise TypeError("evaluate_runtime: pass ann_file and image_dir (or a dataset)")
        size = imgsz if imgsz is not None else getattr(infer, "imgsz", None)
        if size is None:
            raise TypeError("evaluate_runtime: pass imgsz for a plain infer callable")
        dataset = CocoDetection(ann_file, image_dir, imgsz=int(size), train=False, warn=warn)
    model_ids = [int(c) for c in category_ids]
    if list(dataset.category_ids) != model_ids:
        source = getattr(infer, "source", "the model")
        raise SwdetError(f"{getattr(dataset, 'ann_file', ann_file)}: category ids {_head(dataset.category_ids)} do not match {source}'s "
                         f"{_head(model_ids)} (evaluate on the dataset the model was trained for)")
    if hasattr(dataset, "require_boxes"):
        dataset.require_boxes("evaluate against")
    preds = predict_dataset(infer, dataset, batch_size=batch_size, workers=workers, progress=progress, desc=desc)
    if not preds.image_ids:
        raise SwdetError(f"{getattr(dataset, 'image_dir', image_dir)}: none of the {len(dataset)} images could be read")
    result = evaluate_detections(dataset.coco, preds, image_ids=preds.image_ids, backend=backend)
    return DatasetEval(result, preds, dataset)


def _head(ids, n: int = 5) -> str:
    ids = [int(i) for i in ids]
    return "[" + ", ".join(map(str, ids[:n])) + (", ...]" if len(ids) > n else "]")


def letterbox_batch(images, size: int) -> tuple[np.ndarray, list[Letterbox]]:
    """PIL RGB images -> ``(uint8 [B, 3, size, size], letterboxes)`` (the host preprocessing
    every runtime shares)."""
    from swdet.data.letterbox import letterbox_image

    arrays, boxes = [], []
    for im in images:
        arr, lb = letterbox_image(im, size)
        arrays.append(arr.transpose(2, 0, 1))
        boxes.append(lb)
    return np.ascontiguousarray(np.stack(arrays)), boxes
