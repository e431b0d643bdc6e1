"""``swdet predict``: detections for image files and folders, with optional drawings.

Decoding, letterboxing and the mapping back to original pixels and dataset category ids are
core's host code (:mod:`swdet.preprocess`), the same for every runtime; an unreadable image is
skipped, counted and listed.
"""

from __future__ import annotations

from pathlib import Path

from swdet.errors import SwdetError


# Drawings are written with at least this score unless --draw-threshold says otherwise: the
# model's own threshold (what export bakes in) keeps far more boxes than a picture can show.
DRAW_THRESHOLD = 0.3


def collect_images(paths: list[Path]) -> list[Path]:
    """Files as given, folders expanded with :func:`swdet.data.image.list_images` (recursive,
    sorted, the core image extensions); a file reached twice (given twice, or given and inside a
    given folder) is kept once, where it first appears."""
    from swdet.data.image import list_images

    files: list[Path] = []
    seen: set[Path] = set()
    for p in paths:
        if p.is_dir():
            found = list_images(p)
        elif p.is_file():
            found = [p]
        else:
            raise SwdetError(f"{p}: no such file or directory")
        for f in found:
            key = Path(f).resolve()
            if key not in seen:
                seen.add(key)
                files.append(Path(f))
    if not files:
        raise SwdetError(f"{', '.join(map(str, paths))}: no images found")
    return files


def drawing_names(files: list[Path]) -> dict[Path, Path]:
    """Each file's drawing, relative to the ``--save-images`` folder: its path relative to the
    deepest folder all inputs share, with ``.jpg`` (``a/x.jpg`` and ``b/x.jpg`` ->
    ``a/x.jpg``, ``b/x.jpg``); where two would still collide (``x.png`` and ``x.jpg``) the
    original suffix stays in the name (``x.png.jpg``), then a counter."""
    import os
    from collections import Counter

    resolved = [f.resolve() for f in files]
    root = Path(os.path.commonpath([str(r.parent) for r in resolved]))
    rel = [r.relative_to(root) for r in resolved]
    names = [r.with_suffix(".jpg") for r in rel]
    clash = {n for n, c in Counter(names).items() if c > 1}
    out: dict[Path, Path] = {}
    used: set[Path] = set()
    for f, r, n in zip(files, rel, names):
        if n in clash:
            n = r.with_name(r.name + ".jpg")
        base, k = n, 2
        while n in used:
            n = base.with_name(f"{base.stem}_{k}.jpg")
            k += 1
        used.add(n)
        out[f] = n
    return out


def predict_files(rt, paths: list[Path], out_json: Path, *, batch_size: int = 8, save_images: Path | None = None,
                  progress: bool = True, draw_threshold: float = DRAW_THRESHOLD) -> dict:
    """Run ``rt`` over the images; write ``out_json`` (one record per detection: ``file``,
    ``bbox`` x, y, w, h in original pixels, ``score``, ``category_id``, ``category``); return
    counts. With ``save_images``, each image's detections scoring at least ``draw_threshold``
    are drawn into that folder under a unique name (:func:`drawing_names`); the JSON keeps every
    detection."""
    from tqdm import tqdm

    from swdet.artifact import atomic_write_json
    from swdet.preprocess import Preprocessor, map_detections

    files = collect_images(paths)
    drawings = drawing_names(files) if save_images else {}
    by_name = {str(f): f for f in files}
    records: list[dict] = []
    skipped: list[str] = []
    if save_images:
        save_images.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(files), disable=not progress, unit="img", desc="predict", leave=False)
    with Preprocessor(rt.imgsz) as pre:
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            batch = pre(chunk, names=[str(f) for f in chunk], on_error="skip")
            skipped.extend(name for name, _ in batch.failed)
            bar.update(len(chunk))
            if not len(batch):
                continue
            dets = map_detections(rt.infer(batch.images), batch.letterboxes, rt.class_names, rt.category_ids)
            for name, d in zip(batch.names, dets):
                records.extend(d.to_records(file=name))
                if save_images:
                    _save_drawing(by_name[name], d, save_images / drawings[by_name[name]], draw_threshold)
    bar.close()
    if len(skipped) == len(files):
        raise SwdetError(f"none of the {len(files)} images could be read (e.g. {skipped[0]})")
    atomic_write_json(out_json, records)
    return {"images": len(files) - len(skipped), "detections": len(records), "skipped": len(skipped),
            "skipped_files": skipped}


def _save_drawing(path: Path, dets, out: Path, threshold: float) -> None:
    import io

    from swdet.artifact import atomic_write_bytes
    from swdet.data.image import load_image
    from swdet.visualize import draw_detections

    drawn = draw_detections(load_image(path), dets.boxes, dets.scores, dets.names, score_threshold=threshold)
    buf = io.BytesIO()
    drawn.save(buf, format="JPEG", quality=90)
    atomic_write_bytes(out, buf.getvalue())
