"""Backbones returning the C3..C5 feature maps (strides 8, 16, 32).

``ResNetBackbone`` wraps torchvision's ResNet-18/34/50 (ImageNet weights from torchvision when
reachable or from a local file); ``TinyBackbone`` is a 4-stage ResNet-style network narrow enough
to train from scratch on two CPU cores (or to start from the backbone of an earlier run:
``model.pretrained=runs/x/checkpoints/last.pt``).
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet
from torchvision.ops.misc import FrozenBatchNorm2d

from swdet.errors import SwdetError

_RESNETS = {
    "resnet18": (tv_resnet.resnet18, "ResNet18_Weights", [128, 256, 512]),
    "resnet34": (tv_resnet.resnet34, "ResNet34_Weights", [128, 256, 512]),
    "resnet50": (tv_resnet.resnet50, "ResNet50_Weights", [512, 1024, 2048]),
}


def _load_pretrained(name: str, pretrained: str) -> dict | None:
    """ImageNet weights for ``name``: a local file (``torch.load(weights_only=True)``, or
    safetensors), torchvision's download, or None (random init)."""
    if pretrained in ("none", "", None):
        return None
    if pretrained not in ("auto", "imagenet"):
        path = Path(pretrained)
        if not path.is_file():
            raise SwdetError(f"{path}: backbone weights file not found")
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is a user error
            raise SwdetError(f"{path}: cannot read backbone weights ({type(e).__name__})") from None
        return state.get("state_dict", state) if isinstance(state, dict) else None
    weights = getattr(tv_resnet, _RESNETS[name][1]).IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=False)
    except Exception as e:  # noqa: BLE001 - offline, proxy, corrupt cache...
        if pretrained == "imagenet":
            raise SwdetError(f"cannot download ImageNet weights for {name} ({type(e).__name__}); "
                             "pass model.pretrained=PATH to a local file") from None
        print(f"notice: ImageNet weights for {name} are not reachable ({type(e).__name__}); "
              "starting from random initialization", file=sys.stderr)
        return None


class ResNetBackbone(nn.Module):
    """torchvision ResNet trunk; ``forward`` returns ``[C3, C4, C5]``."""

    def __init__(self, name: str = "resnet50", pretrained: str = "auto", frozen_stages: int = 1,
                 norm: str = "frozen_bn"):
        super().__init__()
        builder, _, channels = _RESNETS[name]
        norm_layer = FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d
        net = builder(weights=None, norm_layer=norm_layer)
        state = _load_pretrained(name, pretrained)
        if state is not None:
            missing, unexpected = net.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith("fc.")]
            if missing:
                raise SwdetError(f"backbone weights do not fit {name}: missing {missing[0]} "
                                 f"and {len(missing) - 1} more")
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels = channels
        if state is not None:
            frozen = [self.stem, self.layer1, self.layer2, self.layer3, self.layer4][: frozen_stages + 1]
            for module in frozen:
                for p in module.parameters():
                    p.requires_grad_(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        c2 = self.layer1(self.stem(x))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
        bn=nn.BatchNorm2d(cout),
        act=nn.ReLU(inplace=True),
    ))


class TinyBlock(nn.Module):
    """A ResNet basic block with a stride-2 3x3 projection: ``y = relu(conv(conv(x)) + proj(x))``."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, stride)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn2(self.conv2(self.conv1(x))) + self.proj(x))


def _tiny_state(pretrained: str) -> dict | None:
    """The tiny backbone's weights from ``pretrained``: ``"none"`` (random init) or a file read
    with ``torch.load(weights_only=True)`` (or safetensors) holding the backbone's state dict, or
    a whole detector's (an swdet checkpoint's ``"model"``, a run's ``model.safetensors``), whose
    ``backbone.`` entries are taken. There are no ImageNet weights for it."""
    if pretrained in ("none", "auto", "", None):
        return None
    if pretrained == "imagenet":
        raise SwdetError("model.pretrained=imagenet: there are no ImageNet weights for the tiny backbone "
                         "(use none, or a path to an earlier run's checkpoint)")
    state = _load_pretrained("tiny", pretrained)  # a path: .pt (weights only) or .safetensors
    if isinstance(state, dict) and isinstance(state.get("model"), dict):  # an swdet checkpoint
        state = state["model"]
    if not isinstance(state, dict):
        raise SwdetError(f"{pretrained}: not a state dict")
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    elif any(k.split(".")[0] in ("fpn", "head", "rpn", "roi_heads") for k in state):
        raise SwdetError(f"{pretrained}: a detector's weights without backbone.* entries")
    return state


class TinyBackbone(nn.Module):
    """Stem (stride 4), then four stages of widths ``w, 2w, 4w, 8w`` (the last three stride 2)
    with ``blocks[i]`` basic blocks each; returns C3..C5. ``pretrained``: see :func:`_tiny_state`
    (every stage stays trainable)."""

    def __init__(self, width: int = 24, blocks: tuple[int, ...] | list[int] = (1, 1, 1, 1),
                 pretrained: str = "none"):
        super().__init__()
        w = width
        self.stem = nn.Sequential(_conv_bn(3, w // 2, 2), _conv_bn(w // 2, w, 2))

        def stage(cin: int, cout: int, stride: int, n: int) -> nn.Module:
            first = TinyBlock(cin, cout, stride)
            return first if n == 1 else nn.Sequential(first, *[TinyBlock(cout, cout, 1) for _ in range(n - 1)])

        self.layer1 = stage(w, w, 1, blocks[0])
        self.layer2 = stage(w, 2 * w, 2, blocks[1])
        self.layer3 = stage(2 * w, 4 * w, 2, blocks[2])
        self.layer4 = stage(4 * w, 8 * w, 2, blocks[3])
        self.out_channels = [2 * w, 4 * w, 8 * w]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        state = _tiny_state(pretrained)
        if state is not None:
            own = self.state_dict()
            missing = [k for k in own if k not in state]
            unexpected = [k for k in state if k not in own]
            misfit = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch for", misfit)):
                if keys:
                    more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
                    raise SwdetError(f"{pretrained}: backbone weights do not fit the tiny backbone "
                                     f"(width {width}, blocks {list(blocks)}): {what} {keys[0]}{more}")
            self.load_state_dict(state, strict=True)

    def forward(self, x: Tensor) -> list[Tensor]:
        c3 = self.layer2(self.layer1(self.stem(x)))
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]


def build_backbone(cfg) -> nn.Module:
    if cfg.backbone == "tiny":
        return TinyBackbone(cfg.backbone_width, cfg.backbone_blocks, cfg.pretrained)
    return ResNetBackbone(cfg.backbone, cfg.pretrained, cfg.frozen_stages, cfg.backbone_norm)
