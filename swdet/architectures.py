"""The architectures swdet trains and deploys: one table, one row per architecture.

Every place that depends on the architecture reads its row here instead of testing the name:
the config check (:func:`swdet.config.validate`: the known names, the FPN levels allowed), the
model builder (:func:`swdet.models.build_model`), the trainer's detector loss
(:func:`swdet.train.retina_loss.build_detector_loss`) and the ONNX exporter
(:func:`swdet.export.onnx_export.build_onnx`).

A row names its parts as ``"module:attribute"`` strings, imported by the stage that uses them
when it uses them (:func:`load`): this module imports nothing (it is read by the config layer,
which must stay light) and core never imports a stage.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from swdet.errors import SwdetError


@dataclass(frozen=True)
class Architecture:
    name: str
    model: str  # swdet.models: the detector nn.Module class, built from a ModelConfig
    train_loss: str  # swdet.train: the detector loss (anchor assignment + the weighted loss)
    onnx_graph: str  # swdet.export: builds the complete ONNX graph (network + post-processing)
    min_levels: tuple[int, int]  # the lowest and highest allowed model.min_level
    level_rule: str  # that rule in words, for the config error
    two_stage: bool


ARCHITECTURES: dict[str, Architecture] = {
    "retinanet": Architecture(
        name="retinanet", model="swdet.models.retinanet:RetinaNet",
        train_loss="swdet.train.retina_loss:RetinaNetLoss",
        onnx_graph="swdet.export.retinanet_export:build_retinanet_onnx",
        min_levels=(3, 7), level_rule="3 <= min <= max <= 7", two_stage=False),
    "faster_rcnn": Architecture(
        name="faster_rcnn", model="swdet.models.faster_rcnn:FasterRCNN",
        train_loss="swdet.train.rcnn_loss:FasterRCNNLoss",
        onnx_graph="swdet.export.rcnn_export:build_rcnn_onnx",
        min_levels=(2, 5), level_rule="2 <= min <= 5, min <= max <= 7", two_stage=True),
}
MAX_LEVEL = 7


def architecture(name: str) -> Architecture:
    """The row of ``name``; a one-line error naming the known ones otherwise."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise SwdetError(f"unknown architecture {name!r}; choose {' or '.join(ARCHITECTURES)}") from None


def levels_ok(arch: Architecture, min_level: int, max_level: int) -> bool:
    lo, hi = arch.min_levels
    return lo <= min_level <= hi and min_level <= max_level <= MAX_LEVEL


def load(ref: str):
    """The object a row names (``"package.module:attribute"``), imported now."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)
