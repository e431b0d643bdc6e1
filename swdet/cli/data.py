"""``swdet data ...``: dataset commands.

User errors are raised as :class:`~swdet.errors.SwdetError`; the main CLI turns them into one
line and a non-zero exit.
"""

from __future__ import annotations

import warnings

import click

from swdet.cli.common import CONTEXT

__all__ = ["data"]


def _show_warnings(caught: list[warnings.WarningMessage]) -> None:
    from swdet.data.coco import DataWarning

    for w in caught:
        if issubclass(w.category, DataWarning):
            click.echo(f"warning: {w.message}", err=True)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


@click.group("data", context_settings=CONTEXT)
def data() -> None:
    """Create or convert COCO-format datasets."""


@data.command("synth", context_settings=CONTEXT)
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--train", "n_train", default=2000, show_default=True, type=click.IntRange(min=0),
              help="Number of training images.")
@click.option("--val", "n_val", default=300, show_default=True, type=click.IntRange(min=0),
              help="Number of validation images.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Seed; the same seed writes the same bytes.")
@click.option("--preset", default="default", show_default=True, type=click.Choice(["easy", "default", "hard"]),
              help="Difficulty: easy (smoke tests), default (the embedded dataset), hard (small, "
                   "textured, rotated objects and more clutter).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Processes to render with (output does not depend on it).")
def synth_cmd(out: str, n_train: int, n_val: int, seed: int, preset: str, workers: int) -> None:
    """Write the synthetic shapes dataset (6 classes, COCO format).

    Writes OUT/train/*.jpg, OUT/val/*.jpg and OUT/annotations/instances_{train,val}.json.

    \b
    Example:
      swdet data synth --out data/shapes --train 2000 --val 300 --seed 0
      swdet data synth --out data/shapes_hard --preset hard
    """
    from swdet.data.synth import write_synthetic_dataset

    s = write_synthetic_dataset(out, n_train, n_val, seed, workers=workers, config=preset)
    click.echo(
        f"wrote {s['train']['images']} train images ({s['train']['boxes']} boxes) and "
        f"{s['val']['images']} val images ({s['val']['boxes']} boxes), "
        f"{len(s['categories'])} classes, preset {s['preset']}, to {s['out_dir']} in {s['seconds']:.1f}s"
    )


@data.command("from-yolo", context_settings=CONTEXT)
@click.argument("images", type=click.Path(file_okay=False))
@click.argument("labels", type=click.Path(file_okay=False))
@click.option("--names", required=True,
              help="Class names: a data.yaml, a text file with one name per line, or 'a,b,c'.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="COCO annotation JSON to write.")
def from_yolo_cmd(images: str, labels: str, names: str, out: str) -> None:
    """Convert YOLO txt labels (class cx cy w h, normalized) to a COCO JSON.

    IMAGES and LABELS are matching folders (images/a.jpg <-> labels/a.txt). Category ids are
    1..C in the order of --names; images without a label file get no boxes; malformed lines are
    skipped and counted.

    \b
    Example:
      swdet data from-yolo coco128/images/train2017 coco128/labels/train2017 \\
          --names coco128.yaml --out coco128/annotations/instances_train.json
    """
    from swdet.data.coco import DataWarning
    from swdet.data.yolo import convert_yolo

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        s = convert_yolo(images, labels, names, out)
    _show_warnings(caught)
    extra = f", skipped {s['skipped_lines']} malformed lines" if s["skipped_lines"] else ""
    click.echo(
        f"wrote {s['out']}: {s['images']} images ({s['images_without_labels']} without labels), "
        f"{s['annotations']} boxes, {s['categories']} classes{extra}"
    )
