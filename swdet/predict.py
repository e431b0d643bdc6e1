"""``swdet predict``: detections for image files and folders, with optional drawings."""

from __future__ import annotations

from pathlib import Path

from swdet.errors import SwdetError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


def collect_images(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            raise SwdetError(f"{p}: no such file or directory")
    if not files:
        raise SwdetError(f"{', '.join(map(str, paths))}: no images found")
    return files


def predict_files(rt, paths: list[Path], out_json: Path, *, batch_size: int = 8, save_images: Path | None = None,
                  progress: bool = True) -> dict:
    """Run ``rt`` over the images; write ``out_json``; return counts."""
    from tqdm import tqdm

    from swdet.artifact import atomic_write_json
    from swdet.data.image import ImageDecodeError, load_image
    from swdet.inference import letterbox_batch, unpack_detections

    files = collect_images(paths)
    records: list[dict] = []
    skipped: list[str] = []
    names, cat_ids = rt.class_names, rt.category_ids
    if save_images:
        save_images.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(files), disable=not progress, unit="img", desc="predict", leave=False)
    for start in range(0, len(files), batch_size):
        chunk, images = [], []
        for f in files[start:start + batch_size]:
            try:
                images.append(load_image(f))
                chunk.append(f)
            except ImageDecodeError:
                skipped.append(str(f))
        bar.update(len(files[start:start + batch_size]))
        if not images:
            continue
        batch, lbs = letterbox_batch(images, rt.imgsz)
        out = rt.infer(batch)
        for i, (f, im, lb) in enumerate(zip(chunk, images, lbs)):
            boxes, scores, classes = unpack_detections(out, i)
            boxes = lb.to_original(boxes)
            for b, s, c in zip(boxes, scores, classes):
                records.append({"file": str(f), "bbox": [round(float(b[0]), 2), round(float(b[1]), 2),
                                                         round(float(b[2] - b[0]), 2), round(float(b[3] - b[1]), 2)],
                                "score": round(float(s), 5), "category_id": int(cat_ids[c]),
                                "category": names[c]})
            if save_images:
                from swdet.visualize import draw_detections

                drawn = draw_detections(im, boxes, scores, [names[c] for c in classes])
                drawn.save(save_images / (f.stem + ".jpg"), quality=90)
    bar.close()
    if len(skipped) == len(files):
        raise SwdetError(f"none of the {len(files)} images could be read (e.g. {skipped[0]})")
    atomic_write_json(out_json, records)
    return {"images": len(files) - len(skipped), "detections": len(records), "skipped": len(skipped),
            "skipped_files": skipped}
