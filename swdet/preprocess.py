"""Host-side pre- and post-processing shared by every runtime (docs/design.md, "Runtimes": host code
does decode, letterbox and the mapping back to image coordinates, once, for all runtimes).

Core, not ``swdet.serve``: ``swdet predict``, ``swdet.calib`` (calibration images go through
the model's own preprocessing), ``swdet.serve`` and the benchmarks all use it, and calib must
not import serve. ``swdet.serve.preprocess`` re-exports these names.

Pre-processing turns what a client sends (file paths, encoded bytes, PIL images or HWC uint8
arrays) into one ``uint8 [B, 3, S, S]`` batch of letterboxed RGB canvases:

1. **decode** with :func:`swdet.data.image.load_image` / :func:`~swdet.data.image.decode_bytes`
   (EXIF orientation, any mode -> 8-bit RGB; a bad image raises
   :class:`~swdet.data.image.ImageDecodeError` naming it),
2. **letterbox** with :func:`swdet.inference.letterbox_batch`: ``scale = S / max(h, w)``, the
   resized image at the top-left of an ``S x S`` canvas padded with 114,

both per image in a thread pool (PIL releases the GIL while it decodes and resizes).

Post-processing maps a runtime's padded outputs (canvas pixels, contiguous class indices) back
to each original image: ``box_original = clip(box_canvas / scale)`` (via
:func:`swdet.inference.unpack_detections` and :meth:`Letterbox.to_original`) and class index
``c`` -> dataset ``category_ids[c]`` / ``class_names[c]``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from swdet.data.image import ImageDecodeError, decode_bytes, list_images, load_image, to_rgb  # noqa: F401
from swdet.data.letterbox import Letterbox
from swdet.errors import SwdetError
from swdet.inference import letterbox_batch, unpack_detections

__all__ = ["PreparedBatch", "Detections", "Preprocessor", "decode_image", "prepare_batch", "map_detections",
           "default_workers", "list_images"]


def default_workers() -> int:
    """Decode threads: the CPU count, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def decode_image(item: Any, name: str | None = None) -> Image.Image:
    """One client item -> 8-bit RGB PIL image.

    ``item`` may be a path (``str`` / ``os.PathLike``), encoded bytes (``bytes``, ``bytearray``,
    ``memoryview``), a PIL image (converted with :func:`swdet.data.image.to_rgb`) or an HWC
    ``uint8`` RGB array (``[H, W, 3]``, or ``[H, W]`` grey).
    """
    if isinstance(item, (str, os.PathLike)):
        return load_image(item)
    if isinstance(item, (bytes, bytearray, memoryview)):
        return decode_bytes(item, name or "<bytes>")
    if isinstance(item, Image.Image):
        return to_rgb(item)
    if isinstance(item, np.ndarray):
        label = name or "<array>"
        if item.dtype != np.uint8:
            raise ImageDecodeError(label, f"expected a uint8 array, got {item.dtype}")
        if item.ndim == 2:
            item = np.repeat(item[..., None], 3, axis=2)
        if item.ndim != 3 or item.shape[2] != 3 or item.shape[0] < 1 or item.shape[1] < 1:
            raise ImageDecodeError(label, f"expected an HxWx3 RGB array, got shape {tuple(item.shape)}")
        return Image.fromarray(np.ascontiguousarray(item), mode="RGB")
    raise ImageDecodeError(name or f"<{type(item).__name__}>",
                           "unsupported input (expected a path, encoded bytes, a PIL image or an HxWx3 uint8 array)")


def _item_name(item: Any, index: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    return f"<image {index}>"


@dataclass
class PreparedBatch:
    """A letterboxed batch: ``images`` uint8 ``[B, 3, S, S]``, one :class:`Letterbox` and name per
    image, and the inputs that could not be decoded (``failed``: ``(name, message)``; only
    filled when ``on_error="skip"``)."""

    images: np.ndarray
    letterboxes: list[Letterbox]
    names: list[str]
    failed: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.letterboxes)


@dataclass
class Detections:
    """Detections of one image in original-image pixels.

    ``boxes`` ``[n, 4]`` xyxy float64, ``scores`` ``[n]``, ``classes`` ``[n]`` contiguous indices,
    ``category_ids`` ``[n]`` the dataset's ids, ``names`` the class names.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    category_ids: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return len(self.scores)

    def to_records(self, **extra) -> list[dict]:
        """One dict per detection: ``bbox`` ``[x, y, w, h]``, ``score``, ``category_id``,
        ``category`` (plus ``extra`` keys, e.g. ``file=...``). The COCO fields come from
        :func:`swdet.evaluation.to_coco_results`."""
        from swdet.evaluation import to_coco_results

        coco = to_coco_results(0, self.boxes, self.scores, self.category_ids)  # ids already mapped
        return [{**extra, "bbox": r["bbox"], "score": r["score"], "category_id": r["category_id"], "category": n}
                for r, n in zip(coco, self.names)]


class Preprocessor:
    """Decode + letterbox in a thread pool; reusable across batches (one pool).

    ``Preprocessor(imgsz)(items)`` -> :class:`PreparedBatch`. ``on_error="raise"`` (default)
    re-raises the first :class:`ImageDecodeError`; ``"skip"`` drops bad items and lists them in
    ``PreparedBatch.failed``.
    """

    def __init__(self, imgsz: int, workers: int | None = None):
        if int(imgsz) < 1:
            raise SwdetError(f"imgsz: must be positive, got {imgsz}")
        self.imgsz = int(imgsz)
        self.workers = default_workers() if workers is None else max(0, int(workers))
        self._pool: ThreadPoolExecutor | None = None

    def _one(self, item: Any, name: str) -> tuple[np.ndarray, Letterbox]:
        img = decode_image(item, name)
        arr, lbs = letterbox_batch([img], self.imgsz)
        return arr[0], lbs[0]

    def _map(self, items: list, names: list) -> list:
        if self.workers <= 1 or len(items) <= 1:
            return [self._safe_one(it, n) for it, n in zip(items, names)]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="swdet-decode")
        return list(self._pool.map(self._safe_one, items, names))

    def __call__(self, items: Sequence[Any], names: Sequence[str] | None = None,
                 on_error: str = "raise") -> PreparedBatch:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        items = list(items)
        names = [_item_name(it, i) for i, it in enumerate(items)] if names is None else list(names)
        if len(names) != len(items):
            raise ValueError(f"{len(items)} items but {len(names)} names")
        results = self._map(items, names)
        arrays, lbs, kept, failed = [], [], [], []
        for name, res in zip(names, results):
            if isinstance(res, ImageDecodeError):
                if on_error == "raise":
                    raise res
                failed.append((name, str(res)))
                continue
            arrays.append(res[0])
            lbs.append(res[1])
            kept.append(name)
        images = (np.ascontiguousarray(np.stack(arrays)) if arrays
                  else np.zeros((0, 3, self.imgsz, self.imgsz), np.uint8))
        return PreparedBatch(images, lbs, kept, failed)

    def _safe_one(self, item: Any, name: str):
        try:
            return self._one(item, name)
        except ImageDecodeError as e:
            return e

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def prepare_batch(items: Sequence[Any], imgsz: int, workers: int | None = None,
                  on_error: str = "raise") -> PreparedBatch:
    """One-shot :class:`Preprocessor` call (creates and closes its thread pool)."""
    with Preprocessor(imgsz, workers) as pre:
        return pre(items, on_error=on_error)


def map_detections(outputs: dict, letterboxes: Iterable[Letterbox], class_names: Sequence[str],
                   category_ids: Sequence[int]) -> list[Detections]:
    """Runtime outputs (``num_dets``, ``det_boxes`` in canvas pixels, ...) -> one
    :class:`Detections` per image in original pixels with dataset ids and names."""
    names = list(class_names)
    cats = np.asarray(list(category_ids), dtype=np.int64)
    out = []
    for i, lb in enumerate(letterboxes):
        boxes, scores, classes = unpack_detections(outputs, i)
        if len(classes) and (classes.min() < 0 or classes.max() >= len(cats)):
            raise SwdetError(f"model output: class index {int(classes.max())} outside the model's "
                             f"{len(cats)} classes (is model.json the right one for this model?)")
        out.append(Detections(lb.to_original(boxes) if len(boxes) else np.zeros((0, 4)), scores, classes,
                              cats[classes], [names[c] for c in classes]))
    return out
