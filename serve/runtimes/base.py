"""The one runtime interface (in the style of Polygraphy's runners).

A runtime is loaded once from a model file and then called on batches::

    rt = load_runtime("model.onnx")
    out = rt.infer(images)   # images: [B, 3, S, S] RGB 0-255 (uint8 or float32), numpy or torch
    out["num_dets"], out["det_boxes"], out["det_scores"], out["det_classes"]   # numpy

Boxes are in input (canvas) pixels; host code (:mod:`swdet.inference`) maps them back to the
original image once, for every runtime. ``meta`` is the model's ``model.json``.
"""

from __future__ import annotations

import numpy as np

OUTPUT_NAMES = ("num_dets", "det_boxes", "det_scores", "det_classes")


class Runtime:
    name: str = "base"
    precision: str = "fp32"

    def __init__(self, meta: dict, source: str):
        self.meta = meta
        self.source = source

    # -- metadata --------------------------------------------------------------------------
    @property
    def imgsz(self) -> int:
        from swdet.artifact import input_size

        return input_size(self.meta)

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["classes"]["names"])

    @property
    def category_ids(self) -> list[int]:
        return [int(c) for c in self.meta["classes"]["category_ids"]]

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def max_batch(self) -> int | None:
        """Largest batch the model accepts (None: unbounded)."""
        return None

    # -- inference -------------------------------------------------------------------------
    def infer(self, images) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __call__(self, images) -> dict[str, np.ndarray]:
        return self.infer(images)

    def synchronize(self) -> None:
        """Wait for queued device work (timing); a no-op on the CPU."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def describe(self) -> dict:
        return {"runtime": self.name, "device": self.device_name, "precision": self.precision,
                "source": self.source, "imgsz": self.imgsz}
