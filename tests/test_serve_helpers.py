"""Shared builders for the serve tests (no tests here).

- :func:`make_artifact`: a random-weights ``retinanet_tiny`` artifact (3 classes, imgsz 128).
- :func:`make_toy_onnx`: a hand-built ONNX graph that follows the output contract (``num_dets``,
  ``det_boxes``, ``det_scores``, ``det_classes``) with values computed from each image, and
  optional swdet metadata; fast to build and to run, for the error paths and the batcher.
- :func:`export_onnx`: the real exporter (``swdet.export``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CLASS_NAMES = ["cat", "dog", "bird"]
CATEGORY_IDS = [1, 3, 7]


def make_artifact(out: Path, imgsz: int = 128, seed: int = 0, prior: float = 0.2) -> Path:
    import torch

    import swdet.artifact as A
    import swdet.config as C
    from swdet.models import build_model

    cfg = C.model_preset("retinanet_tiny")
    cfg.num_classes = len(CLASS_NAMES)
    cfg.imgsz = imgsz
    torch.manual_seed(seed)
    model = build_model(cfg)
    model.head.set_prior(prior)
    meta = A.build_metadata(cfg, C.PostprocessConfig(), class_names=CLASS_NAMES, category_ids=CATEGORY_IDS,
                            method=["focal"])
    A.save_artifact(out, model, meta)
    return Path(out)


def toy_meta(imgsz: int = 64, batch=None, score_threshold: float = 0.05) -> dict:
    import swdet.artifact as A
    import swdet.config as C

    cfg = C.model_preset("retinanet_tiny")
    cfg.num_classes = len(CLASS_NAMES)
    cfg.imgsz = imgsz
    post = C.PostprocessConfig(score_threshold=score_threshold)
    meta = A.build_metadata(cfg, post, class_names=CLASS_NAMES, category_ids=CATEGORY_IDS, method=["focal"])
    meta["export"] = {"score_threshold": score_threshold, "nms": "onnx", "precision": "fp32",
                      "batch": batch if batch else "dynamic", "opset": 18, "imgsz": imgsz}
    return meta


def make_toy_onnx(path: Path, imgsz: int = 64, batch: int | None = None, meta: dict | None | bool = True,
                  k: int = 4) -> Path:
    """``s_b = mean(image_b) / 255``; ``num_dets_b = 1 + [s_b > 0.5]``; ``det_scores_b = s_b·[1, 1/2, ..]``;
    ``det_boxes_b,j = s_b·(j+1)·[1, 2, 3, 4]``; ``det_classes_b,j = j mod 3``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    bdim = batch if batch else "B"
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [bdim, 3, imgsz, imgsz])
    outs = [
        helper.make_tensor_value_info("num_dets", TensorProto.INT32, [bdim, 1]),
        helper.make_tensor_value_info("det_boxes", TensorProto.FLOAT, [bdim, k, 4]),
        helper.make_tensor_value_info("det_scores", TensorProto.FLOAT, [bdim, k]),
        helper.make_tensor_value_info("det_classes", TensorProto.INT32, [bdim, k]),
    ]
    inits = [
        numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"),
        numpy_helper.from_array(np.array([1.0 / 255], np.float32), "inv255"),
        numpy_helper.from_array(np.array([0.5], np.float32), "half"),
        numpy_helper.from_array((1.0 / np.arange(1, k + 1, dtype=np.float32))[None], "decay"),
        numpy_helper.from_array(((np.arange(1, k + 1, dtype=np.float32)[:, None]
                                  * np.arange(1, 5, dtype=np.float32)[None])[None]), "boxbase"),
        numpy_helper.from_array(np.array([1], np.int32), "one"),
        numpy_helper.from_array((np.arange(k, dtype=np.int32) % 3)[None], "classes_row"),
        numpy_helper.from_array(np.array([2], np.int64), "ax2"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["images", "axes"], ["m"], keepdims=1),  # [B,1,1,1]
        helper.make_node("Mul", ["m", "inv255"], ["s4"]),
        helper.make_node("Flatten", ["s4"], ["s"], axis=1),  # [B,1]
        helper.make_node("Mul", ["s", "decay"], ["det_scores"]),  # [B,k]
        helper.make_node("Unsqueeze", ["s", "ax2"], ["s3"]),  # [B,1,1]
        helper.make_node("Mul", ["s3", "boxbase"], ["det_boxes"]),  # [B,k,4]
        helper.make_node("Greater", ["s", "half"], ["gt"]),
        helper.make_node("Cast", ["gt"], ["gti"], to=TensorProto.INT32),
        helper.make_node("Add", ["gti", "one"], ["num_dets"]),
        helper.make_node("Cast", ["s"], ["zero_f"], to=TensorProto.INT32),  # 0 (s < 1)
        helper.make_node("Mul", ["zero_f", "classes_row"], ["zeros_k"]),
        helper.make_node("Add", ["zeros_k", "classes_row"], ["det_classes"]),
    ]
    graph = helper.make_graph(nodes, "toy", [x], outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    if meta is not False:
        m = toy_meta(imgsz, batch) if meta is True else meta
        helper.set_model_props(model, {"swdet": json.dumps(m)})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def toy_expected(images: np.ndarray, k: int = 4) -> dict:
    s = images.reshape(len(images), -1).astype(np.float64).mean(1) / 255.0
    return {
        "num_dets": (1 + (s > 0.5)).astype(np.int32)[:, None],
        "det_scores": (s[:, None] / np.arange(1, k + 1)).astype(np.float32),
        "det_boxes": (s[:, None, None] * (np.arange(1, k + 1)[:, None] * np.arange(1, 5)[None])[None]).astype(np.float32),
        "det_classes": np.tile(np.arange(k, dtype=np.int32) % 3, (len(images), 1)),
    }


def export_onnx(artifact: Path, out: Path, **kwargs) -> Path:
    """The real exporter (post-processing baked in). Imported directly: a broken export stage
    must fail the serve tests, not skip them."""
    from swdet.export.onnx_export import export_onnx as _export_onnx

    _export_onnx(artifact, out, **kwargs)
    return Path(out)


def write_image(path: Path, w: int = 96, h: int = 72, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return Path(path)


def write_coco(root: Path, n: int = 4, seed: int = 0) -> tuple[Path, Path]:
    """A tiny COCO dataset (``n`` random images, one box each) under ``root``."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    imgs, anns = [], []
    rng = np.random.default_rng(seed)
    for i in range(n):
        w, h = (96, 72) if i % 2 == 0 else (72, 96)
        write_image(images / f"{i}.png", w, h, seed + i)
        imgs.append({"id": i + 1, "file_name": f"{i}.png", "width": w, "height": h})
        x, y = float(rng.uniform(0, w / 2)), float(rng.uniform(0, h / 2))
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": CATEGORY_IDS[i % 3],
                     "bbox": [x, y, w / 3, h / 3], "area": w * h / 9, "iscrowd": 0})
    cats = [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, CLASS_NAMES)]
    ann = root / "ann.json"
    ann.write_text(json.dumps({"images": imgs, "annotations": anns, "categories": cats}))
    return ann, images
