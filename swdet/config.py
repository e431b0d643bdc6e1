"""Experiment configuration: plain dataclasses, loaded from YAML with clear errors.

A config file mirrors :class:`Config`::

    model: retinanet_r50_fpn          # a preset name, or a mapping {name: ..., <ModelConfig field>: ...}
    data: {root: coco/}
    train: {iters: 90000, batch_size: 16, lr: 0.01, schedule: step, steps: [0.667, 0.889]}
    loss: {method: [pisa], reg_loss: smooth_l1}
    methods: {pisa: {isr_gamma: 2.0}}

Command-line ``--set section.key=value`` overrides are applied on top (values parsed as YAML).
Unknown keys, wrong types and bad values raise :class:`~swdet.errors.SwdetError` naming the file
and key, with the closest valid key suggested.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from swdet.errors import SwdetError


# ----------------------------------------------------------------------------------------------
# Sections


@dataclass
class ModelConfig:
    """Architecture of the detector. Everything needed to rebuild it goes into ``model.json``."""

    name: str = "retinanet_tiny"
    arch: str = "retinanet"  # retinanet | faster_rcnn
    backbone: str = "tiny"  # tiny | resnet18 | resnet34 | resnet50
    # Backbone weights: "auto" = ImageNet from torchvision when reachable, else random init with a
    # notice; "imagenet" = required; "none" = random init; or a path to a torchvision state dict.
    # The tiny backbone: "none" (also what "auto" means for it, silently) or a path to the backbone
    # of an earlier run (its checkpoint or model.safetensors, whose backbone.* entries are taken).
    pretrained: str = "none"
    frozen_stages: int = 1  # ResNet stages frozen when pretrained (stem + layer1, as in the papers)
    backbone_norm: str = "bn"  # bn | frozen_bn
    backbone_width: int = 32  # width of the first stage of the tiny backbone
    backbone_blocks: list[int] = field(default_factory=lambda: [1, 1, 1, 1])  # tiny: blocks per stage
    fpn_channels: int = 256
    head_channels: int = 256
    head_convs: int = 4
    head_norm: str = "none"  # none | gn | bn (per-level BatchNorm, folded into the convs at export)
    imgsz: int = 640  # square letterboxed input size (the ONNX input is fixed to it)
    min_level: int = 3
    max_level: int = 7
    anchor_size: float = 4.0  # anchor side = anchor_size * stride * scale (RetinaNet: 4)
    anchor_scales: list[float] = field(default_factory=lambda: [1.0, 2 ** (1 / 3), 2 ** (2 / 3)])
    anchor_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    prior_prob: float = 0.01  # focal-loss bias initialization pi
    num_classes: int = 80  # set from the dataset at training time
    # Faster R-CNN only (arch: faster_rcnn); RetinaNet ignores them. Proposal counts: "pre" per FPN
    # level before NMS, "post" per image after it; training and inference (test) values.
    rpn_pre_nms_topk_train: int = 2000
    rpn_post_nms_topk_train: int = 2000
    rpn_pre_nms_topk: int = 1000
    rpn_post_nms_topk: int = 1000
    rpn_nms_iou: float = 0.7
    rpn_nms_iters_train: int = 10  # fixed-point iterations of the training-time NMS (see faster_rcnn.py)
    roi_size: int = 7  # RoIAlign output size
    roi_sampling_ratio: int = 2  # RoIAlign samples per bin side (fixed: the ONNX graph uses the same)
    box_head_dim: int = 1024  # width of the box head's two fully connected layers


@dataclass
class DataConfig:
    """Where the COCO-format data is. ``root`` is searched for the usual layouts."""

    root: str = ""
    train_ann: str = ""
    train_images: str = ""
    val_ann: str = ""
    val_images: str = ""
    workers: int = 2
    hflip: float = 0.5
    scale_jitter: list[float] = field(default_factory=lambda: [0.75, 1.25])


@dataclass
class TrainConfig:
    iters: int = 0  # total iterations; 0 = derive from epochs
    epochs: int = 0
    batch_size: int = 8  # global batch (split over DDP ranks)
    optimizer: str = "sgd"  # sgd (the papers') | adamw (momentum is then beta1)
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    warmup_factor: float = 0.001
    schedule: str = "step"  # step | cosine
    steps: list[float] = field(default_factory=lambda: [8 / 12, 11 / 12])  # fractions of iters
    gamma: float = 0.1
    grad_clip: float = 0.0  # max grad norm; 0 = off
    amp: str = "auto"  # auto | none | bf16 | fp16 ("auto": bf16/fp16 on CUDA, fp32 on the CPU; bf16 on the CPU: opt-in)
    channels_last: bool = True  # on CUDA only
    seed: int = 0
    deterministic: bool = True  # deterministic algorithms on CPU
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    ckpt_every: int = 500
    ckpt_minutes: float = 10.0  # also checkpoint when this much time passed since the last one; 0 = off
    log_every: int = 20
    eval_every: int = 0  # 0 = only at the end
    max_bad_steps: int = 5  # consecutive non-finite losses before the run stops


@dataclass
class LossConfig:
    method: list[str] = field(default_factory=lambda: ["focal"])
    reg_loss: str = "smooth_l1"  # smooth_l1 | l1 | giou | ghm_r (RetinaNet; methods.ghm_r)
    smooth_l1_beta: float = 1.0 / 9
    reg_weight: float = 1.0
    fg_iou: float = 0.5
    bg_iou: float = 0.4
    allow_low_quality: bool = True


@dataclass
class RCNNConfig:
    """Faster R-CNN training: how anchors and proposals are matched and sampled.

    Defaults are the papers' setup (Ren et al. 2015 with FPN, as in mmdetection / Detectron): RPN
    anchors are positive at IoU >= 0.7 (plus each GT's best anchors), negative below 0.3, and 256
    are sampled per image with at most half positive; RoIs (the proposals plus the GT boxes) are
    foreground at IoU >= 0.5, background in [0, 0.5), and 512 are sampled per image with at most a
    quarter foreground. Methods that train on every sample (Sampling-Free; noisy anchors in the
    RPN) skip the sampling and normalize by the positives instead of the samples
    (``methods.sampling_free.rpn_pos_norm`` / ``roi_pos_norm`` times them for Sampling-Free).
    """

    rpn_fg_iou: float = 0.7
    rpn_bg_iou: float = 0.3
    rpn_batch: int = 256
    rpn_pos_fraction: float = 0.5
    roi_fg_iou: float = 0.5
    roi_bg_iou_hi: float = 0.5
    roi_bg_iou_lo: float = 0.0
    roi_batch: int = 512
    roi_pos_fraction: float = 0.25
    add_gt_as_proposals: bool = True
    roi_smooth_l1_beta: float = 1.0  # the RoI head's smooth L1 (the RPN uses loss.smooth_l1_beta, 1/9)


@dataclass
class FocalParams:
    alpha: float = 0.25
    gamma: float = 2.0


@dataclass
class GHMParams:
    """GHM-C (Li et al., AAAI 2019) as in the authors' mmdetection code: a gradient-density
    histogram of ``bins`` regions per FPN level, one running average (momentum) shared by the
    level calls, started at zero. ``per_level: false`` takes one histogram over all levels."""

    bins: int = 30
    momentum: float = 0.75
    per_level: bool = True


@dataclass
class GHMRParams:
    """GHM-R (``loss.reg_loss: ghm_r``, RetinaNet), as in the authors' mmdetection code: the
    authentic smooth L1 ``sqrt(d² + mu²) - mu`` harmonized by a histogram of its gradient norms,
    ``bins`` regions per FPN level, one running average (momentum) shared by the level calls.
    Their RetinaNet config pairs it with ``loss.reg_weight: 10``."""

    mu: float = 0.02
    bins: int = 10
    momentum: float = 0.7


@dataclass
class PisaParams:
    isr_gamma: float = 2.0  # PISA Eq. 2 gamma (the paper's k)
    isr_beta: float = 0.0  # PISA Eq. 2 beta (the paper's bias)
    carl_k: float = 1.0
    carl_bias: float = 0.1
    carl_weight: float = 1.0


@dataclass
class IoUBalancedParams:
    eta: float = 1.5
    lam: float = 1.5
    w_loc: float = 0.0  # 0 = fixed on the first batch so the localization loss sum is unchanged
    # which classification elements of a positive get iou^eta: "gt" (its ground-truth class, the
    # authors' code) or "all" (every class, the other reading of the paper's Eq. 1)
    cls_elements: str = "gt"
    # where the weights are normalized (Eq. 2): "level" (each FPN level, the authors' code) or "batch"
    normalize: str = "level"


@dataclass
class SamplingFreeParams:
    guided_factor: float = 1.0  # guided loss scaling factor (Eq. 8) in RetinaNet and the RPN
    roi_guided_factor: float = 2.0  # in a RoI head (Sec. 3.2: its box loss is ~2x its cls loss)
    bias_init: bool = True
    adaptive_threshold: bool = True
    # Faster R-CNN: the unsampled heads' normalizer is this x the positives (the authors' code: the
    # positives' per-coordinate mean box loss, halved in the RPN; keeps the sampled baseline's scale)
    rpn_pos_norm: float = 8.0
    roi_pos_norm: float = 4.0
    # Faster R-CNN: the heads that train without sampling (the paper's Table 4 ablation: rpn, roi
    # or both); a head left out keeps the baseline's random sampling and loss
    heads: list[str] = field(default_factory=lambda: ["rpn", "roi"])


@dataclass
class NoisyAnchorsParams:
    topn: int = 40
    alpha: float = 0.75
    gamma: float = 1.0


@dataclass
class SWNParams:
    """SWN (Cai et al., CVPR 2020); defaults as in the authors' code (sample-weighting-network).

    ``exp_scale``: the weight is ``exp(-exp_scale·m)``: 1 in the code, 2 in the paper's Eq. 9.
    ``groups``: how the classification ``m`` is shared over the batch: ``auto`` (the code: one
    mean over all anchors on RetinaNet, ``all``; the positives' and the negatives' means in a RoI
    head, ``pos_neg``), or ``all`` / ``pos_neg`` on every head (``pos_neg`` is the paper's App. A.1.2).
    ``reg_inputs``: 4 feeds the per-coordinate regression loss to the network (the code), 1 the
    summed loss (the paper's ``L_i^reg``). ``hidden``: 64 in the code. ``tasks``: the losses the
    network weights (the paper's Table 4 ablation: ``[cls]``, ``[reg]`` or both); a task left
    out keeps weight 1 and no regularizer.
    """

    hidden: int = 64
    lam: float = 0.5
    clip: float = 2.0
    exp_scale: float = 1.0
    groups: str = "auto"
    reg_inputs: int = 4
    tasks: list[str] = field(default_factory=lambda: ["cls", "reg"])
    lr: float = 1e-3
    weight_decay: float = 1e-4
    init_std: float = 1e-4


@dataclass
class OHEMParams:
    """Online hard example mining in a RoI head (``--method ohem``).

    ``selection``: ``mmdet`` (mmdetection's ``OHEMSampler``, what users compare with: the hardest
    positives and, for the rest of the batch, the hardest negatives, each ranked by classification
    loss at the sampler's fraction) or ``paper`` (Shrivastava et al. 2016: NMS at ``nms_iou`` over
    the RoIs ranked by classification + box loss, then the ``roi_batch`` hardest, any mix) or
    ``negatives`` (an ablation: positives drawn at random as random sampling does, only the
    negatives the hardest; hard-negative mining as in SSD).
    """

    selection: str = "mmdet"
    nms_iou: float = 0.7


@dataclass
class MethodParams:
    focal: FocalParams = field(default_factory=FocalParams)
    ghm: GHMParams = field(default_factory=GHMParams)
    ghm_r: GHMRParams = field(default_factory=GHMRParams)
    pisa: PisaParams = field(default_factory=PisaParams)
    iou_balanced: IoUBalancedParams = field(default_factory=IoUBalancedParams)
    sampling_free: SamplingFreeParams = field(default_factory=SamplingFreeParams)
    noisy_anchors: NoisyAnchorsParams = field(default_factory=NoisyAnchorsParams)
    swn: SWNParams = field(default_factory=SWNParams)
    ohem: OHEMParams = field(default_factory=OHEMParams)


@dataclass
class PostprocessConfig:
    """Inference post-processing (torch and every exported graph)."""

    score_threshold: float = 0.05  # replaced by theta = N_f/N for Sampling-Free runs
    nms_iou: float = 0.5
    pre_nms_topk: int = 1000  # per FPN level
    max_det: int = 100


@dataclass
class Config:
    name: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    methods: MethodParams = field(default_factory=MethodParams)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    rcnn: RCNNConfig = field(default_factory=RCNNConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------
# Model presets (the `--model` names)


def retinanet_tiny() -> ModelConfig:
    """CPU-sized RetinaNet: a 4-stage tiny ResNet, narrow FPN (P3-P6) and a 2-conv head."""
    return ModelConfig(
        name="retinanet_tiny", backbone="tiny", pretrained="none", backbone_norm="bn",
        backbone_width=24, fpn_channels=64, head_channels=64, head_convs=2, head_norm="gn",
        imgsz=320, min_level=3, max_level=6, anchor_size=3.0,  # smallest anchor 24 px at 320 px input
    )


def _retinanet_resnet(depth: int) -> ModelConfig:
    return ModelConfig(
        name=f"retinanet_r{depth}_fpn", backbone=f"resnet{depth}", pretrained="auto",
        backbone_norm="frozen_bn", fpn_channels=256, head_channels=256, head_convs=4,
        head_norm="none", imgsz=640,
    )


def retinanet_r18_fpn() -> ModelConfig:
    return _retinanet_resnet(18)


def retinanet_r34_fpn() -> ModelConfig:
    return _retinanet_resnet(34)


def retinanet_r50_fpn() -> ModelConfig:
    """The papers' RetinaNet (ResNet-50-FPN, P3-P7, 9 anchors per location)."""
    return _retinanet_resnet(50)


def faster_rcnn_tiny() -> ModelConfig:
    """CPU-sized Faster R-CNN: the tiny backbone, a narrow FPN (P2-P6), one anchor size per level
    (4·stride: 16..256 px) at 3 ratios, 300 proposals per image in training and 100 at test, a
    2 x 256 fully connected box head."""
    return ModelConfig(
        name="faster_rcnn_tiny", arch="faster_rcnn", backbone="tiny", pretrained="none", backbone_norm="bn",
        backbone_width=24, fpn_channels=64, head_channels=64, imgsz=320, min_level=2, max_level=6,
        anchor_size=4.0, anchor_scales=[1.0], anchor_ratios=[0.5, 1.0, 2.0],
        rpn_pre_nms_topk_train=300, rpn_post_nms_topk_train=300, rpn_pre_nms_topk=300, rpn_post_nms_topk=100,
        box_head_dim=256,
    )


def faster_rcnn_r50_fpn() -> ModelConfig:
    """The papers' Faster R-CNN (ResNet-50-FPN, P2-P6, anchors 8·stride = 32..512 px at 3 ratios,
    RoIAlign 7x7 on P2-P5, a 2 x 1024 fully connected box head; 2000 proposals per image in
    training, 1000 at test)."""
    return ModelConfig(
        name="faster_rcnn_r50_fpn", arch="faster_rcnn", backbone="resnet50", pretrained="auto",
        backbone_norm="frozen_bn", fpn_channels=256, head_channels=256, imgsz=640, min_level=2, max_level=6,
        anchor_size=8.0, anchor_scales=[1.0], anchor_ratios=[0.5, 1.0, 2.0],
        rpn_pre_nms_topk_train=2000, rpn_post_nms_topk_train=2000, rpn_pre_nms_topk=1000,
        rpn_post_nms_topk=1000, box_head_dim=1024,
    )


MODEL_PRESETS: dict[str, typing.Callable[[], ModelConfig]] = {
    "retinanet_tiny": retinanet_tiny,
    "retinanet_r18_fpn": retinanet_r18_fpn,
    "retinanet_r34_fpn": retinanet_r34_fpn,
    "retinanet_r50_fpn": retinanet_r50_fpn,
    "faster_rcnn_tiny": faster_rcnn_tiny,
    "faster_rcnn_r50_fpn": faster_rcnn_r50_fpn,
}


# Defaults a preset sets in other sections (a config's own values still win). faster_rcnn_tiny
# trains on 300 proposals per image, so the papers' 512 RoIs (of 2000) would sample nothing: 128
# keeps the baseline a real sampling, at the same at-most-1:3 foreground ratio.
PRESET_SECTION_DEFAULTS: dict[str, dict[str, dict]] = {
    "faster_rcnn_tiny": {"rcnn": {"roi_batch": 128}},
}


def model_preset(name: str) -> ModelConfig:
    if name not in MODEL_PRESETS:
        raise SwdetError(f"unknown model {name!r}{_suggest(name, MODEL_PRESETS)}; "
                         f"choose from {', '.join(sorted(MODEL_PRESETS))}")
    return MODEL_PRESETS[name]()


# ----------------------------------------------------------------------------------------------
# Loading and overrides


def _suggest(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the dataclass field type ``tp`` or raise a one-line error."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, args[0], where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise SwdetError(f"{where}: expected a mapping, got {type(value).__name__}")
        return _fill(tp(), value, where)
    if origin in (list, tuple):
        (inner,) = typing.get_args(tp)[:1] or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_convert(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise SwdetError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise SwdetError(f"{where}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except ValueError:
            raise SwdetError(f"{where}: expected an integer, got {value!r}") from None
        if not math.isfinite(f) or f != int(f):
            raise SwdetError(f"{where}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise SwdetError(f"{where}: expected a number, got {value!r}")
        try:
            f = float(value)
        except ValueError:
            raise SwdetError(f"{where}: expected a number, got {value!r}") from None
        if math.isnan(f):
            raise SwdetError(f"{where}: expected a number, got {value!r}")
        return f
    if tp is str:
        if isinstance(value, (dict, list)):
            raise SwdetError(f"{where}: expected a string, got {type(value).__name__}")
        return str(value)
    return value


def _fill(obj: Any, values: dict, where: str) -> Any:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in values.items():
        if key not in names:
            raise SwdetError(f"{where.rstrip(': ')}: unknown key {key!r}{_suggest(str(key), names)}")
        sub = f"{where}{key}" if where.endswith(": ") else f"{where}.{key}"
        setattr(obj, key, _convert(value, hints[key], sub))
    return obj


def config_from_dict(values: dict, source: str = "config") -> Config:
    """Build a :class:`Config` from a (YAML-shaped) dict; ``model`` may be a preset name."""
    values = dict(values or {})
    cfg = Config()
    model = values.pop("model", None)
    preset = None
    if isinstance(model, str):
        cfg.model = model_preset(preset := model)
    elif isinstance(model, dict):
        model = dict(model)
        if "name" in model:  # a preset, then its overrides
            cfg.model = model_preset(preset := str(model["name"]))
        cfg.model = _fill(cfg.model, model, f"{source}: model")
    elif model is not None:
        raise SwdetError(f"{source}: model: expected a preset name or a mapping")
    for section, defaults in PRESET_SECTION_DEFAULTS.get(preset, {}).items():
        _fill(getattr(cfg, section), defaults, f"{source}: {section}")
        given = values.pop(section, None)  # merged into the preset's defaults, not replacing them
        if given is not None:
            if not isinstance(given, dict):
                raise SwdetError(f"{source}: {section}: expected a mapping, got {type(given).__name__}")
            _fill(getattr(cfg, section), given, f"{source}: {section}")
    _fill(cfg, values, f"{source}: ")
    validate(cfg, source)
    return cfg


def blame_overrides(error: SwdetError, source: str, overrides: list[str] | None,
                    origins: dict[str, str] | None = None) -> SwdetError:
    """``error`` about ``source`` re-addressed to the option a value came from: a message
    ``"<source>: <key> ..."`` whose key was set by an override names that option instead
    (``origins`` maps keys to command-line flags, e.g. ``{"train.batch_size": "--batch-size"}``;
    other overridden keys are ``--set``'s)."""
    given = {item.split("=", 1)[0].strip(): "--set" for item in overrides or [] if "=" in item}
    given.update(origins or {})
    msg = str(error)
    if not msg.startswith(f"{source}: ") or not given:
        return error
    rest = msg[len(source) + 2:]
    head = rest.split(" ", 1)[0].rstrip(":")
    if head.startswith("model") and head.endswith("]"):  # e.g. model.anchor_scales[1]
        head = head.split("[", 1)[0]
    prefix, _, last = head.rpartition(".")
    keys = [head] + [f"{prefix}.{k}" if prefix else k for k in last.split("/")]
    for key in keys:
        if key in given and given[key] != source:
            out = SwdetError(f"{given[key]}: {rest}")
            out.exit_code = error.exit_code
            return out
    return error


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                origins: dict[str, str] | None = None) -> Config:
    """Load ``path`` (YAML) or the defaults, then apply ``--set key=value`` overrides. An error
    about an overridden value names the option it came from (``origins``: key -> flag, else
    ``--set``), not the file (:func:`blame_overrides`)."""
    try:
        return _load_config(path, overrides)
    except SwdetError as e:
        source = str(Path(path)) if path is not None else ("--set" if overrides else "defaults")
        raise blame_overrides(e, source, overrides, origins) from None


def _load_config(path, overrides) -> Config:
    data: dict = {}
    source = "--set" if overrides else "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise SwdetError(f"{p}: config file not found")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark is not None else ""
            raise SwdetError(f"{p}: invalid YAML{at}: {getattr(e, 'problem', e)}") from None
        if not isinstance(data, dict):
            raise SwdetError(f"{p}: expected a mapping at the top level")
    for item in overrides or []:
        apply_override(data, item)
    return config_from_dict(data, source)


def apply_override(data: dict, item: str) -> None:
    """Apply one ``section.key=value`` to a YAML-shaped dict (value parsed as YAML)."""
    if "=" not in item:
        raise SwdetError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=0.02")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise SwdetError(f"--set {item!r}: empty key")
    node = data
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if isinstance(nxt, str) and i == 0 and part == "model":
            nxt = {"name": nxt}
        if nxt is None:
            nxt = {}
        if not isinstance(nxt, dict):
            raise SwdetError(f"--set {item!r}: {'.'.join(parts[:i + 1])} is not a section")
        node[part] = nxt
        node = nxt
    node[parts[-1]] = value


def check_imgsz(value, where: str) -> int:
    """The square input size rule, the one place it is stated: an integer multiple of 32 (the
    largest FPN stride every level divides), at least 64. Returns it; a one-line error naming
    ``where`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 64 or value % 32:
        raise SwdetError(f"{where} {value!r}: must be a multiple of 32, at least 64")
    return value


def _raise_first(checks, source: str) -> None:
    for ok, key, expected in checks:
        if not ok:
            raise SwdetError(f"{source}: {key} must be {expected}")


def validate_model(m: ModelConfig, source: str = "config") -> None:
    """The model section's value rules (a config file and every ``model.json`` load alike)."""
    check_imgsz(m.imgsz, f"{source}: model.imgsz")
    from swdet.architectures import ARCHITECTURES, levels_ok

    if m.arch not in ARCHITECTURES:
        raise SwdetError(f"{source}: model.arch must be {' or '.join(ARCHITECTURES)}")
    arch = ARCHITECTURES[m.arch]
    checks = [
        (m.backbone in ("tiny", "resnet18", "resnet34", "resnet50"), "model.backbone",
         "tiny, resnet18, resnet34 or resnet50"),
        (m.head_norm in ("none", "gn", "bn"), "model.head_norm", "none, gn or bn"),
        (m.backbone_norm in ("bn", "frozen_bn"), "model.backbone_norm", "bn or frozen_bn"),
        (levels_ok(arch, m.min_level, m.max_level), "model.min_level/max_level", arch.level_rule),
        (0 < m.prior_prob < 1, "model.prior_prob", "in (0, 1)"),
        (len(m.backbone_blocks) == 4 and min(m.backbone_blocks) >= 1, "model.backbone_blocks",
         "four block counts, each at least 1"),
        (m.num_classes >= 1, "model.num_classes", "at least 1"),
        (min(m.fpn_channels, m.head_channels, m.backbone_width) >= 1,
         "model.fpn_channels/head_channels/backbone_width", "at least 1"),
        (m.head_convs >= 0, "model.head_convs", "non-negative"),
        (m.frozen_stages >= 0, "model.frozen_stages", "non-negative"),
        (m.anchor_size > 0, "model.anchor_size", "positive"),
        (len(m.anchor_scales) >= 1 and min(m.anchor_scales) > 0, "model.anchor_scales",
         "a non-empty list of positive numbers"),
        (len(m.anchor_ratios) >= 1 and min(m.anchor_ratios) > 0, "model.anchor_ratios",
         "a non-empty list of positive numbers"),
    ]
    if arch.two_stage:
        checks += [
            (min(m.rpn_pre_nms_topk, m.rpn_post_nms_topk, m.rpn_pre_nms_topk_train, m.rpn_post_nms_topk_train) >= 1,
             "model.rpn_*_nms_topk*", "at least 1"),
            (0 < m.rpn_nms_iou <= 1, "model.rpn_nms_iou", "in (0, 1]"),
            (m.roi_size >= 1 and m.roi_sampling_ratio >= 1, "model.roi_size/roi_sampling_ratio", "at least 1"),
            (m.box_head_dim >= 1, "model.box_head_dim", "at least 1"),
            (m.rpn_nms_iters_train >= 2, "model.rpn_nms_iters_train", "at least 2"),
        ]
    _raise_first(checks, source)


def validate_postprocess(p: PostprocessConfig, source: str = "config") -> None:
    """The post-processing section's value rules (config files and ``model.json`` alike)."""
    _raise_first([
        (0 <= p.nms_iou <= 1, "postprocess.nms_iou", "in [0, 1]"),
        (p.max_det >= 1, "postprocess.max_det", "at least 1"),
        (p.pre_nms_topk >= 1, "postprocess.pre_nms_topk", "at least 1"),
        (0 <= p.score_threshold < 1, "postprocess.score_threshold", "in [0, 1)"),
    ], source)


def validate(cfg: Config, source: str = "config") -> None:
    """Value checks that types alone do not catch."""
    from swdet.architectures import ARCHITECTURES

    validate_model(cfg.model, source)
    validate_postprocess(cfg.postprocess, source)
    m, t, r = cfg.model, cfg.train, cfg.rcnn
    two_stage = ARCHITECTURES[m.arch].two_stage
    checks = [
        (t.iters >= 0, "train.iters", "non-negative"),
        (t.epochs >= 0, "train.epochs", "non-negative"),
        (t.batch_size >= 1, "train.batch_size", "at least 1"),
        (t.lr > 0, "train.lr", "positive"),
        (t.optimizer in ("sgd", "adamw"), "train.optimizer", "sgd or adamw"),
        (0 <= t.momentum < 1, "train.momentum", "in [0, 1)"),
        (t.schedule in ("step", "cosine"), "train.schedule", "step or cosine"),
        (t.amp in ("auto", "none", "bf16", "fp16"), "train.amp", "auto, none, bf16 or fp16"),
        (t.ckpt_every >= 0, "train.ckpt_every", "non-negative"),
        (t.ckpt_minutes >= 0, "train.ckpt_minutes", "non-negative"),
        (t.warmup_iters >= 0, "train.warmup_iters", "non-negative"),
        (t.log_every >= 1, "train.log_every", "at least 1"),
        (t.eval_every >= 0, "train.eval_every", "non-negative"),
        (t.max_bad_steps >= 1, "train.max_bad_steps", "at least 1"),
        (t.grad_clip >= 0, "train.grad_clip", "non-negative"),
        (0 <= cfg.loss.bg_iou <= cfg.loss.fg_iou <= 1, "loss.bg_iou/fg_iou", "0 <= bg_iou <= fg_iou <= 1"),
        (cfg.methods.noisy_anchors.topn >= 1, "methods.noisy_anchors.topn", "at least 1"),
        (0 <= cfg.methods.noisy_anchors.alpha <= 1, "methods.noisy_anchors.alpha", "in [0, 1]"),
        (cfg.methods.pisa.carl_k > 0, "methods.pisa.carl_k", "positive"),
        (0 <= cfg.methods.pisa.carl_bias < 1, "methods.pisa.carl_bias", "in [0, 1)"),
        (0 <= cfg.methods.pisa.isr_beta < 1, "methods.pisa.isr_beta", "in [0, 1)"),
        (cfg.methods.pisa.isr_gamma >= 0, "methods.pisa.isr_gamma", "non-negative"),
        (cfg.methods.sampling_free.guided_factor > 0, "methods.sampling_free.guided_factor", "positive"),
        (cfg.methods.swn.clip > 0, "methods.swn.clip", "positive"),
        (cfg.methods.swn.lr > 0, "methods.swn.lr", "positive"),
        (cfg.methods.swn.hidden >= 1, "methods.swn.hidden", "at least 1"),
        (cfg.methods.swn.exp_scale > 0, "methods.swn.exp_scale", "positive"),
        (cfg.methods.swn.groups in ("auto", "all", "pos_neg"), "methods.swn.groups", "auto, all or pos_neg"),
        (cfg.methods.swn.reg_inputs in (1, 4), "methods.swn.reg_inputs", "1 or 4"),
        (len(cfg.methods.swn.tasks) >= 1 and set(cfg.methods.swn.tasks) <= {"cls", "reg"}, "methods.swn.tasks",
         "a non-empty list of cls, reg"),
        (cfg.methods.swn.reg_inputs == 1 or cfg.loss.reg_loss != "giou", "methods.swn.reg_inputs",
         "1 with loss.reg_loss giou (a per-coordinate loss feeds 4 inputs)"),
        (cfg.methods.iou_balanced.cls_elements in ("gt", "all"), "methods.iou_balanced.cls_elements", "gt or all"),
        (cfg.methods.iou_balanced.normalize in ("level", "batch"), "methods.iou_balanced.normalize",
         "level or batch"),
        (cfg.methods.ohem.selection in ("mmdet", "paper", "negatives"), "methods.ohem.selection",
         "mmdet, paper or negatives"),
        (len(cfg.methods.sampling_free.heads) >= 1 and set(cfg.methods.sampling_free.heads) <= {"rpn", "roi"},
         "methods.sampling_free.heads", "a non-empty list of rpn, roi"),
        (0 < cfg.methods.ohem.nms_iou <= 1, "methods.ohem.nms_iou", "in (0, 1]"),
        (cfg.methods.ghm.bins >= 1, "methods.ghm.bins", "at least 1"),
        (0 <= cfg.methods.ghm.momentum < 1, "methods.ghm.momentum", "in [0, 1)"),
        (cfg.loss.reg_loss in ("smooth_l1", "l1", "giou", "ghm_r"), "loss.reg_loss", "smooth_l1, l1, giou or ghm_r"),
        (cfg.loss.reg_loss != "ghm_r" or not two_stage, "loss.reg_loss",
         "smooth_l1, l1 or giou for a two-stage model (ghm_r is RetinaNet's)"),
        (cfg.loss.reg_loss != "ghm_r" or {n.strip().lower() for m in cfg.loss.method for n in str(m).split(",")}
         <= {"focal", "bce", "ghm"}, "loss.reg_loss",
         "smooth_l1, l1 or giou with a weighting method (ghm_r only with a base loss: focal, bce or ghm; "
         "it normalizes itself, the methods' terms need per-positive losses)"),
        (cfg.methods.ghm_r.mu > 0, "methods.ghm_r.mu", "positive"),
        (cfg.methods.ghm_r.bins >= 1, "methods.ghm_r.bins", "at least 1"),
        (0 <= cfg.methods.ghm_r.momentum < 1, "methods.ghm_r.momentum", "in [0, 1)"),
        (len(cfg.loss.method) >= 1, "loss.method", "at least one method"),
    ]
    if two_stage:
        checks += [
            (0 <= r.rpn_bg_iou <= r.rpn_fg_iou <= 1, "rcnn.rpn_bg_iou/rpn_fg_iou", "0 <= bg <= fg <= 1"),
            (0 <= r.roi_bg_iou_lo <= r.roi_bg_iou_hi <= r.roi_fg_iou <= 1, "rcnn.roi_bg_iou_lo/hi, roi_fg_iou",
             "0 <= bg_lo <= bg_hi <= fg <= 1"),
            (r.rpn_batch >= 1 and r.roi_batch >= 1, "rcnn.rpn_batch/roi_batch", "at least 1"),
            (0 < r.rpn_pos_fraction <= 1 and 0 < r.roi_pos_fraction <= 1, "rcnn.*_pos_fraction", "in (0, 1]"),
            (cfg.methods.sampling_free.rpn_pos_norm > 0 and cfg.methods.sampling_free.roi_pos_norm > 0,
             "methods.sampling_free.rpn_pos_norm/roi_pos_norm", "positive"),
        ]
    _raise_first(checks, source)
    if t.device not in ("auto", "cpu", "cuda") and not t.device.startswith("cuda:"):
        raise SwdetError(f"{source}: train.device must be auto, cpu, cuda or cuda:N, got {t.device!r}")
