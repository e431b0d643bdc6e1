"""Moved to :mod:`swdet.trt_rules` (core: calib uses it too, and calib must not import export).

Kept so ``from swdet.export.trt_check import check_tensorrt_compat`` goes on working.
"""

from swdet.trt_rules import (  # noqa: F401 - re-exported
    Problem,
    check_tensorrt_compat,
    format_problems,
    has_errors,
)

__all__ = ["Problem", "check_tensorrt_compat", "format_problems", "has_errors"]
