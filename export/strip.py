"""Stripping: from whatever training left behind to the deployable detector alone.

docs/design.md, "Data flow and contracts" 3: the exported ``nn.Module`` is the detector (backbone,
neck, heads) and nothing else. Weighting networks (SWN), their optimizers and loss state live in
``swdet.train`` and are saved only in ``checkpoints/``; this module is where a checkpoint is
turned into the artifact (``model.safetensors`` + ``model.json``) without them.

Accepted sources:

* a run directory (its ``model.safetensors`` + ``model.json``; if training never wrote them,
  its ``checkpoints/last.pt``),
* ``model.safetensors`` or ``model.json`` (the artifact itself),
* a training checkpoint ``.pt`` (``{"model": detector state, "weighting": ..., "config": ...,
  "class_names": ..., "category_ids": ..., "stats": ..., ...}``).

Nothing here imports ``swdet.train``: the checkpoint is read by core's
:func:`swdet.artifact.read_checkpoint` (the reader the trainer uses too) and the score threshold
(Sampling-Free's ``θ = N_f / N``, Sec. 3.2) is derived by core's
:func:`swdet.artifact.derive_threshold`, the function the trainer uses.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from swdet.artifact import (
    META_NAME,
    WEIGHTS_NAME,
    atomic_write_bytes,
    load_artifact,
    derive_threshold,
    postprocess_with_threshold,
    read_checkpoint,
    resolve_artifact,
)
from swdet.errors import SwdetError

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
# State-dict prefixes a detector's weights may carry in a checkpoint: the trainer's
# ``TrainModule(detector, weighting)`` and DDP's ``module.`` wrapper.
_WRAPPER_PREFIXES = ("module.", "detector.")
# Training-only modules that sit next to the detector in a TrainModule state dict.
_TRAINING_ONLY_PREFIXES = ("weighting.",)


def is_checkpoint(path: str | Path) -> bool:
    return Path(path).suffix.lower() in CHECKPOINT_SUFFIXES


def _run_checkpoint(run_dir: Path) -> Path | None:
    ckpt = run_dir / "checkpoints" / "last.pt"
    return ckpt if ckpt.is_file() else None


def _detector_state(state: dict, path: Path) -> dict[str, torch.Tensor]:
    """The detector's weights from a checkpoint's ``model`` entry: wrapper prefixes removed,
    training-only entries (``weighting.*``) dropped."""
    out = {}
    for key, value in state["model"].items():
        k = key
        changed = True
        while changed:
            changed = False
            for p in _WRAPPER_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        if k.startswith(_TRAINING_ONLY_PREFIXES):
            continue
        if not torch.is_tensor(value):
            raise SwdetError(f"{path}: model entry {key!r} is not a tensor")
        out[k] = value
    return out


def load_checkpoint_detector(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the detector and its ``model.json`` metadata from a training checkpoint.

    Only ``state["model"]`` is loaded (into a freshly built detector, strictly); the checkpoint's
    ``weighting``, optimizer and loss entries are never touched.
    """
    from swdet.artifact import build_metadata
    from swdet.config import config_from_dict
    from swdet.models import build_model

    path = Path(path)
    state = read_checkpoint(path)
    for key in ("config", "class_names", "category_ids"):
        if key not in state:
            raise SwdetError(f"{path}: checkpoint has no {key!r} entry (written by an older swdet?)")
    if not isinstance(state["config"], dict):
        raise SwdetError(f"{path}: checkpoint 'config' is not a mapping")
    cfg = config_from_dict(state["config"], f"{path}: config")
    cfg.model.pretrained = "none"  # weights come from the checkpoint, never from the network
    names, ids = list(state["class_names"]), [int(c) for c in state["category_ids"]]
    if len(names) != len(ids) or len(names) != cfg.model.num_classes:
        raise SwdetError(f"{path}: {len(names)} class names / {len(ids)} category ids for a "
                         f"{cfg.model.num_classes}-class model")
    model = build_model(cfg.model)
    weights = _detector_state(state, path)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise SwdetError(f"{path}: model weights do not match the architecture in its config ({what})")
    try:
        threshold = derive_threshold(cfg, state.get("stats"))
    except SwdetError as e:
        raise SwdetError(f"{path}: {e}") from None
    meta = build_metadata(cfg.model, postprocess_with_threshold(cfg.postprocess, threshold), class_names=names, category_ids=ids, method=cfg.loss.method,
                          threshold=threshold,
                          training={"iterations": int(state.get("iteration", 0)), "config": state["config"],
                                    "source": f"checkpoint {path.name}"})
    return model.eval(), meta


def load_for_export(source: str | Path) -> tuple[nn.Module, dict]:
    """``(detector in eval mode on the CPU, model.json metadata)`` from any accepted source (see
    the module docstring). A checkpoint is read in memory; nothing is written."""
    p = Path(source)
    if not p.exists():
        raise SwdetError(f"{p}: no such file or directory")
    if p.is_file() and is_checkpoint(p):
        return load_checkpoint_detector(p)
    if p.is_dir() and not (p / WEIGHTS_NAME).is_file():
        ckpt = _run_checkpoint(p)
        if ckpt is not None:
            return load_checkpoint_detector(ckpt)
    return load_artifact(p, device="cpu")


def default_artifact_dir(checkpoint: str | Path) -> Path:
    """Where the artifact of a checkpoint goes by default: ``runs/x/checkpoints/last.pt`` ->
    ``runs/x/checkpoints/last/`` (never over the run's own ``model.safetensors``)."""
    c = Path(checkpoint)
    return c.with_name(c.stem)


def to_artifact(path: str | Path, out_dir: str | Path | None = None) -> Path:
    """The deployable artifact for ``path``; returns its ``model.safetensors``.

    * artifact or run directory with one: returned as is, or copied into ``out_dir``;
    * training checkpoint (or a run directory with only ``checkpoints/last.pt``): the detector's
      weights and metadata rebuilt from the checkpoint's ``model``, ``config``, ``class_names``,
      ``category_ids`` and ``stats`` are written to ``out_dir`` (default: next to the checkpoint,
      see :func:`default_artifact_dir`). Training-only entries never reach the artifact: only the
      rebuilt detector's own ``state_dict`` is saved.
    """
    from swdet.artifact import save_artifact

    p = Path(path)
    if not p.exists():
        raise SwdetError(f"{p}: no such file or directory")
    ckpt: Path | None = None
    if p.is_file() and is_checkpoint(p):
        ckpt = p
    elif p.is_dir() and not (p / WEIGHTS_NAME).is_file():
        ckpt = _run_checkpoint(p)
    if ckpt is not None:
        model, meta = load_checkpoint_detector(ckpt)
        target = Path(out_dir) if out_dir is not None else default_artifact_dir(ckpt)
        return save_artifact(target, model, meta)
    weights, meta_path = resolve_artifact(p)
    if out_dir is None:
        return weights
    target = Path(out_dir)
    load_artifact(p)  # validate before copying: a broken artifact fails here, not at deployment
    dst_w, dst_m = target / WEIGHTS_NAME, target / META_NAME
    for src, dst in ((weights, dst_w), (meta_path, dst_m)):
        if not dst.exists() or dst.resolve() != src.resolve():
            atomic_write_bytes(dst, src.read_bytes())  # a kill never leaves half a copy
    return dst_w
