"""``swdet predict``: detections for image files and folders, with optional drawings.

Decoding, letterboxing and the mapping back to original pixels and dataset category ids are
core's host code (:mod:`swdet.preprocess`), the same for every runtime; an unreadable image is
skipped, counted and listed.
"""

from __future__ import annotations

from pathlib import Path

from swdet.errors import SwdetError


def collect_images(paths: list[Path]) -> list[Path]:
    """Files as given, folders expanded with :func:`swdet.data.image.list_images` (recursive,
    sorted, the core image extensions)."""
    from swdet.data.image import list_images

    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(list_images(p))
        elif p.is_file():
            files.append(p)
        else:
            raise SwdetError(f"{p}: no such file or directory")
    if not files:
        raise SwdetError(f"{', '.join(map(str, paths))}: no images found")
    return files


def predict_files(rt, paths: list[Path], out_json: Path, *, batch_size: int = 8, save_images: Path | None = None,
                  progress: bool = True) -> dict:
    """Run ``rt`` over the images; write ``out_json`` (one record per detection: ``file``,
    ``bbox`` x, y, w, h in original pixels, ``score``, ``category_id``, ``category``); return
    counts."""
    from tqdm import tqdm

    from swdet.artifact import atomic_write_json
    from swdet.preprocess import Preprocessor, map_detections

    files = collect_images(paths)
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
                    _save_drawing(Path(name), d, save_images)
    bar.close()
    if len(skipped) == len(files):
        raise SwdetError(f"none of the {len(files)} images could be read (e.g. {skipped[0]})")
    atomic_write_json(out_json, records)
    return {"images": len(files) - len(skipped), "detections": len(records), "skipped": len(skipped),
            "skipped_files": skipped}


def _save_drawing(path: Path, dets, folder: Path) -> None:
    from swdet.data.image import load_image
    from swdet.visualize import draw_detections

    drawn = draw_detections(load_image(path), dets.boxes, dets.scores, dets.names)
    drawn.save(folder / (path.stem + ".jpg"), quality=90)
