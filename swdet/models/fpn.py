"""Feature Pyramid Network (Lin et al. 2017) with RetinaNet's extra levels.

``P_l = conv3x3(lateral(C_l) + upsample(P_{l+1}))`` for l = 3..5; P6 = conv3x3/s2(C5) and
P7 = conv3x3/s2(relu(P6)) as in RetinaNet (levels above ``max_level`` are not built).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class FPN(nn.Module):
    def __init__(self, in_channels: list[int], out_channels: int, min_level: int = 3, max_level: int = 7):
        super().__init__()
        self.min_level, self.max_level = min_level, max_level
        # C3..C5 are levels 3..5; levels below min_level are dropped after the top-down pass.
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        self.extra = nn.ModuleList()
        cin = in_channels[-1]
        for _ in range(6, max_level + 1):
            self.extra.append(nn.Conv2d(cin, out_channels, 3, stride=2, padding=1))
            cin = out_channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        laterals = [lat(f) for lat, f in zip(self.lateral, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            # imgsz is a multiple of 32, so each level is exactly twice the next: a constant scale
            # keeps Shape ops out of the exported graph (int8 convs then fuse in ONNX Runtime)
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], scale_factor=2.0, mode="nearest")
        outs = [conv(x) for conv, x in zip(self.output, laterals)]
        x = feats[-1]
        for i, conv in enumerate(self.extra):
            x = conv(x if i == 0 else F.relu(x))
            outs.append(x)
        return outs[self.min_level - 3: self.max_level - 2]
