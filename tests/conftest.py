"""Shared fixtures: a small synthetic dataset and a briefly trained tiny run (session-scoped)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# A real COCO-format sample (coco128: annotations/instances_val2017.json + val2017/) for the few
# tests that want real images: the folder named by SWDET_COCO128; those tests skip without it.
COCO128 = Path(os.environ.get("SWDET_COCO128") or "no-coco128-given")
NO_COCO128 = "coco128 not given (set SWDET_COCO128 to its folder)"

# Keep the suite inside 2 cores: no oversubscription from nested thread pools.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """24 train / 12 val synthetic images (the embedded default's generator, small)."""
    from swdet.data.synth import write_synthetic_dataset

    out = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(out, n_train=24, n_val=12, seed=3)
    return out


TINY_TRAIN = ["--model", "retinanet_tiny", "--imgsz", "128", "--batch-size", "4", "--workers", "0",
              "--quiet", "--set", "train.log_every=2", "--set", "train.warmup_iters=2"]


@pytest.fixture(scope="session")
def tiny_run(synth_data, tmp_path_factory) -> Path:
    """A retinanet_tiny run directory trained for 6 iterations at 128 px (weights barely trained)."""
    from swdet.cli import main

    out = tmp_path_factory.mktemp("runs") / "tiny"
    rc = main(["train", "--data", str(synth_data), "--iters", "6", "--out", str(out), *TINY_TRAIN])
    assert rc == 0
    return out


def assert_layer_boundary(code: str, package: str, forbidden: tuple[str, ...]) -> None:
    """``code`` (which prints ``BAD <sorted forbidden modules it loaded>``) runs in a fresh
    interpreter and loads none of ``forbidden``; no ``import`` line under ``package`` names one
    (docs/design.md, Layout: dependencies point one way)."""
    import importlib
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "BAD []" in res.stdout
    for f in Path(importlib.import_module(package).__file__).parent.rglob("*.py"):
        for line in f.read_text().splitlines():
            s = line.strip()
            if s.startswith(("import ", "from ")):
                assert not any(m in s for m in forbidden), f"{f}: {s}"


def model_meta(imgsz: int = 64, names=("a",), **extra) -> dict:
    """A valid ``model.json`` dict (retinanet_tiny at ``imgsz``) for tests that hand-write metadata."""
    from swdet.artifact import build_metadata
    from swdet.config import PostprocessConfig, model_preset

    cfg = model_preset("retinanet_tiny")
    cfg.imgsz, cfg.num_classes = imgsz, len(names)
    meta = build_metadata(cfg, PostprocessConfig(), class_names=list(names),
                          category_ids=list(range(1, len(names) + 1)), method=["focal"])
    return {**meta, **extra}


def load_benchmark(name: str):
    """A script under benchmarks/ (not a package) imported as a module, for its tests."""
    import importlib.util

    import sys

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    if str(path.parent) not in sys.path:  # as running the script has it: its helpers (_results) import
        sys.path.append(str(path.parent))
    spec = importlib.util.spec_from_file_location(f"swdet_bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
