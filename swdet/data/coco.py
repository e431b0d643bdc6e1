"""COCO-format detection dataset: validation at load time, letterboxing, training augmentation.

:class:`CocoDetection` reads a COCO ``instances_*.json`` (indexed with pycocotools) and an image
folder and returns ``(image, target)`` pairs in the letterboxed canvas every runtime uses
(:mod:`swdet.data.letterbox`).

One policy for a bad annotation file (docs/design.md, "Data flow" 1), for training and for
evaluation alike (:func:`swdet.evaluation.load_coco` reads through :func:`read_coco_json` and
:func:`clean_for_evaluation`): a problem with the *file* is fatal, one line naming it; a
problem with a *record* is recoverable: the record is skipped (or repaired), counted, and
reported once per kind. Unreadable images are recoverable too, until most of them fail.

Validation at load time
-----------------------
Fatal problems raise :class:`~swdet.errors.SwdetError` with one line naming the file: missing
annotation file or image folder, JSON syntax error, a top level that is not an object, no
``annotations`` key, no images, no categories, duplicate category ids.

Recoverable problems are skipped (or repaired) and reported with ONE :class:`DataWarning` per kind,
with a count and an example, e.g. ``instances_train.json: skipped 3 annotations with zero-size
boxes (e.g. id 17)``; the counts are also in :attr:`CocoDetection.load_report`. Each annotation is
counted under the first problem it has, in this order:

==================  =====================================================================
kind                what happens
==================  =====================================================================
``bad_image_entry`` image entry without an integer ``id`` or a ``file_name``: skipped
``duplicate_image`` later image entries that repeat an id: skipped (annotations go to the first)
``image_size``      image entry without a valid width/height: read from the file header
                    (skipped when that fails)
``malformed``       annotation that is not an object, or whose ``bbox`` is not 4 numbers
``no_image``        annotation whose ``image_id`` names no (kept) image: skipped
``unknown_category`` ``category_id`` not among the categories: skipped
``nonfinite``       NaN or infinite box values: skipped
``negative_size``   width or height < 0: skipped
``zero_size``       width or height == 0: skipped
``outside``         box entirely outside the image: skipped
``clipped``         box partly outside the image (by more than 1 px): clipped to the image
``crowd``           ``iscrowd=1``: kept for evaluation (:attr:`CocoDetection.coco`), left out
                    of training targets
``unreadable``      (only with ``validate_images``) image that fails to decode: skipped
==================  =====================================================================

Boxes that stick out by at most 1 px (rounding in real datasets) are clipped silently. Images
without boxes are kept and give empty targets.

Unreadable images at ``__getitem__`` time
-----------------------------------------
In training a missing or corrupt image is replaced deterministically by the next index
(``i+1, i+2, ...``). In evaluation (``train=False``) it is not replaced (that would predict
another image twice): a blank padding canvas is returned with an empty target whose
``"unreadable"`` is ``True``, and the caller drops that image's detections. Either way
a :class:`DataWarning` names the file, and the shared counter :attr:`CocoDetection.skipped_images`
(readable from the main process while DataLoader workers run) goes up. When at least 20 images
have been tried and more than half of them failed, ``SwdetError("... most images unreadable")``
is raised. ``validate_images`` moves the check to load time: ``"header"`` opens every file and
parses its header (cheap; finds missing and non-image files, not truncation), ``"full"`` or
``True`` decodes every image (finds truncation too; costs one decode per image, run on threads).

Training augmentation (``train=True``)
--------------------------------------
With ``u`` four uniforms drawn from a generator seeded by ``(seed, epoch, index)``:

1. horizontal flip when ``u0 < hflip``: ``x1' = W - x2``, ``x2' = W - x1``;
2. scale jitter: ``s = fit · (lo + (hi - lo)·u1)`` with ``fit = S / max(H, W)``;
3. when the resized image exceeds the ``S x S`` canvas, a crop window at
   ``(ox, oy) = (⌊u2·max(0, ⌊W·s⌉ - S)⌋, ⌊u3·max(0, ⌊H·s⌉ - S)⌋)``; content beyond the canvas is cut
   and boxes map as ``b' = b·s - (ox, oy, ox, oy)``, clipped to the visible image content;
4. a box is dropped when its clipped area < ``min_visible`` (0.3) of its unclipped area or a
   clipped side < ``min_box_size`` (2 px).

The sample therefore depends only on ``(seed, epoch, index)``: identical for any worker count,
and resumable. Pass the key ``(epoch, index)`` to ``__getitem__`` (what the training sampler of
:mod:`swdet.data.loader` does, so persistent workers see the right epoch), or an ``int`` index,
which uses the epoch last given to :meth:`CocoDetection.set_epoch`.

Without training, ``s = fit``, no flip, no crop: exactly the inference letterbox.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from swdet.errors import SwdetError

from .image import ImageDecodeError, image_size, load_image
from .letterbox import PAD_VALUE
from .transforms import AugmentConfig, augment_sample, letterbox_sample, to_chw_tensor

__all__ = ["CocoDetection", "DataWarning", "read_coco_json"]


class DataWarning(UserWarning):
    """A recoverable data problem (skipped annotation, unreadable image, malformed label line)."""


# Kind -> message template ({n} count, {ex} example).
_KIND_MESSAGES = {
    "bad_image_entry": "skipped {n} image entries without an integer id or a file_name (e.g. {ex})",
    "bad_image_id": "skipped {n} image entries without an integer id (e.g. {ex})",
    "incomplete": "skipped {n} annotations without an image_id, a category_id or a 4-number bbox (e.g. {ex})",
    "duplicate_image": "skipped {n} image entries with duplicate image ids (e.g. {ex})",
    "image_size": "read width/height from the file for {n} image entries without them (e.g. {ex})",
    "image_size_failed": "skipped {n} images without width/height whose file is unreadable (e.g. {ex})",
    "malformed": "skipped {n} malformed annotations (not an object or bbox not 4 numbers) (e.g. {ex})",
    "no_image": "skipped {n} annotations pointing to no image (e.g. {ex})",
    "unknown_category": "skipped {n} annotations with unknown category ids (e.g. {ex})",
    "nonfinite": "skipped {n} annotations with NaN or infinite boxes (e.g. {ex})",
    "negative_size": "skipped {n} annotations with negative-size boxes (e.g. {ex})",
    "zero_size": "skipped {n} annotations with zero-size boxes (e.g. {ex})",
    "outside": "skipped {n} annotations with boxes entirely outside the image (e.g. {ex})",
    "clipped": "clipped {n} boxes that extend outside the image (e.g. {ex})",
    "crowd": "ignored {n} crowd annotations (iscrowd=1) in training targets (e.g. {ex})",
    "duplicate_annotation_id": "renumbered {n} annotations with missing or duplicate ids (e.g. {ex})",
    "unreadable": "skipped {n} unreadable images (e.g. {ex})",
}

# Boxes may stick out of the image by this much (rounding) before a "clipped" warning.
_CLIP_TOLERANCE = 1.0
# "Most images unreadable": after this many tries, more than this fraction failed.
_UNREADABLE_MIN_TRIED = 20
_UNREADABLE_FRACTION = 0.5
# Counter slots: 0 = main process, 1 + worker id (mod) for DataLoader workers.
_COUNTER_SLOTS = 64


class _Report:
    """Counts problems by kind, remembers the first example, emits one warning per kind."""

    def __init__(self, name: str):
        self.name = name
        self.counts: dict[str, int] = {}
        self.examples: dict[str, str] = {}

    def add(self, kind: str, example: str, n: int = 1) -> None:
        if n <= 0:
            return
        self.counts[kind] = self.counts.get(kind, 0) + int(n)
        self.examples.setdefault(kind, example)

    def messages(self) -> list[str]:
        return [
            f"{self.name}: " + _KIND_MESSAGES[k].format(n=n, ex=self.examples[k])
            for k, n in self.counts.items()
        ]

    def emit(self) -> None:
        for msg in self.messages():
            warnings.warn(msg, DataWarning, stacklevel=4)


def read_coco_json(ann_file: str | os.PathLike) -> dict:
    """Read and structurally check a COCO detection JSON; raises one-line ``SwdetError``s.

    Checks: the file exists and parses, the top level is an object with an ``images`` list that
    is not empty, an ``annotations`` list, and a non-empty ``categories`` list.
    """
    path = Path(ann_file)
    if not path.exists():
        raise SwdetError(f"{path}: annotation file not found")
    if path.is_dir():
        raise SwdetError(f"{path}: is a directory, expected a COCO annotation JSON file")
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise SwdetError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise SwdetError(f"{path}: not a UTF-8 JSON file ({e.reason})") from None
    except OSError as e:
        raise SwdetError(f"{path}: cannot read ({e.strerror or e})") from None
    if not isinstance(data, dict):
        raise SwdetError(f"{path}: top level is a {type(data).__name__}, expected a COCO object "
                         "with images, annotations and categories")
    if "annotations" not in data:
        raise SwdetError(f"{path}: no 'annotations' key (not a COCO detection file)")
    if not isinstance(data["annotations"], list):
        raise SwdetError(f"{path}: 'annotations' is not a list")
    images = data.get("images")
    if not isinstance(images, list) or not images:
        raise SwdetError(f"{path}: no images (the 'images' list is missing or empty)")
    cats = data.get("categories")
    if not isinstance(cats, list) or not cats:
        raise SwdetError(f"{path}: no categories (the 'categories' list is missing or empty)")
    return data


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError
    return float(v)


class CocoDetection(torch.utils.data.Dataset):
    """A COCO detection dataset in letterboxed canvas coordinates.

    Args:
        ann_file: COCO ``instances_*.json``.
        image_dir: folder the images' ``file_name`` are relative to.
        imgsz: canvas side ``S`` (square).
        train: apply the training augmentation (flip, scale jitter, crop) and drop crowd boxes;
            otherwise the exact inference letterbox.
        hflip: horizontal flip probability (train only).
        scale_jitter: ``(lo, hi)`` multipliers of the fitted scale (train only).
        min_visible: drop a box whose visible area after the crop is below this fraction.
        min_box_size: drop a box with a visible side below this many canvas pixels (train only).
        seed: seed of the augmentation; sample ``i`` of epoch ``e`` uses ``(seed, e, i)``.
        validate_images: ``False`` (default: find bad images lazily), ``"header"`` (open every
            file's header now) or ``"full"``/``True`` (decode every image now).
        warn: emit the load-time :class:`DataWarning` s (the counts are kept either way).

    Attributes:
        category_ids: sorted dataset category ids; the contiguous label of ``category_ids[k]`` is ``k``.
        class_names: names in the same order.
        cat_id_to_label: ``{dataset id: label}``.
        image_ids: image ids in dataset order (sorted).
        load_report: ``{kind: count}`` of the load-time problems (see the module docstring).
        problems: the warning lines, as emitted.

    ``__getitem__(i)`` returns ``(image, target)``: ``image`` uint8 ``[3, S, S]`` RGB and
    ``target = {"boxes": float32 [n, 4] xyxy canvas pixels, "labels": int64 [n] in 0..C-1,
    "image_id": int, "orig_size": (h, w), "scale": float, "file": str, "unreadable": bool,
    "annotated_size": (h, w) as the annotation file gives it, "warnings": [lines a DataLoader
    worker could not show itself]}``
    (``unreadable`` is only ever ``True`` in evaluation mode, see the module docstring).
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        imgsz: int = 640,
        train: bool = False,
        *,
        hflip: float = 0.5,
        scale_jitter: tuple[float, float] = (0.75, 1.25),
        min_visible: float = 0.3,
        min_box_size: float = 2.0,
        seed: int = 0,
        validate_images: bool | str = False,
        warn: bool = True,
    ):
        self.ann_file = str(ann_file)
        self.image_dir = str(image_dir)
        self.imgsz = int(imgsz)
        self.train = bool(train)
        self.seed = int(seed)
        self.epoch = 0
        if self.imgsz < 8:
            raise SwdetError(f"imgsz={imgsz!r}: must be at least 8")
        self.augment = AugmentConfig(float(hflip), tuple(float(v) for v in scale_jitter),
                                     float(min_visible), float(min_box_size))
        if validate_images is True:
            validate_images = "full"
        if validate_images not in (False, None, "header", "full"):
            raise SwdetError(f"validate_images={validate_images!r}: use False, 'header' or 'full'")

        if not Path(self.image_dir).is_dir():
            what = "not a directory" if Path(self.image_dir).exists() else "image directory not found"
            raise SwdetError(f"{self.image_dir}: {what}")
        data = read_coco_json(self.ann_file)
        self._report = _Report(Path(self.ann_file).name)
        clean = self._validate(data)
        if validate_images:
            self._validate_files(clean, full=(validate_images == "full"))
        if not clean["images"]:
            raise SwdetError(f"{self.ann_file}: no usable images left after validation")
        self._build(clean)
        self.load_report = dict(self._report.counts)
        self.problems = self._report.messages()
        if warn:
            self._report.emit()
        # Shared across DataLoader workers: [slot, (tried, failed)].
        self._counters = torch.zeros(_COUNTER_SLOTS, 2, dtype=torch.int64).share_memory_()

    # ------------------------------------------------------------------ load-time validation
    def _validate(self, data: dict) -> dict:
        return validate_coco(data, self.ann_file, self.image_dir, self._report)

    def _validate_files(self, clean: dict, full: bool) -> None:
        def check(im: dict) -> str | None:
            path = os.path.join(self.image_dir, im["file_name"])
            try:
                if full:
                    load_image(path)
                else:
                    image_size(path)
            except ImageDecodeError as e:
                return str(e)
            return None

        workers = min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(check, clean["images"]))
        bad_ids = {im["id"] for im, r in zip(clean["images"], results) if r is not None}
        errors = [r for r in results if r is not None]
        if errors:
            self._report.add("unreadable", errors[0], len(errors))
            clean["images"] = [im for im in clean["images"] if im["id"] not in bad_ids]
            clean["annotations"] = [a for a in clean["annotations"] if a["image_id"] not in bad_ids]

    def _build(self, clean: dict) -> None:
        from pycocotools.coco import COCO

        coco = COCO()
        coco.dataset = clean
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
        self._coco = coco
        self.category_ids = [c["id"] for c in clean["categories"]]
        self.class_names = [c["name"] for c in clean["categories"]]
        self.cat_id_to_label = {cid: k for k, cid in enumerate(self.category_ids)}
        self.image_ids = [im["id"] for im in clean["images"]]
        self._files = [im["file_name"] for im in clean["images"]]
        self._sizes = np.array([(im["height"], im["width"]) for im in clean["images"]], dtype=np.int64)
        self._boxes: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        for iid in self.image_ids:
            anns = [a for a in coco.imgToAnns.get(iid, []) if not a["iscrowd"]]
            if anns:
                b = np.array([a["bbox"] for a in anns], dtype=np.float32)
                b[:, 2:] += b[:, :2]
                lab = np.array([self.cat_id_to_label[a["category_id"]] for a in anns], dtype=np.int64)
            else:
                b = np.zeros((0, 4), dtype=np.float32)
                lab = np.zeros((0,), dtype=np.int64)
            self._boxes.append(b)
            self._labels.append(lab)

    # ------------------------------------------------------------------ public helpers
    @property
    def coco(self):
        """The pycocotools ``COCO`` index of the cleaned annotations (crowd boxes included), for
        evaluation. Only available in the process that built the dataset (not in workers)."""
        if self._coco is None:
            raise RuntimeError("the COCO index is not carried into DataLoader worker processes")
        return self._coco

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    @property
    def num_boxes(self) -> int:
        """Boxes kept after validation (crowd boxes included: evaluation counts them)."""
        return len(self.coco.dataset["annotations"]) if self._coco is not None else \
            int(sum(len(b) for b in self._boxes))

    def require_boxes(self, purpose: str = "train on") -> None:
        """A one-line error naming the annotation file when it has no box left to ``purpose``."""
        if self.num_boxes == 0:
            skipped = sum(n for k, n in self.load_report.items() if k not in ("clipped", "crowd", "image_size"))
            why = f" ({skipped} skipped as invalid)" if skipped else " (its 'annotations' list is empty)"
            raise SwdetError(f"{self.ann_file}: no boxes to {purpose}{why}")

    @property
    def skipped_images(self) -> int:
        """Images that failed to decode in ``__getitem__`` so far, over all worker processes."""
        return int(self._counters[:, 1].sum())

    @property
    def images_tried(self) -> int:
        """Image decodes attempted in ``__getitem__`` so far, over all worker processes."""
        return int(self._counters[:, 0].sum())

    def set_epoch(self, epoch: int) -> None:
        """Epoch used by integer keys (``dataset[i]``); keys ``(epoch, i)`` carry their own."""
        self.epoch = int(epoch)

    def image_path(self, i: int) -> str:
        return os.path.join(self.image_dir, self._files[i])

    def image_info(self, i: int) -> dict:
        """``{"id", "file", "height", "width"}`` of image ``i`` as the annotation file gives them."""
        h, w = (int(v) for v in self._sizes[i])
        return {"id": self.image_ids[i], "file": self.image_path(i), "height": h, "width": w}

    def gt_boxes(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (float32 ``[n, 4]`` xyxy) and labels of image ``i`` in the *inference* canvas
        (``scale = S / max(h, w)``, no augmentation, crowd excluded), without decoding the image.
        For statistics over the training set (e.g. anchor matching counts)."""
        h, w = self._sizes[i]
        scale = self.imgsz / max(int(h), int(w))
        return self._boxes[i] * np.float32(scale), self._labels[i].copy()

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_coco"] = None  # large, and only needed in the main process
        return state

    # ------------------------------------------------------------------ sample access
    def __getitem__(self, key):
        if isinstance(key, (tuple, list)):
            epoch, index = int(key[0]), int(key[1])
        else:
            epoch, index = self.epoch, int(key)
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        index %= n
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, epoch, index])
        u = rng.random(4)
        slot = self._slot()
        last_error = None
        problems: list[str] = []  # in a worker: carried back with the sample (swdet.report.relay)
        for attempt in range(min(n, 1000) if self.train else 1):
            j = (index + attempt) % n
            path = self.image_path(j)
            self._counters[slot, 0] += 1
            try:
                img = load_image(path)
            except ImageDecodeError as e:
                self._counters[slot, 1] += 1
                last_error = e
                what = "using the next image" if self.train else "returning a blank image, no predictions counted"
                if slot:
                    problems.append(f"{e}; skipped ({what})")
                else:
                    warnings.warn(f"{e}; skipped ({what})", DataWarning, stacklevel=2)
                self._check_unreadable()
                continue
            image, target = self._sample(j, img, u)
            target["warnings"] = problems
            return image, target
        if not self.train:
            image, target = self._blank(index)
            target["warnings"] = problems
            return image, target
        raise SwdetError(f"{self.ann_file}: no readable image found (last: {last_error})")

    def _blank(self, i: int):
        """Evaluation stand-in for an unreadable image: a padding canvas and an empty target with
        ``unreadable=True`` (so each image is predicted once; the caller drops its detections)."""
        h, w = (int(v) for v in self._sizes[i])
        canvas = np.full((self.imgsz, self.imgsz, 3), PAD_VALUE, dtype=np.uint8)
        target = {
            "boxes": torch.zeros((0, 4), dtype=torch.float32),
            "labels": torch.zeros((0,), dtype=torch.int64),
            "image_id": int(self.image_ids[i]),
            "orig_size": (h, w),
            "scale": self.imgsz / max(h, w),
            "file": self.image_path(i),
            "unreadable": True,
            "annotated_size": (h, w),
        }
        return to_chw_tensor(canvas), target

    def _slot(self) -> int:
        info = torch.utils.data.get_worker_info()
        return 0 if info is None else 1 + info.id % (_COUNTER_SLOTS - 1)

    def _check_unreadable(self) -> None:
        tried, failed = (int(v) for v in self._counters.sum(0))
        if tried >= _UNREADABLE_MIN_TRIED and failed > _UNREADABLE_FRACTION * tried:
            raise SwdetError(
                f"{self.image_dir}: most images unreadable ({failed} of {tried} tried failed; "
                f"check the image folder matches {Path(self.ann_file).name})"
            )

    def _sample(self, j: int, img: Image.Image, u: np.ndarray):
        w, h = img.size
        boxes = self._boxes[j].astype(np.float64)
        ah, aw = (int(v) for v in self._sizes[j])
        if (w, h) != (aw, ah) and len(boxes):
            # The file disagrees with the annotation's width/height: rescale the boxes.
            boxes = boxes * np.array([w / aw, h / ah, w / aw, h / ah])
        if self.train:
            canvas, b, labels, scale = augment_sample(img, boxes, self._labels[j], self.imgsz, u, self.augment)
        else:
            canvas, b, labels, scale = letterbox_sample(img, boxes, self._labels[j], self.imgsz)
        target = {
            "boxes": torch.from_numpy(b.astype(np.float32).reshape(-1, 4)),
            "labels": torch.from_numpy(np.asarray(labels, dtype=np.int64).copy()),
            "image_id": int(self.image_ids[j]),
            "orig_size": (int(h), int(w)),
            "scale": float(scale),
            "file": self.image_path(j),
            "unreadable": False,
            "annotated_size": (ah, aw),
        }
        return to_chw_tensor(canvas), target

    def __repr__(self) -> str:
        return (f"CocoDetection({Path(self.ann_file).name!r}, {len(self)} images, "
                f"{self.num_classes} classes, imgsz={self.imgsz}, train={self.train})")


# ----------------------------------------------------------------------------------------------
# Validation at load time (module docstring), in steps


def _categories(data: dict, ann_file) -> dict[int, dict]:
    """Category id -> entry; a missing or duplicate id is fatal (ambiguous labels)."""
    cats = {}
    for k, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or not _is_int(c.get("id")):
            raise SwdetError(f"{ann_file}: category entry #{k} has no integer 'id'")
        cid = int(c["id"])
        if cid in cats:
            raise SwdetError(f"{ann_file}: duplicate category id {cid}")
        cats[cid] = {**c, "id": cid, "name": str(c.get("name", cid))}
    return cats


def _images(data: dict, image_dir, rep: _Report) -> dict[int, dict]:
    """Image id -> entry with integer width and height; bad entries skipped and counted."""
    images: dict[int, dict] = {}
    for k, im in enumerate(data["images"]):
        if not isinstance(im, dict) or not _is_int(im.get("id")) or not isinstance(im.get("file_name"), str) \
                or not im["file_name"]:
            rep.add("bad_image_entry", f"entry #{k}")
            continue
        iid = int(im["id"])
        if iid in images:
            rep.add("duplicate_image", f"image id {iid}")
            continue
        w, h = im.get("width"), im.get("height")
        ok = _is_int(w) or isinstance(w, float)
        ok = ok and (_is_int(h) or isinstance(h, float)) and w > 0 and h > 0
        if not ok:
            try:
                w, h = image_size(os.path.join(image_dir, im["file_name"]))
            except ImageDecodeError as e:
                rep.add("image_size_failed", str(e))
                continue
            rep.add("image_size", f"image id {iid}")
        images[iid] = {**im, "id": iid, "width": int(round(w)), "height": int(round(h))}
    return images


@dataclass
class _Annotations:
    """The annotations as arrays, for vectorized checks."""

    boxes: np.ndarray  # [n, 4] x, y, w, h (NaN where malformed)
    malformed: np.ndarray
    img_ids: np.ndarray
    cat_ids: np.ndarray
    has_img: np.ndarray
    has_cat: np.ndarray
    crowd: np.ndarray
    names: list[str]  # how each is named in a warning


def _extract(anns_in: list, images: dict, cats: dict) -> _Annotations:
    """The annotations as arrays (boxes, ids, flags), checked vectorized by :func:`_reject`."""
    n = len(anns_in)
    boxes = np.full((n, 4), np.nan, dtype=np.float64)
    malformed = np.zeros(n, dtype=bool)
    img_ids = np.full(n, -1, dtype=np.int64)
    cat_ids = np.full(n, -1, dtype=np.int64)
    has_img = np.zeros(n, dtype=bool)
    has_cat = np.zeros(n, dtype=bool)
    crowd = np.zeros(n, dtype=bool)
    names = []
    for k, a in enumerate(anns_in):
        if not isinstance(a, dict):
            malformed[k] = True
            names.append(f"annotation #{k}")
            continue
        names.append(f"id {a['id']}" if "id" in a else f"annotation #{k}")
        bb = a.get("bbox")
        try:
            if not isinstance(bb, (list, tuple)) or len(bb) != 4:
                raise TypeError
            boxes[k] = [_number(v) for v in bb]
        except (TypeError, ValueError):
            malformed[k] = True
            continue
        iid, cid = a.get("image_id"), a.get("category_id")
        if _is_int(iid) and int(iid) in images:
            has_img[k] = True
            img_ids[k] = int(iid)
        if _is_int(cid) and int(cid) in cats:
            has_cat[k] = True
            cat_ids[k] = int(cid)
        crowd[k] = bool(a.get("iscrowd", 0))
    return _Annotations(boxes, malformed, img_ids, cat_ids, has_img, has_cat, crowd, names)


def _reject(ann: _Annotations, images: dict, rep: _Report) -> tuple[np.ndarray, np.ndarray]:
    """``(bad [n], clipped xyxy [n, 4])``: each annotation counted under its first problem, in
    the order of the module docstring's table; boxes clipped to their image."""
    boxes, names, img_ids, n = ann.boxes, ann.names, ann.img_ids, len(ann.names)
    bad = np.zeros(n, dtype=bool)

    def take(kind: str, mask: np.ndarray) -> None:
        nonlocal bad
        new = mask & ~bad
        if new.any():
            rep.add(kind, names[int(np.flatnonzero(new)[0])], int(new.sum()))
        bad |= new

    take("malformed", ann.malformed)
    take("no_image", ~ann.has_img)
    take("unknown_category", ~ann.has_cat)
    take("nonfinite", ~np.isfinite(boxes).all(axis=1))
    with np.errstate(invalid="ignore"):
        take("negative_size", (boxes[:, 2] < 0) | (boxes[:, 3] < 0))
        take("zero_size", (boxes[:, 2] == 0) | (boxes[:, 3] == 0))
    # Clip to the image.
    wh = np.zeros((n, 2), dtype=np.float64)
    ok_img = ~bad
    if ok_img.any():
        sizes = {iid: (im["width"], im["height"]) for iid, im in images.items()}
        wh[ok_img] = np.array([sizes[int(i)] for i in img_ids[ok_img]], dtype=np.float64).reshape(-1, 2)
    xyxy = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
    with np.errstate(invalid="ignore"):
        clipped = np.concatenate([np.clip(xyxy[:, :2], 0, wh), np.clip(xyxy[:, 2:], 0, wh)], axis=1)
        take("outside", ~((clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])))
        moved = np.abs(clipped - xyxy).max(axis=1) > _CLIP_TOLERANCE
    take_note = moved & ~bad
    if take_note.any():
        rep.add("clipped", names[int(np.flatnonzero(take_note)[0])], int(take_note.sum()))
    crowd_ok = ann.crowd & ~bad
    if crowd_ok.any():
        rep.add("crowd", names[int(np.flatnonzero(crowd_ok)[0])], int(crowd_ok.sum()))
    return bad, clipped


def _cleaned(data: dict, images: dict, cats: dict, ann: _Annotations, bad: np.ndarray, clipped: np.ndarray,
             rep: _Report) -> dict:
    """The cleaned dataset (what pycocotools indexes and evaluation sees)."""
    anns_in, names, img_ids, cat_ids, crowd = data["annotations"], ann.names, ann.img_ids, ann.cat_ids, ann.crowd
    anns = []
    used_ids: set[int] = set()
    renumber = []
    for k in np.flatnonzero(~bad):
        a = anns_in[k]
        x1, y1, x2, y2 = (float(v) for v in clipped[k])
        out = {**a, "image_id": int(img_ids[k]), "category_id": int(cat_ids[k]),
               "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": int(crowd[k])}
        if "area" not in out or not isinstance(out["area"], (int, float)) or not math.isfinite(out["area"]):
            out["area"] = (x2 - x1) * (y2 - y1)
        aid = a.get("id")
        if not _is_int(aid) or int(aid) in used_ids:
            renumber.append(len(anns))
        else:
            used_ids.add(int(aid))
        anns.append(out)
    if renumber:
        rep.add("duplicate_annotation_id", names[int(np.flatnonzero(~bad)[renumber[0]])], len(renumber))
        next_id = max(used_ids, default=0) + 1
        for j in renumber:
            anns[j]["id"] = next_id
            next_id += 1
    return {
        "info": data.get("info", {}),
        "licenses": data.get("licenses", []),
        "images": [images[i] for i in sorted(images)],
        "annotations": anns,
        "categories": [cats[c] for c in sorted(cats)],
    }


def validate_coco(data: dict, ann_file, image_dir, rep: _Report) -> dict:
    """The load-time validation of the module docstring: fatal problems raise, recoverable ones
    are counted in ``rep``; returns the cleaned dataset."""
    cats = _categories(data, ann_file)
    images = _images(data, image_dir, rep)
    ann = _extract(data["annotations"], images, cats)
    bad, clipped = _reject(ann, images, rep)
    return _cleaned(data, images, cats, ann, bad, clipped, rep)


def clean_for_evaluation(data: dict, ann_file) -> dict:
    """The same policy for the ground truth of an evaluation (:func:`swdet.evaluation.load_coco`),
    which needs no image files: categories as in training (a missing or duplicate id is fatal);
    image entries without an integer id, and annotations that are not objects or lack an
    ``image_id``, a ``category_id`` or a 4-number ``bbox``, are skipped and reported once per
    kind (:class:`DataWarning`); annotations without a unique id are renumbered; a missing
    ``area`` becomes ``w·h`` and a missing ``iscrowd`` 0 (pycocotools needs both)."""
    rep = _Report(Path(ann_file).name)
    cats = _categories(data, ann_file)
    images = []
    for k, im in enumerate(data["images"]):
        if isinstance(im, dict) and _is_int(im.get("id")):
            images.append(im)
        else:
            rep.add("bad_image_id", f"entry #{k}")
    anns, used, renumber = [], set(), []
    for k, a in enumerate(data["annotations"]):
        name = f"id {a['id']}" if isinstance(a, dict) and "id" in a else f"annotation #{k}"
        try:
            if not isinstance(a, dict) or "image_id" not in a or "category_id" not in a:
                raise TypeError
            bbox = a.get("bbox")
            if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
                raise TypeError
            w, h = _number(bbox[2]), _number(bbox[3])
        except (TypeError, ValueError):
            rep.add("incomplete", name)
            continue
        out = {**a, "area": a.get("area", w * h), "iscrowd": a.get("iscrowd", 0)}
        if not _is_int(a.get("id")) or int(a["id"]) in used:
            renumber.append(len(anns))
        else:
            used.add(int(a["id"]))
        anns.append(out)
    if renumber:
        rep.add("duplicate_annotation_id", f"annotation #{renumber[0]}", len(renumber))
        next_id = max(used, default=0) + 1
        for j in renumber:
            anns[j]["id"] = next_id
            next_id += 1
    if not images:
        raise SwdetError(f"{ann_file}: no images with an integer id")
    rep.emit()
    return {**data, "images": images, "annotations": anns, "categories": [cats[c] for c in sorted(cats)]}
