"""The embedded default dataset: synthetic shapes in COCO format (``swdet data synth``).

Layout written by :func:`write_synthetic_dataset`::

    DIR/train/000001.jpg ...            DIR/annotations/instances_train.json
    DIR/val/000001.jpg ...              DIR/annotations/instances_val.json

The distribution
----------------
Six classes told apart by **shape only** (colour and texture are random for every class), with
deliberately non-contiguous COCO category ids so the id -> label mapping is exercised:

    1 ellipse   2 rectangle   3 triangle   5 star (5 or 6 points)   8 cross (plus sign)   13 ring

The numbers below are the ``"default"`` preset (:class:`SynthConfig` fields in brackets; the
``"hard"`` preset's values after the slash):

- **Images**: width and height each uniform in 240..400 px (aspect 0.6..1.67, so letterboxing
  pads either side) [``min_side``, ``max_side``]. JPEG, quality 90 [``jpeg_quality``].
- **Background**: a linear gradient between two random colours at a random angle, plus
  low-frequency colour noise (a 3..8 cell random grid upsampled bicubically, amplitude 0..45) and,
  in 30% of images, faint stripes.
- **Unlabeled clutter** (hard negatives) [``clutter`` 0.5 / 1.0 scales the maximum counts], before
  the objects: up to 2 / 4 straight lines (1..3 px), 2 / 3 partial arcs (40..250 degrees, never a
  closed ring), 1 / 2 lumpy blobs (radius with 2nd/3rd/5th harmonics, so never an ellipse) and
  7 / 14 specks of at most 4 px; after the objects, 15% / 30% of images get 1..2 thin lines
  across everything.
- **Objects**: 1..8 / 1..12 per image [``max_objects``]. Size ``s = sqrt(w·h)`` is log-uniform
  in ``[16, 0.6·min(W, H)]`` / ``[10, 0.7·min(W, H)]`` px [``min_object``, ``max_object_frac``]
  (about 30% / 40% of the boxes under 32 px, skewed small like COCO), aspect ratio ``w/h``
  log-uniform in ``[1/2.5, 2.5]`` / ``[1/3, 3]`` [``max_aspect``]; 25% / 50% of the objects are
  rotated by a uniform angle [``rotate_prob``] (the box is that of the rotated shape). Centres are
  uniform over the image, so objects near a border are truncated. Fill: solid, or with
  probability 0.3 / 0.65 [``texture_prob``] stripes, checkerboard, gradient or speckle (4:3:3:3);
  the main colour is at least 80 (RGB distance) away from the background under it when possible;
  30% / 35% get a 1 px outline in another colour [``outline_prob``]. Objects are drawn in random
  order, or (70% of images) from large to small.
- **Labels**: every object's mask is rasterized; a per-pixel "topmost object" map gives its
  visible pixels. An object is annotated when its visible pixels are >= 30% of its full shape
  area [``min_visible``] (this drops objects > 70% occluded *or* < 30% inside the image). Its box
  is the tight box of its shape's pixels inside the image (amodal under occlusion, clipped at the
  border); ``area`` is the visible pixel count; ``iscrowd`` is 0.
- **Degradations**: Gaussian blur (radius 0.3..1.0) in 30% of images [``blur_prob``], then
  Gaussian pixel noise (sigma uniform in 0..6 / 0..8 [``noise_max``]) in 70% [``noise_prob``].

The ``"easy"`` preset (smoke tests) has solid, unrotated, outline-free shapes of at least 24 px,
at most 6 per image, no clutter and no blur.

Every image is drawn from its own generator ``numpy.random.default_rng([seed, split, i])``
(split 0 = train, 1 = val), so output is byte-identical for a seed regardless of ``workers``, and
different seeds give different data. Nothing time-dependent is written.
"""

from __future__ import annotations

import io
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from swdet.errors import SwdetError

__all__ = ["CATEGORIES", "PRESETS", "SynthConfig", "write_synthetic_dataset", "render_image"]

#: ``(COCO category id, name)`` of the synthetic classes; ids deliberately not 0..C-1.
CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "ellipse"), (2, "rectangle"), (3, "triangle"), (5, "star"), (8, "cross"), (13, "ring"),
)
_SPLITS = {"train": 0, "val": 1}


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the synthetic distribution (defaults are the embedded dataset's, preset
    ``"default"``; see :data:`PRESETS` for ``"easy"`` and ``"hard"``)."""

    min_side: int = 240
    max_side: int = 400
    max_objects: int = 8
    min_object: float = 16.0  # smallest sqrt(w*h) in pixels
    max_object_frac: float = 0.6  # largest sqrt(w*h) as a fraction of min(W, H)
    max_aspect: float = 2.5  # w/h in [1/max_aspect, max_aspect]
    min_visible: float = 0.3
    jpeg_quality: int = 90
    clutter: float = 0.5  # multiplies the maximum count of every clutter kind (0 = none)
    texture_prob: float = 0.3  # probability of a non-solid fill
    rotate_prob: float = 0.25
    outline_prob: float = 0.3
    blur_prob: float = 0.3
    noise_prob: float = 0.7
    noise_max: float = 6.0

    def __post_init__(self):
        if not 16 <= self.min_side <= self.max_side:
            raise SwdetError(f"min_side={self.min_side}, max_side={self.max_side}: need 16 <= min <= max")
        if not 1 <= self.max_objects:
            raise SwdetError(f"max_objects={self.max_objects}: must be at least 1")
        if not 2 <= self.min_object < self.max_object_frac * self.min_side:
            raise SwdetError(f"min_object={self.min_object}: need 2 <= min_object < "
                             "max_object_frac * min_side")
        for name in ("texture_prob", "rotate_prob", "outline_prob", "blur_prob", "noise_prob", "min_visible"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise SwdetError(f"{name}={v}: must be in [0, 1]")


#: Named difficulty levels. ``"default"`` is the embedded dataset; ``"hard"`` has smaller and more
#: numerous objects, heavy texture, rotation and clutter (detectors differ more, and a tiny CPU
#: model learns it far more slowly); ``"easy"`` is a smoke-test level (solid shapes, no clutter).
PRESETS: dict[str, SynthConfig] = {
    "easy": SynthConfig(max_objects=6, min_object=24.0, max_aspect=2.0, clutter=0.0, texture_prob=0.0,
                        rotate_prob=0.0, outline_prob=0.0, blur_prob=0.0, noise_prob=0.5, noise_max=4.0),
    "default": SynthConfig(),
    "hard": SynthConfig(max_objects=12, min_object=10.0, max_object_frac=0.7, max_aspect=3.0, clutter=1.0,
                        texture_prob=0.65, rotate_prob=0.5, outline_prob=0.35, noise_max=8.0),
}


# ---------------------------------------------------------------------------------- shapes
def _circle(n: int = 64) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


_UNIT_CIRCLE = _circle()


def _shape_polygons(cls: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Outer polygon (and inner hole for the ring) of class index ``cls`` in ``[-1, 1]^2``."""
    if cls == 0:  # ellipse
        return _UNIT_CIRCLE, None
    if cls == 1:  # rectangle
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64), None
    if cls == 2:  # triangle: apex anywhere along the top edge
        a = rng.uniform(-1.0, 1.0)
        return np.array([[a, -1.0], [1.0, 1.0], [-1.0, 1.0]]), None
    if cls == 3:  # star
        k = int(rng.integers(5, 7))
        inner = rng.uniform(0.38, 0.55)
        t = np.arange(2 * k) * (math.pi / k) - math.pi / 2
        r = np.where(np.arange(2 * k) % 2 == 0, 1.0, inner)
        return np.stack([r * np.cos(t), r * np.sin(t)], axis=1), None
    if cls == 4:  # cross (plus sign)
        t = rng.uniform(0.28, 0.45)
        return np.array([[-t, -1], [t, -1], [t, -t], [1, -t], [1, t], [t, t], [t, 1], [-t, 1],
                         [-t, t], [-1, t], [-1, -t], [-t, -t]], dtype=np.float64), None
    # ring
    return _UNIT_CIRCLE, _UNIT_CIRCLE * rng.uniform(0.45, 0.7)


def _place(poly: np.ndarray, half_w: float, half_h: float, angle: float, cx: float, cy: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    x = poly[:, 0] * half_w
    y = poly[:, 1] * half_h
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _rand_color(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float32)


def _texture(rng: np.random.Generator, h: int, w: int, base: np.ndarray, textured: float = 0.65) -> np.ndarray:
    """An ``[h, w, 3]`` float32 fill: solid, stripes, checker, gradient or speckle."""
    t = textured / 0.65
    kind = rng.choice(5, p=[1.0 - textured, 0.2 * t, 0.15 * t, 0.15 * t, 0.15 * t])
    if kind == 0:
        return np.broadcast_to(base, (h, w, 3))
    other = _rand_color(rng)
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    if kind == 1:
        a = rng.uniform(0, math.pi)
        period = rng.uniform(3.0, 12.0)
        sel = (np.floor((xs * math.cos(a) + ys * math.sin(a)) / period) % 2) == 0
    elif kind == 2:
        p = float(rng.integers(3, 11))
        sel = ((np.floor(xs / p) + np.floor(ys / p)) % 2) == 0
    elif kind == 3:
        a = rng.uniform(0, 2 * math.pi)
        t = xs * math.cos(a) + ys * math.sin(a)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        return base + (other - base) * t[..., None]
    else:
        return base + np.float32(25.0) * rng.standard_normal((h, w, 3), dtype=np.float32)
    return np.where(sel[..., None], base, other)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    c1, c2 = _rand_color(rng), _rand_color(rng)
    a = rng.uniform(0, 2 * math.pi)
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    t = xs * math.cos(a) + ys * math.sin(a)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    bg = c1 + (c2 - c1) * t[..., None]
    gh, gw = (int(v) for v in rng.integers(3, 9, 2))
    grid = rng.integers(0, 256, (gh, gw, 3), dtype=np.uint8)
    low = np.asarray(Image.fromarray(grid).resize((w, h), Image.BICUBIC), dtype=np.float32)
    bg = bg + (low - 127.5) * (rng.uniform(0, 45) / 127.5)
    if rng.random() < 0.3:
        a2 = rng.uniform(0, math.pi)
        period = rng.uniform(6, 30)
        bg = bg + rng.uniform(5, 20) * np.sin((xs * math.cos(a2) + ys * math.sin(a2)) * (2 * math.pi / period))[..., None]
    return bg


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int, amount: float = 1.0) -> None:
    def col():
        return tuple(int(v) for v in rng.integers(0, 256, 3))

    def count(most: int) -> int:
        return int(rng.integers(0, round(most * amount) + 1))

    for _ in range(count(4)):
        pts = rng.uniform([0, 0, 0, 0], [w, h, w, h])
        draw.line([(pts[0], pts[1]), (pts[2], pts[3])], fill=col(), width=int(rng.integers(1, 4)))
    for _ in range(count(3)):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(5, 60, 2)
        start = rng.uniform(0, 360)
        draw.arc([cx - rx, cy - ry, cx + rx, cy + ry], start, start + rng.uniform(40, 250),
                 fill=col(), width=int(rng.integers(1, 4)))
    for _ in range(count(2)):
        r0 = rng.uniform(5, 40)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
        amp = rng.uniform(0.1, 0.25, 3)
        ph = rng.uniform(0, 2 * math.pi, 3)
        r = r0 * (1 + amp[0] * np.cos(2 * t + ph[0]) + amp[1] * np.cos(3 * t + ph[1]) + amp[2] * np.cos(5 * t + ph[2]))
        draw.polygon([(float(x), float(y)) for x, y in zip(cx + r * np.cos(t), cy + r * np.sin(t))], fill=col())
    for _ in range(count(14)):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.5, 2.0)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col())


def _erode(m: np.ndarray) -> np.ndarray:
    e = m.copy()
    e[1:, :] &= m[:-1, :]
    e[:-1, :] &= m[1:, :]
    e[:, 1:] &= m[:, :-1]
    e[:, :-1] &= m[:, 1:]
    e[0, :] = e[-1, :] = False
    e[:, 0] = e[:, -1] = False
    return e


def render_image(rng: np.random.Generator, cfg: SynthConfig = SynthConfig()) -> tuple[Image.Image, list[dict]]:
    """Draw one synthetic image; returns ``(RGB image, annotations)`` where each annotation is
    ``{"category_id", "bbox": [x, y, w, h], "area"}`` (pixels, COCO convention)."""
    W = int(rng.integers(cfg.min_side, cfg.max_side + 1))
    H = int(rng.integers(cfg.min_side, cfg.max_side + 1))
    bg = _background(rng, H, W)
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    _clutter(ImageDraw.Draw(img), rng, W, H, cfg.clutter)
    arr = np.asarray(img, dtype=np.float32).copy()
    owner = np.zeros((H, W), dtype=np.int16)  # 0 = background, k + 1 = object k on top

    n = int(rng.integers(1, cfg.max_objects + 1))
    cls = rng.integers(0, len(CATEGORIES), n)
    smax = cfg.max_object_frac * min(W, H)
    sizes = np.exp(rng.uniform(math.log(cfg.min_object), math.log(smax), n))
    aspects = np.exp(rng.uniform(-math.log(cfg.max_aspect), math.log(cfg.max_aspect), n))
    order = np.argsort(-sizes, kind="stable") if rng.random() < 0.7 else rng.permutation(n)

    objects = []  # (class index, full area, tight box in image)
    for k in order:
        outer, inner = _shape_polygons(int(cls[k]), rng)
        hw, hh = sizes[k] * math.sqrt(aspects[k]) / 2, sizes[k] / math.sqrt(aspects[k]) / 2
        angle = rng.uniform(-math.pi, math.pi) if rng.random() < cfg.rotate_prob else 0.0
        cx, cy = rng.uniform(0, W), rng.uniform(0, H)
        pts = _place(outer, hw, hh, angle, cx, cy)
        x0, y0 = (int(math.floor(v)) for v in pts.min(0))
        x1, y1 = (int(math.ceil(v)) + 1 for v in pts.max(0))
        mask_img = Image.new("L", (x1 - x0, y1 - y0), 0)
        d = ImageDraw.Draw(mask_img)
        d.polygon([(float(x - x0), float(y - y0)) for x, y in pts], fill=255)
        if inner is not None:
            ipts = _place(inner, hw, hh, angle, cx, cy)
            d.polygon([(float(x - x0), float(y - y0)) for x, y in ipts], fill=0)
        full = np.asarray(mask_img) > 0
        total = int(full.sum())
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
        if total < 20 or ix1 <= ix0 or iy1 <= iy0:
            continue
        m = full[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
        if not m.any():
            continue
        region = arr[iy0:iy1, ix0:ix1]
        under = region[m].mean(0)
        base = _rand_color(rng)
        for _ in range(5):
            if float(np.linalg.norm(base - under)) >= 80.0:
                break
            base = _rand_color(rng)
        tex = _texture(rng, iy1 - iy0, ix1 - ix0, base, cfg.texture_prob)
        region[m] = tex[m]
        if rng.random() < cfg.outline_prob:
            edge = m & ~_erode(m)
            region[edge] = _rand_color(rng)
        owner[iy0:iy1, ix0:ix1][m] = len(objects) + 1
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        box = (ix0 + int(cols[0]), iy0 + int(rows[0]), ix0 + int(cols[-1]) + 1, iy0 + int(rows[-1]) + 1)
        objects.append((int(cls[k]), total, box))

    visible = np.bincount(owner.ravel(), minlength=len(objects) + 1)
    anns = []
    for j, (c, total, (bx0, by0, bx1, by1)) in enumerate(objects):
        vis = int(visible[j + 1])
        if vis < cfg.min_visible * total:
            continue
        anns.append({"category_id": CATEGORIES[c][0], "bbox": [bx0, by0, bx1 - bx0, by1 - by0], "area": vis})

    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rng.random() < 0.3 * min(cfg.clutter, 1.0 / 0.3):
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 3))):
            p = rng.uniform([0, 0, 0, 0], [W, H, W, H])
            d.line([(p[0], p[1]), (p[2], p[3])], fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=1)
    if rng.random() < cfg.blur_prob:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    if rng.random() < cfg.noise_prob:
        sigma = rng.uniform(0.0, cfg.noise_max)
        noisy = np.asarray(img, dtype=np.float32) + np.float32(sigma) * rng.standard_normal((H, W, 3), dtype=np.float32)
        img = Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))
    return img, anns


# ---------------------------------------------------------------------------------- writing
def _render_task(args) -> tuple[int, int, int, list[dict]]:
    seed, split_code, index, out_path, cfg = args
    rng = np.random.default_rng([seed, split_code, index])
    img, anns = render_image(rng, cfg)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=cfg.jpeg_quality)
    with open(out_path, "wb") as f:
        f.write(buf.getvalue())
    return index, img.width, img.height, anns


def write_synthetic_dataset(
    out_dir: str | os.PathLike,
    n_train: int = 2000,
    n_val: int = 300,
    seed: int = 0,
    *,
    workers: int = 1,
    config: SynthConfig | str = "default",
) -> dict:
    """Write the synthetic shapes dataset (see the module docstring) under ``out_dir``.

    Returns a summary ``{"out_dir", "seed", "seconds", "categories": [{"id", "name"}],
    "train": {"images", "boxes", "image_dir", "ann_file"}, "val": {...}}``.
    ``config`` is a :class:`SynthConfig` or a :data:`PRESETS` name. ``workers > 1`` renders in a
    process pool; the bytes written do not depend on it.
    """
    from swdet.artifact import atomic_write_json

    preset = config if isinstance(config, str) else "custom"
    if isinstance(config, str):
        if config not in PRESETS:
            raise SwdetError(f"preset {config!r}: use one of {', '.join(PRESETS)}")
        config = PRESETS[config]
    if n_train < 0 or n_val < 0:
        raise SwdetError(f"n_train={n_train}, n_val={n_val}: must not be negative")
    if n_train + n_val == 0:
        raise SwdetError("n_train + n_val is 0: nothing to write")
    if seed < 0:
        raise SwdetError(f"seed={seed}: must not be negative")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SwdetError(f"{out}: exists and is not a directory")
    t0 = time.perf_counter()
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": cid, "name": name, "supercategory": "shape"} for cid, name in CATEGORIES]
    summary: dict = {"out_dir": str(out), "seed": int(seed), "preset": preset, "categories":
                     [{"id": c["id"], "name": c["name"]} for c in categories]}

    pool = None
    if workers > 1:
        import multiprocessing as mp

        pool = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn").Pool(workers)
    try:
        for split, n in (("train", n_train), ("val", n_val)):
            img_dir = out / split
            img_dir.mkdir(parents=True, exist_ok=True)
            tasks = [(int(seed), _SPLITS[split], i, str(img_dir / f"{i + 1:06d}.jpg"), config) for i in range(n)]
            results = pool.map(_render_task, tasks, chunksize=16) if pool is not None else map(_render_task, tasks)
            images, anns = [], []
            for index, w, h, objs in results:
                image_id = index + 1
                images.append({"id": image_id, "file_name": f"{index + 1:06d}.jpg", "width": w, "height": h})
                for o in objs:
                    anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": o["category_id"],
                                 "bbox": o["bbox"], "area": o["area"], "iscrowd": 0})
            ann_file = out / "annotations" / f"instances_{split}.json"
            atomic_write_json(ann_file, {
                "info": {"description": "swdet synthetic shapes", "version": "1", "seed": int(seed), "split": split,
                         "preset": preset},
                "licenses": [],
                "images": images,
                "annotations": anns,
                "categories": categories,
            }, indent=None)
            summary[split] = {"images": len(images), "boxes": len(anns), "image_dir": str(img_dir),
                              "ann_file": str(ann_file)}
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary
