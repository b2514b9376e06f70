"""DeepLabV3 (ASPP head) on a dilated ResNet, in plain torch: the model for GPU runs.

Written here rather than taken from torchvision, which is not a dependency (it has no CPU build on every
registry). The layout follows torchvision's ``deeplabv3_resnet50``: output stride 8, an ASPP head on layer4
and an optional FCN auxiliary head on layer3. Weights start from scratch (no download is ever made).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        nn.init.zeros_(self.bn3.weight)  # residual branches start as identity: stabler from scratch
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = F.relu(self.bn2(self.conv2(y)), inplace=True)
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)), inplace=True)


class ResNet(nn.Module):
    """ResNet-50/101 trunk with layer3 and layer4 dilated (output stride 8)."""

    def __init__(self, blocks: tuple[int, ...] = (3, 4, 6, 3), width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        cin, layers = width, []
        for i, (n, stride, dilation) in enumerate(zip(blocks, (1, 2, 1, 1), (1, 1, 2, 4))):
            w = width * 2**i
            layer = [Bottleneck(cin, w, stride, dilation)]
            cin = w * Bottleneck.expansion
            layer += [Bottleneck(cin, w, 1, dilation) for _ in range(n - 1)]
            layers.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.channels = (cin // 2, cin)  # layer3, layer4

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.layer2(self.layer1(self.stem(x)))
        c3 = self.layer3(x)
        return c3, self.layer4(c3)


class ASPP(nn.Module):
    def __init__(self, cin: int, cout: int = 256, rates: tuple[int, ...] = (12, 24, 36)) -> None:
        super().__init__()

        def branch(k: int, d: int) -> nn.Sequential:
            pad = 0 if k == 1 else d
            return nn.Sequential(nn.Conv2d(cin, cout, k, padding=pad, dilation=d, bias=False), nn.BatchNorm2d(cout),
                                 nn.ReLU(inplace=True))

        self.branches = nn.ModuleList([branch(1, 1)] + [branch(3, r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.ReLU(inplace=True))
        self.project = nn.Sequential(nn.Conv2d(cout * (len(rates) + 2), cout, 1, bias=False), nn.BatchNorm2d(cout),
                                     nn.ReLU(inplace=True), nn.Dropout(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class DeepLabV3(nn.Module):
    """Returns ``{"out": logits}`` (and ``{"aux": [logits]}`` from layer3) upsampled to the input size."""

    def __init__(self, num_classes: int, depth: int = 50, width: int = 64, aux_head: bool = True) -> None:
        super().__init__()
        blocks = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
        if depth not in blocks:
            raise ValueError(f"model.depth: expected 50 or 101, got {depth}")
        self.backbone = ResNet(blocks[depth], width)
        c3, c4 = self.backbone.channels
        self.head = nn.Sequential(ASPP(c4), nn.Conv2d(256, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256),
                                  nn.ReLU(inplace=True), nn.Conv2d(256, num_classes, 1))
        self.aux = None
        if aux_head:
            self.aux = nn.Sequential(nn.Conv2d(c3, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256),
                                     nn.ReLU(inplace=True), nn.Dropout(0.1), nn.Conv2d(256, num_classes, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        size = x.shape[-2:]
        c3, c4 = self.backbone(x)
        out: dict[str, torch.Tensor | list[torch.Tensor]] = {
            "out": F.interpolate(self.head(c4), size=size, mode="bilinear", align_corners=False)}
        if self.aux is not None:
            out["aux"] = [F.interpolate(self.aux(c3), size=size, mode="bilinear", align_corners=False)]
        return out
