"""Data layer: robust image decoding, COCO datasets, letterbox, augmentation, loaders, the
synthetic default dataset and YOLO conversion.

The ``swdet data`` commands live in the command line, :mod:`swdet.cli.data`.
"""

from .coco import CocoDetection, DataWarning, read_coco_json
from .image import IMAGE_EXTENSIONS, ImageDecodeError, decode_bytes, image_size, load_image, to_rgb
from .letterbox import PAD_VALUE, Letterbox, letterbox_image
from .splits import find_split
from .loader import (
    BatchStream,
    ResumableBatchSampler,
    SwdetDataLoader,
    build_loader,
    collate,
    iterate_batches,
    seed_worker,
)
from .synth import CATEGORIES as SYNTH_CATEGORIES
from .synth import PRESETS as SYNTH_PRESETS
from .synth import SynthConfig, write_synthetic_dataset
from .transforms import AugmentConfig, augment_sample, hflip_boxes, letterbox_sample, to_chw_tensor
from .yolo import convert_yolo, read_names

__all__ = [
    "AugmentConfig",
    "BatchStream",
    "CocoDetection",
    "DataWarning",
    "IMAGE_EXTENSIONS",
    "ImageDecodeError",
    "Letterbox",
    "PAD_VALUE",
    "ResumableBatchSampler",
    "SYNTH_CATEGORIES",
    "SYNTH_PRESETS",
    "SwdetDataLoader",
    "SynthConfig",
    "augment_sample",
    "build_loader",
    "collate",
    "convert_yolo",
    "decode_bytes",
    "find_split",
    "hflip_boxes",
    "image_size",
    "iterate_batches",
    "letterbox_image",
    "letterbox_sample",
    "load_image",
    "read_coco_json",
    "read_names",
    "seed_worker",
    "to_chw_tensor",
    "to_rgb",
    "write_synthetic_dataset",
]
