"""A tuning split: hold out part of a COCO-format *train* split as a validation set, so recipe
settings are chosen without looking at the real val split (which stays for the reported numbers).

    python benchmarks/holdout.py --data data/synth --holdout 300 --out data/synth_tune

writes ``<out>/annotations/instances_train.json`` (the rest of train) and
``instances_val.json`` (``--holdout`` images drawn at random with ``--seed``), and links
``<out>/train`` and ``<out>/val`` to the original train image folder. Then tune on it, e.g.

    python benchmarks/methods.py --data data/synth_tune --tag tune --seeds 0 --iters 600 \\
        --methods "focal;swn@methods.swn.lr=0.0001;swn;swn@methods.swn.lr=0.01" --jobs 2 --accuracy-only
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path


def split(data: Path, holdout: int, out: Path, seed: int = 0) -> tuple[int, int]:
    ann = json.loads((data / "annotations" / "instances_train.json").read_text())
    ids = sorted(im["id"] for im in ann["images"])
    if not 0 < holdout < len(ids):
        raise SystemExit(f"--holdout {holdout}: must be between 1 and {len(ids) - 1} ({len(ids)} train images)")
    held = set(random.Random(seed).sample(ids, holdout))
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for name, keep in (("train", lambda i: i not in held), ("val", lambda i: i in held)):
        part = {**ann, "images": [im for im in ann["images"] if keep(im["id"])],
                "annotations": [a for a in ann["annotations"] if keep(a["image_id"])]}
        (out / "annotations" / f"instances_{name}.json").write_text(json.dumps(part))
        link = out / name
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(os.path.relpath((data / "train").resolve(), out.resolve()), link)
    return len(ids) - holdout, holdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="dataset root with annotations/instances_train.json")
    ap.add_argument("--holdout", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    n_train, n_val = split(args.data, args.holdout, args.out, args.seed)
    print(f"{args.out}: {n_train} train, {n_val} held-out val images (from {args.data}/train)")


if __name__ == "__main__":
    main()
