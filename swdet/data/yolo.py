"""YOLO txt labels -> COCO JSON (``swdet data from-yolo``).

YOLO layout: one ``.txt`` per image, same relative path under the labels folder
(``images/a/b.jpg`` <-> ``labels/a/b.txt``), one object per line::

    class cx cy w h            # all but class normalized to [0, 1] by the image width/height
    class x1 y1 x2 y2 ... xn yn  # segmentation polygon (normalized); converted to its box

Conversion rules:

- Images are :func:`~swdet.data.image.list_images` of ``images_dir`` (recursive, sorted); ``file_name``
  is the path relative to ``images_dir``; ``id`` counts from 1. Width/height come from the file
  header with EXIF rotation applied (what :func:`~swdet.data.image.load_image` returns). An image
  whose header cannot be read is skipped with a warning.
- A missing label file, or an empty one, is an image with no boxes.
- Category ids are ``1..C`` in the order of ``names`` (YOLO class ``k`` -> id ``k + 1``).
- Pixel box: ``x = (cx - w/2)·W``, ``y = (cy - h/2)·H``, width ``w·W``, height ``h·H``, clipped to
  the image; ``area`` = box area; ``iscrowd`` = 0.
- Malformed lines are skipped and reported with one :class:`~swdet.data.coco.DataWarning` per
  kind, with a count and the first ``file:line``: wrong number of values, non-numeric or non-finite
  values, class id not an integer in ``0..C-1``, zero or negative size, box entirely outside the
  image. Label files with no matching image are reported too.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Sequence

from swdet.errors import SwdetError

from .coco import DataWarning
from .image import ImageDecodeError, image_size, list_images

__all__ = ["convert_yolo", "read_names"]

_MESSAGES = {
    "unreadable_image": "skipped {n} images whose header cannot be read (e.g. {ex})",
    "values": "skipped {n} label lines with a wrong number of values (e.g. {ex})",
    "non_numeric": "skipped {n} label lines with non-numeric or non-finite values (e.g. {ex})",
    "bad_class": "skipped {n} label lines with a class id that is not an integer in 0..{c} (e.g. {ex})",
    "size": "skipped {n} label lines with zero or negative box size (e.g. {ex})",
    "outside": "skipped {n} label lines with boxes entirely outside the image (e.g. {ex})",
    "orphan_label": "ignored {n} label files with no matching image (e.g. {ex})",
    "unreadable_label": "treated {n} unreadable label files as empty (e.g. {ex})",
}


def read_names(names: Sequence[str] | str | os.PathLike) -> list[str]:
    """Class names from a list, a ``data.yaml`` (``names:`` list or ``{index: name}`` map), a text
    file with one name per line, or a comma-separated string."""
    if isinstance(names, (list, tuple)):
        out = [str(n).strip() for n in names]
    else:
        text = os.fspath(names)
        path = Path(text)
        if path.is_file():
            out = _names_from_file(path)
        elif path.suffix.lower() in (".yaml", ".yml", ".txt", ".names") or os.sep in text:
            raise SwdetError(f"{text}: names file not found")
        else:
            out = [n.strip() for n in text.split(",")]
    if not out or any(not n for n in out):
        raise SwdetError(f"{names}: class names must be a non-empty list of non-empty names")
    if len(set(out)) != len(out):
        raise SwdetError(f"{names}: duplicate class names")
    return out


def _names_from_file(path: Path) -> list[str]:
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise SwdetError(f"{path}: invalid YAML{where}") from None
        names = data.get("names") if isinstance(data, dict) else None
        if isinstance(names, dict):
            try:
                keys = sorted(int(k) for k in names)
            except (TypeError, ValueError):
                raise SwdetError(f"{path}: 'names' keys must be class indices 0..C-1") from None
            if keys != list(range(len(keys))):
                raise SwdetError(f"{path}: 'names' keys must be 0..C-1 without gaps")
            return [str(names[k] if k in names else names[str(k)]) for k in keys]
        if isinstance(names, list):
            return [str(n) for n in names]
        raise SwdetError(f"{path}: no 'names' list or map")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SwdetError(f"{path}: cannot read names ({e})") from None
    return [ln.strip() for ln in lines if ln.strip()]


def _parse_line(parts: list[str], num_classes: int):
    """-> (kind of problem or None, class, (cx, cy, w, h) normalized)."""
    if len(parts) != 5 and not (len(parts) >= 7 and len(parts) % 2 == 1):
        return "values", None, None
    try:
        values = [float(p) for p in parts]
    except ValueError:
        return "non_numeric", None, None
    if not all(math.isfinite(v) for v in values):
        return "non_numeric", None, None
    c = values[0]
    if c != int(c) or not 0 <= int(c) < num_classes:
        return "bad_class", None, None
    if len(parts) == 5:
        cx, cy, w, h = values[1:]
    else:
        xs, ys = values[1::2], values[2::2]
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    if w <= 0 or h <= 0:
        return "size", None, None
    return None, int(c), (cx, cy, w, h)


def convert_yolo(
    images_dir: str | os.PathLike,
    labels_dir: str | os.PathLike,
    names: Sequence[str] | str | os.PathLike,
    out_json: str | os.PathLike,
) -> dict:
    """Convert a YOLO-labelled image folder to one COCO JSON (rules in the module docstring).

    Returns ``{"out", "images", "annotations", "categories", "images_without_labels",
    "skipped_lines", "skipped_images"}``.
    """
    from swdet.artifact import atomic_write_json

    images_dir, labels_dir, out_json = Path(images_dir), Path(labels_dir), Path(out_json)
    if not images_dir.is_dir():
        raise SwdetError(f"{images_dir}: image directory not found")
    if not labels_dir.is_dir():
        raise SwdetError(f"{labels_dir}: label directory not found")
    class_names = read_names(names)
    C = len(class_names)
    counts: dict[str, int] = {}
    examples: dict[str, str] = {}

    def note(kind: str, ex: str) -> None:
        counts[kind] = counts.get(kind, 0) + 1
        examples.setdefault(kind, ex)

    files = list_images(images_dir)
    images, anns = [], []
    without_labels = 0
    matched_labels = set()
    for path in files:
        rel = path.relative_to(images_dir)
        try:
            w, h = image_size(path)
        except ImageDecodeError as e:
            note("unreadable_image", str(e))
            continue
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": rel.as_posix(), "width": w, "height": h})
        label = labels_dir / rel.with_suffix(".txt")
        matched_labels.add(label.resolve())
        if not label.is_file():
            without_labels += 1
            continue
        try:
            lines = label.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            note("unreadable_label", f"{label}: {e}")
            without_labels += 1
            continue
        for ln, line in enumerate(lines, start=1):
            parts = line.split()
            if not parts:
                continue
            kind, c, box = _parse_line(parts, C)
            if kind is not None:
                note(kind, f"{label}:{ln}")
                continue
            cx, cy, bw, bh = box
            x0 = min(max((cx - bw / 2) * w, 0.0), w)
            y0 = min(max((cy - bh / 2) * h, 0.0), h)
            x1 = min(max((cx + bw / 2) * w, 0.0), w)
            y1 = min(max((cy + bh / 2) * h, 0.0), h)
            if x1 <= x0 or y1 <= y0:
                note("outside", f"{label}:{ln}")
                continue
            bbox = [round(x0, 3), round(y0, 3), round(x1 - x0, 3), round(y1 - y0, 3)]
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": c + 1, "bbox": bbox,
                         "area": round(bbox[2] * bbox[3], 3), "iscrowd": 0})
    for label in sorted(labels_dir.rglob("*.txt")):
        if label.resolve() not in matched_labels and label.name != "classes.txt":
            note("orphan_label", str(label))
    if not images:
        raise SwdetError(f"{images_dir}: none of the {len(files)} image files could be read")

    for kind, n in counts.items():
        msg = _MESSAGES[kind].format(n=n, ex=examples[kind], c=C - 1)
        warnings.warn(f"{labels_dir}: {msg}", DataWarning, stacklevel=2)

    data = {
        "info": {"description": f"converted from YOLO labels in {labels_dir}"},
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": [{"id": k + 1, "name": n, "supercategory": ""} for k, n in enumerate(class_names)],
    }
    atomic_write_json(out_json, data, indent=None)
    line_kinds = ("values", "non_numeric", "bad_class", "size", "outside")
    return {
        "out": str(out_json),
        "images": len(images),
        "annotations": len(anns),
        "categories": C,
        "images_without_labels": without_labels,
        "skipped_lines": sum(counts.get(k, 0) for k in line_kinds),
        "skipped_images": counts.get("unreadable_image", 0),
    }
