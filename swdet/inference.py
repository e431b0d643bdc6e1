"""Dataset-level inference shared by training-time evaluation and ``swdet eval`` / ``predict``.

Any runtime is a callable ``infer(images uint8/float [B, 3, S, S]) -> {num_dets, det_boxes,
det_scores, det_classes}`` (numpy or torch). Host code maps the detections back to original
image pixels and dataset category ids here, once, for all runtimes.
"""

from __future__ import annotations

from collections.abc import Callable

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
    """COCO results records (``bbox`` x, y, w, h in original pixels, dataset category ids).
    ``keep[i] = False`` drops image ``i`` (an unreadable image evaluated as a blank canvas)."""
    results = []
    cat = np.asarray(category_ids)
    for i, (lb, image_id) in enumerate(zip(letterboxes, image_ids)):
        if keep is not None and not keep[i]:
            continue
        boxes, scores, classes = unpack_detections(outputs, i)
        if len(boxes) == 0:
            continue
        boxes = lb.to_original(boxes)
        wh = boxes[:, 2:] - boxes[:, :2]
        for box, size, s, c in zip(boxes, wh, scores, classes):
            results.append({
                "image_id": int(image_id),
                "category_id": int(cat[c]),
                "bbox": [round(float(box[0]), 3), round(float(box[1]), 3), round(float(size[0]), 3),
                         round(float(size[1]), 3)],
                "score": round(float(s), 5),
            })
    return results


def predict_dataset(infer: Callable, dataset, *, batch_size: int = 8, workers: int = 0,
                    progress: bool = True, desc: str = "eval") -> list[dict]:
    """Run ``infer`` over an evaluation dataset (``train=False``); returns COCO results."""
    import torch
    from tqdm import tqdm

    from swdet.data.loader import collate

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         collate_fn=collate)
    results: list[dict] = []
    for images, targets in tqdm(loader, desc=desc, disable=not progress, leave=False, unit="batch"):
        outputs = infer(images)
        lbs = [Letterbox(t["orig_size"][0], t["orig_size"][1], images.shape[-1], t["scale"]) for t in targets]
        results.extend(to_coco_results(outputs, lbs, [t["image_id"] for t in targets],
                                       dataset.category_ids, keep=[not t.get("unreadable") for t in targets]))
    return results


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
