"""The one check of a ``model.json`` (docs/design.md, "Training run directory"), run on every load.

A run directory's ``model.json``, the copy inside an ONNX graph and an engine's sidecar are the
same document; :func:`check_metadata` is called by each reader (:func:`swdet.artifact.read_metadata`,
:func:`swdet.deploy.onnx_meta.validate_metadata`, :func:`swdet.deploy.engine_meta.split_sidecar`),
so every stage sees a description whose fields have the right types and ranges and agree with
each other. A problem is one line naming the field and the file.
"""

from __future__ import annotations

import math
from typing import Any

from swdet.errors import SwdetError

_NUM = (int, float)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, _NUM) and not isinstance(v, bool) and math.isfinite(v)


class _Check:
    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, problem: str) -> None:
        raise SwdetError(f"{self.source}: {key} {problem}")

    def section(self, meta: dict, key: str, required: bool = True) -> dict | None:
        v = meta.get(key)
        if v is None and not required:
            return None
        if not isinstance(v, dict):
            self.fail(key, "missing" if v is None else f"must be a JSON object, got {type(v).__name__}")
        return v

    def numbers(self, value, key: str, n: int | None = None, positive: bool = False) -> list:
        if not isinstance(value, list) or not all(_is_num(x) for x in value):
            self.fail(key, f"must be a list of numbers, got {value!r}")
        if n is not None and len(value) != n:
            self.fail(key, f"must have {n} numbers, got {len(value)}")
        if positive and any(x <= 0 for x in value):
            self.fail(key, f"must be positive, got {value!r}")
        return value

    def choice(self, value, key: str, allowed: tuple) -> None:
        if value not in allowed:
            self.fail(key, f"must be {' or '.join(map(repr, allowed))}, got {value!r}")


def _json_type_ok(value, hint) -> bool:
    """``value`` (parsed JSON) has the type a dataclass field declares (no string-to-number
    conversion: a config file may say ``imgsz: "320"``, a model description may not)."""
    import typing

    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(_json_type_ok(v, item) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return _is_int(value)
    if hint is float:
        return _is_num(value)
    if hint is str:
        return isinstance(value, str)
    return True


def _check_types(cls, values: dict, prefix: str, c: _Check) -> None:
    import typing

    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if key in hints and not _json_type_ok(value, hints[key]):
            name = getattr(hints[key], "__name__", None) or str(hints[key])
            c.fail(f"{prefix}.{key}", f"must be {name}, got {value!r}")


def check_metadata(meta: Any, source: str) -> dict:
    """``meta`` when it is a valid model description; otherwise a one-line
    :class:`~swdet.errors.SwdetError` naming ``source`` and the field.

    Checked: ``format`` / ``format_version``; ``model`` (every ``ModelConfig`` field's type and
    the config's value rules, ``imgsz`` by the input-size rule); ``classes`` (names are non-empty
    strings, category ids distinct integers, as many of each as ``model.num_classes``); ``input``
    (name, layout, color, dtype, range, a 3-number ``mean`` and positive ``std``, letterbox,
    normalization, an older ``size`` equal to ``model.imgsz``); ``postprocess`` (score threshold
    in [0, 1), NMS IoU in [0, 1], ``max_det`` and ``pre_nms_topk`` at least 1); and, when
    present, ``threshold``, ``export``, ``training`` and ``num_parameters``.
    """
    from swdet.artifact import FORMAT, FORMAT_VERSION
    from swdet.config import (ModelConfig, PostprocessConfig, _fill, check_imgsz, validate_model,
                              validate_postprocess)

    c = _Check(source)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SwdetError(f"{source}: not an swdet model description (format != {FORMAT!r})")
    version = meta.get("format_version", 1)
    if not _is_int(version) or version < 1:
        c.fail("format_version", f"must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise SwdetError(f"{source}: written by a newer swdet (format_version {version}); upgrade swdet")

    model_d = c.section(meta, "model")
    inp = c.section(meta, "input")
    model = _fill(ModelConfig(), dict(model_d), f"{source}: model")  # unknown keys
    _check_types(ModelConfig, model_d, "model", c)
    if "imgsz" not in model_d:  # an older file: the size only under input.size
        if "size" not in inp:
            c.fail("model.imgsz", "missing")
        model.imgsz = inp["size"]
    validate_model(model, source)
    if "size" in inp:
        check_imgsz(inp["size"], f"{source}: input.size")
        if inp["size"] != model.imgsz:
            c.fail("input.size", f"{inp['size']} differs from model.imgsz {model.imgsz}")

    classes = c.section(meta, "classes")
    names, ids = classes.get("names"), classes.get("category_ids")
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        c.fail("classes.names", "must be a list of non-empty strings")
    if not isinstance(ids, list) or not all(_is_int(i) for i in ids):
        c.fail("classes.category_ids", "must be a list of integers")
    if len(names) != model.num_classes:
        c.fail("classes.names", f"has {len(names)} names, model.num_classes is {model.num_classes}")
    if len(ids) != len(names):
        c.fail("classes.category_ids", f"has {len(ids)} ids for {len(names)} names")
    seen: set = set()
    for i in ids:
        if i in seen:
            c.fail("classes.category_ids", f"repeats id {i}")
        seen.add(i)

    if "name" in inp and (not isinstance(inp["name"], str) or not inp["name"]):
        c.fail("input.name", "must be a non-empty string")
    for key, allowed in (("layout", ("NCHW",)), ("color", ("RGB",)), ("dtype", ("float32",)),
                         ("normalization", ("in-graph",))):
        if key in inp:
            c.choice(inp[key], f"input.{key}", allowed)
    if "range" in inp:
        lo, hi = c.numbers(inp["range"], "input.range", 2)
        if lo >= hi:
            c.fail("input.range", f"must be [low, high] with low < high, got {inp['range']!r}")
    for key in ("mean", "std"):
        if key not in inp:
            c.fail(f"input.{key}", "missing")
        c.numbers(inp[key], f"input.{key}", 3, positive=key == "std")
    if "letterbox" in inp:
        lb = c.section(inp, "letterbox")
        if "align" in lb:
            c.choice(lb["align"], "input.letterbox.align", ("top-left",))
        pad = lb.get("pad_value", 0)
        if not _is_num(pad) or not 0 <= pad <= 255:
            c.fail("input.letterbox.pad_value", f"must be a number in [0, 255], got {pad!r}")

    post_d = c.section(meta, "postprocess")
    post = _fill(PostprocessConfig(), dict(post_d), f"{source}: postprocess")
    _check_types(PostprocessConfig, post_d, "postprocess", c)
    validate_postprocess(post, source)

    th = c.section(meta, "threshold", required=False)
    if th is not None:
        c.choice(th.get("source"), "threshold.source", ("default", "sampling_free"))
        theta = th.get("theta")
        if not _is_num(theta) or not 0 <= theta < 1:
            c.fail("threshold.theta", f"must be a number in [0, 1), got {theta!r}")
        if th["source"] == "sampling_free":
            fg, n = th.get("num_fg"), th.get("num_all")
            if not (_is_int(fg) and _is_int(n) and 0 < fg <= n):
                c.fail("threshold.num_fg/num_all", f"must be integers with 0 < num_fg <= num_all, got {fg!r}, {n!r}")

    exp = c.section(meta, "export", required=False)
    if exp is not None:
        if "imgsz" in exp and exp["imgsz"] != model.imgsz:
            c.fail("export.imgsz", f"{exp['imgsz']!r} differs from model.imgsz {model.imgsz}")
        b = exp.get("batch", "dynamic")
        if b != "dynamic" and not (_is_int(b) and b >= 1):
            c.fail("export.batch", f"must be a positive integer or 'dynamic', got {b!r}")
        st = exp.get("score_threshold", 0.0)
        if not _is_num(st) or not 0 <= st < 1:
            c.fail("export.score_threshold", f"must be a number in [0, 1), got {st!r}")
        if "nms" in exp:
            c.choice(exp["nms"], "export.nms", ("onnx", "efficient"))
        if "precision" in exp:
            c.choice(exp["precision"], "export.precision", ("fp32", "fp16", "int8"))
        for key in ("max_det", "pre_nms_topk", "opset"):
            if key in exp and not (_is_int(exp[key]) and exp[key] >= 1):
                c.fail(f"export.{key}", f"must be a positive integer, got {exp[key]!r}")

    tr = c.section(meta, "training", required=False)
    if tr is not None and "method" in tr:
        m = tr["method"]
        if not isinstance(m, list) or not m or not all(isinstance(x, str) for x in m):
            c.fail("training.method", f"must be a non-empty list of method names, got {m!r}")
    n = meta.get("num_parameters")
    if n is not None and not (_is_int(n) and n >= 0):
        c.fail("num_parameters", f"must be a non-negative integer, got {n!r}")
    return meta
