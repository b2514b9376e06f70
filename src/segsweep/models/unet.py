"""A small UNet: fast enough to train on a laptop CPU in minutes, the default model."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(conv_bn_relu(cin, cout), conv_bn_relu(cout, cout))


class UNet(nn.Module):
    """Encoder-decoder with skip connections; ``depth`` poolings, channels doubling from ``base_channels``.

    Returns ``{"out": logits}`` at the input resolution, plus ``{"aux": [logits]}`` from the bottleneck
    (upsampled) when ``aux_head`` is set, for deep supervision.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, base_channels: int = 16, depth: int = 3,
                 aux_head: bool = False) -> None:
        super().__init__()
        chans = [base_channels * 2**i for i in range(depth + 1)]
        self.stem = DoubleConv(in_channels, chans[0])
        self.down = nn.ModuleList(DoubleConv(chans[i], chans[i + 1]) for i in range(depth))
        self.up = nn.ModuleList(nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in reversed(range(depth)))
        self.dec = nn.ModuleList(DoubleConv(2 * chans[i], chans[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(chans[0], num_classes, 1)
        self.aux = nn.Conv2d(chans[-1], num_classes, 1) if aux_head else None
        self.divisor = 2**depth

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        size = x.shape[-2:]
        # Pad to a multiple of 2**depth so that every skip connection lines up, crop back at the end.
        ph, pw = (-size[0]) % self.divisor, (-size[1]) % self.divisor
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        skips = [self.stem(x)]
        for block in self.down:
            skips.append(block(F.max_pool2d(skips[-1], 2)))
        y = skips.pop()
        bottleneck = y
        for up, dec in zip(self.up, self.dec):
            y = dec(torch.cat([up(y), skips.pop()], dim=1))
        out: dict[str, torch.Tensor | list[torch.Tensor]] = {"out": self.head(y)[..., : size[0], : size[1]]}
        if self.aux is not None:
            aux = F.interpolate(self.aux(bottleneck), size=x.shape[-2:], mode="bilinear", align_corners=False)
            out["aux"] = [aux[..., : size[0], : size[1]]]
        return out
