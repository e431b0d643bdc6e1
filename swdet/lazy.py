"""Lazy public names for a package: ``import swdet.export`` (and ``swdet --help``) stays cheap,
and ``from swdet.export import export_onnx`` imports the module behind the name on first use."""

from __future__ import annotations

import importlib
import sys


def lazy_exports(package: str, exports: dict[str, str]):
    """``(__getattr__, __dir__)`` for ``package``'s ``__init__``: ``exports`` maps each public
    name to the module that defines it; a name is imported once, then cached in the package."""

    def __getattr__(name: str):
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            setattr(sys.modules[package], name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
