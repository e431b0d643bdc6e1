"""The ``model.json`` metadata stored inside an exported ONNX graph (docs/design.md, "ONNX contract").

Every swdet ONNX file carries its model description as JSON under the key ``"swdet"`` of the
graph's ``metadata_props``; the export settings sit under ``meta["export"]`` and, after INT8
calibration, the calibration settings under ``meta["calibration"]``. Export writes it, calib
rewrites it, serve and verify read it: this module is the one place that encodes and decodes
it. It imports neither torch nor onnx at module level (the ONNX Runtime path hands over the
string from ``InferenceSession.get_modelmeta()``; the onnx package is only needed for protos).
The format name and version are :mod:`swdet.artifact`'s (``model.json`` is the same document).

Two levels of reading:

* :func:`read_onnx_metadata` (lenient): the stored dict, or None when the graph has none; only
  invalid JSON is an error. For tools that check the parts they need themselves.
* :func:`parse_metadata` / :func:`require_onnx_metadata` (strict): a model description that a
  runtime can run -- present, valid JSON, ``format == "swdet-model"`` with an ``input``
  section, and a ``format_version`` this swdet reads. Anything else is a one-line
  :class:`~swdet.errors.SwdetError` naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swdet.artifact import FORMAT, json_default
from swdet.errors import SwdetError

if TYPE_CHECKING:
    import onnx

METADATA_KEY = "swdet"

__all__ = ["METADATA_KEY", "decode_metadata", "validate_metadata", "parse_metadata", "metadata_text",
           "read_onnx_metadata", "require_onnx_metadata", "set_onnx_metadata", "baked_score_threshold",
           "check_score_threshold"]


def decode_metadata(text: str | None, source: str) -> dict | None:
    """The JSON text stored under ``metadata_props["swdet"]`` -> dict (None when ``text`` is None).
    Invalid JSON, or JSON that is not an object, is a one-line error."""
    if text is None:
        return None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise SwdetError(f"{source}: the swdet metadata is not valid JSON ({e.msg}); re-export the model") from None
    if not isinstance(meta, dict):
        raise SwdetError(f"{source}: the swdet metadata is not a JSON object; re-export the model")
    return meta


def validate_metadata(meta: dict | None, source: str) -> dict:
    """``meta`` when it is a model description a runtime can use; otherwise a one-line error."""
    if meta is None:
        raise SwdetError(f"{source}: not an swdet model (no swdet metadata); export it with swdet export")
    if meta.get("format") != FORMAT or "input" not in meta:
        raise SwdetError(f"{source}: the swdet metadata is not a model description; re-export the model")
    from swdet.modeljson import check_metadata

    return check_metadata(meta, source)


def parse_metadata(text: str | None, source: str) -> dict:
    """Strict: the stored JSON text -> a model description (:func:`decode_metadata` then
    :func:`validate_metadata`)."""
    return validate_metadata(decode_metadata(text, source), source)


def _load(model: onnx.ModelProto | str | Path) -> tuple[onnx.ModelProto, str]:
    import onnx

    from swdet.deploy.graph import load_onnx

    return load_onnx(model), ("ONNX model" if isinstance(model, onnx.ModelProto) else str(model))


def metadata_text(model: onnx.ModelProto) -> str | None:
    """The raw string under ``metadata_props["swdet"]`` (None when absent)."""
    for p in model.metadata_props:
        if p.key == METADATA_KEY:
            return p.value
    return None


def read_onnx_metadata(model: onnx.ModelProto | str | Path, source: str | None = None) -> dict | None:
    """Lenient: the dict stored in ``metadata_props["swdet"]`` of a proto or ``.onnx`` path, None
    when absent."""
    proto, where = _load(model)
    return decode_metadata(metadata_text(proto), source or where)


def require_onnx_metadata(model: onnx.ModelProto | str | Path, source: str | None = None) -> dict:
    """Strict: the model description of a proto or ``.onnx`` path (see :func:`validate_metadata`)."""
    proto, where = _load(model)
    return parse_metadata(metadata_text(proto), source or where)


def set_onnx_metadata(model: onnx.ModelProto, meta: dict[str, Any]) -> None:
    """Store ``meta`` (JSON) under ``metadata_props["swdet"]``, replacing an earlier entry."""
    keep = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta, default=json_default)


# ----------------------------------------------------------------------------------------------
# The score threshold baked into a deployed model


def baked_score_threshold(meta: dict) -> float | None:
    """The score threshold inside an exported graph or engine (``export.score_threshold``, else
    the ``postprocess`` one); None when the metadata names none."""
    exp = meta.get("export") or {}
    for v in (exp.get("score_threshold"), (meta.get("postprocess") or {}).get("score_threshold")):
        if v is not None:
            return float(v)
    return None


def check_score_threshold(meta: dict, requested: float | None, source: str) -> None:
    """A post-processing threshold is compiled into exported models; asking for another one
    cannot be honoured at run time (a one-line error naming ``source``)."""
    if requested is None:
        return
    baked = baked_score_threshold(meta)
    if baked is None or abs(float(requested) - baked) <= 1e-9 * max(1.0, abs(baked)):
        return
    raise SwdetError(f"{source}: score threshold {baked:g} is baked into the exported graph, cannot run it at "
                     f"{float(requested):g}; re-export with --score-threshold {float(requested):g}")
