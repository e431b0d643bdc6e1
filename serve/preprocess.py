"""Moved to :mod:`swdet.preprocess` (host code shared by every runtime, by ``swdet predict`` and by
``swdet.calib``, which must not import serve). These names are re-exported so
``from swdet.serve.preprocess import Preprocessor`` goes on working.
"""

from swdet.preprocess import (  # noqa: F401 - re-exported
    Detections,
    PreparedBatch,
    Preprocessor,
    decode_image,
    default_workers,
    list_images,
    map_detections,
    prepare_batch,
)

__all__ = ["PreparedBatch", "Detections", "Preprocessor", "decode_image", "prepare_batch", "map_detections",
           "default_workers", "list_images"]
