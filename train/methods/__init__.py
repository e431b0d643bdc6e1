"""The ``--method`` names and how they compose.

Base classification losses: ``focal`` (α 0.25, γ 2), ``bce``, ``ghm`` (GHM-C). Weighting methods:
``pisa``, ``iou_balanced``, ``sampling_free``, ``noisy_anchors``, ``swn`` (RetinaNet and the
Faster R-CNN heads of docs/design.md's method table), and the two-stage sampling baselines ``random`` and
``ohem``. ``--method pisa,swn`` applies both, in that order (weights multiply); at most one base
loss may be named, and it overrides the methods' own (``sampling_free,focal`` is the papers'
harmful hybrid: allowed, with a warning).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from swdet.errors import SwdetError
from swdet.train.methods.base import Method, SampleRecord, Weights

BASE_LOSSES = ("focal", "bce", "ghm")
SAMPLERS = ("random", "ohem")  # two-stage sampling baselines
# The methods of docs/design.md's table for each detector (what the methods benchmark trains).
RETINANET_METHODS = ("focal", "pisa", "iou_balanced", "sampling_free", "noisy_anchors", "swn")
FASTER_RCNN_METHODS = ("random", "ohem", "pisa", "swn", "sampling_free", "noisy_anchors")


def method_classes() -> dict[str, type[Method]]:
    """Name -> class of every weighting method (explicit; no registry)."""
    from swdet.train.methods.iou_balanced import IoUBalanced
    from swdet.train.methods.noisy_anchors import NoisyAnchors
    from swdet.train.methods.pisa import Pisa
    from swdet.train.methods.sampling_free import SamplingFree
    from swdet.train.methods.swn import SWN

    return {"pisa": Pisa, "iou_balanced": IoUBalanced, "sampling_free": SamplingFree,
            "noisy_anchors": NoisyAnchors, "swn": SWN}


def all_method_names() -> list[str]:
    return list(BASE_LOSSES) + list(method_classes()) + list(SAMPLERS)


# The papers report these as harmful: Sampling-Free Table 3 (with focal loss: -0.1 AP) and its
# premise (a non-sampling loss; GHM-C is a soft-sampling heuristic).
HARMFUL = {
    frozenset({"sampling_free", "focal"}): "Sampling-Free with focal loss (the paper's Table 3: -0.1 AP)",
    frozenset({"sampling_free", "ghm"}): "Sampling-Free with GHM-C, a sampling heuristic it replaces",
    frozenset({"sampling_free", "ohem"}): "Sampling-Free with OHEM (the paper's Table 4: sampling + "
                                          "Sampling-Free loses AP)",
    frozenset({"sampling_free", "random"}): "Sampling-Free with random sampling (the paper's Table 4)",
}


@dataclass
class MethodSet:
    names: list[str]
    cls_loss: str
    assigner: str
    methods: list[Method]
    sampler: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def needs_stats(self) -> bool:
        return any(getattr(m, "needs_stats", False) for m in self.methods)

    @property
    def sets_threshold(self) -> bool:
        return any(m.sets_threshold for m in self.methods)

    def prepare(self, model: nn.Module, stats: dict | None) -> None:
        for m in self.methods:
            m.prepare(model, stats)

    def modules(self) -> nn.ModuleDict:
        return nn.ModuleDict({m.name: m.module() for m in self.methods if m.module() is not None})

    def optimizer(self, modules: nn.ModuleDict, fused: bool = False) -> torch.optim.Optimizer | None:
        opts = [m.optimizer(modules[m.name], fused=fused) for m in self.methods if m.name in modules]
        if len(opts) > 1:
            raise SwdetError("only one method with its own optimizer can be combined")
        return opts[0] if opts else None

    def diagnostics(self) -> dict:
        out: dict = {}
        for m in self.methods:
            out.update(m.diagnostics())
        return out

    def state_dict(self) -> dict:
        return {m.name: m.state_dict() for m in self.methods}

    def load_state_dict(self, state: dict) -> None:
        for m in self.methods:
            if m.name in state:
                m.load_state_dict(state[m.name])


def parse_method_names(spec) -> list[str]:
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip().lower().replace("-", "_") for n in names if n and n.strip()]
    if not names:
        raise SwdetError("--method: empty; choose from " + ", ".join(all_method_names()))
    known = all_method_names()
    for n in names:
        if n not in known:
            import difflib

            close = difflib.get_close_matches(n, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SwdetError(f"--method: unknown method {n!r}{hint}; choose from {', '.join(known)}")
    if len(set(names)) != len(names):
        raise SwdetError(f"--method: {','.join(names)} names a method twice")
    return names


def build_methods(spec, params, arch: str = "retinanet") -> MethodSet:
    """Resolve ``--method`` into a base loss, an assignment rule and the weighting methods."""
    names = parse_method_names(spec)
    bases = [n for n in names if n in BASE_LOSSES]
    samplers = [n for n in names if n in SAMPLERS]
    if len(bases) > 1:
        raise SwdetError(f"--method: {' and '.join(bases)} are both base losses; name at most one")
    if len(samplers) > 1:
        raise SwdetError(f"--method: {' and '.join(samplers)} are both samplers; name at most one")
    if samplers and arch != "faster_rcnn":
        raise SwdetError(f"--method {samplers[0]}: a two-stage sampling baseline (use a faster_rcnn model)")
    classes = method_classes()
    methods: list[Method] = []
    for n in names:
        if n in classes:
            methods.append(classes[n](getattr(params, n)))
    heads = {"faster_rcnn": {"rpn", "roi"}}.get(arch, {"retina"})
    for m in methods:
        if not m.heads & heads:
            raise SwdetError(f"--method {m.name}: does not apply to {arch} (it applies to "
                             f"{', '.join(sorted(m.heads))} heads)")
    # SWN consumes the losses as weighted by the others, so it goes last.
    methods.sort(key=lambda m: 1 if m.name == "swn" else 0)
    # Faster R-CNN: the base loss named here is the RPN's (sigmoid objectness, BCE by default); the
    # RoI head's classifier is always a softmax cross-entropy over C + 1 classes.
    dense = [m for m in methods if "rpn" in m.heads] if arch == "faster_rcnn" else methods
    wanted = {m.default_cls_loss for m in dense if m.default_cls_loss}
    if bases:
        cls_loss = bases[0]
    elif len(wanted) > 1:
        raise SwdetError(f"--method {','.join(names)}: the methods use different base losses "
                         f"({', '.join(sorted(wanted))}); add the one to use, e.g. {names[0]},focal")
    else:
        cls_loss = wanted.pop() if wanted else ("bce" if arch == "faster_rcnn" else "focal")
    if cls_loss == "ghm" and any(m.name == "swn" for m in methods):
        # GHM-C's density weights already normalize the loss; SWN's Eq. 9 terms assume per-sample
        # losses normalized by the positives.
        raise SwdetError(f"--method {','.join(names)}: swn cannot be combined with ghm (GHM-C normalizes "
                         "itself; SWN's terms need per-sample losses)")
    rules = {m.assigner for m in methods if m.assigner}
    if len(rules) > 1:
        raise SwdetError(f"--method {','.join(names)}: incompatible anchor assignment rules")
    warns = [f"--method {','.join(names)}: {why}; allowed, but the papers report it as harmful"
             for combo, why in HARMFUL.items() if combo <= set(names) | {cls_loss}
             and ("sampling_free" in names)]
    return MethodSet(names=names, cls_loss=cls_loss, assigner=rules.pop() if rules else "max_iou",
                     methods=methods, sampler=samplers[0] if samplers else None, warnings=warns)


__all__ = ["Method", "SampleRecord", "Weights", "MethodSet", "build_methods", "parse_method_names",
           "BASE_LOSSES", "SAMPLERS", "RETINANET_METHODS", "FASTER_RCNN_METHODS", "all_method_names"]
