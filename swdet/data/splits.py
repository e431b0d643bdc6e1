"""Dataset discovery: where a split's annotation file and images are under ``--data DIR``
(``swdet train`` and ``swdet eval`` alike)."""

from __future__ import annotations

from pathlib import Path

from swdet.config import DataConfig
from swdet.errors import SwdetError


def find_split(data: DataConfig, split: str) -> tuple[Path, Path]:
    """``(annotation file, image folder)`` for ``train``/``val``: the explicit
    ``{split}_ann``/``{split}_images`` of ``data``, or found under ``data.root`` (``--data DIR``):
    ``DIR/annotations/instances_{split}[2017].json`` with its images in ``DIR/{split}[2017]`` or
    ``DIR/images/{split}[2017]``. One-line errors name what is missing."""
    d = data
    ann, images = (d.train_ann, d.train_images) if split == "train" else (d.val_ann, d.val_images)
    if ann and images:
        return Path(ann), Path(images)
    if not d.root:
        raise SwdetError("no dataset given: pass --data DIR (run `swdet data synth --out DIR` for the "
                         "embedded synthetic default)")
    root = Path(d.root)
    if not root.is_dir():
        raise SwdetError(f"{root}: data directory not found")
    for name in (split, f"{split}2017"):
        a = root / "annotations" / f"instances_{name}.json"
        if a.is_file():
            img = Path(images) if images else root / name
            if not img.is_dir() and (root / "images" / name).is_dir():
                img = root / "images" / name
            if not img.is_dir():
                raise SwdetError(f"{img}: image folder for {a.name} not found")
            return Path(ann) if ann else a, img
    raise SwdetError(f"{root}: no annotations/instances_{split}.json or instances_{split}2017.json")
