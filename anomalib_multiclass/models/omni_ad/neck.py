"""Omni-AD's RD-style neck: three teacher maps fused into one map at twice the deepest width, stride 32."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _cbr(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, bias: bool = False) -> nn.Sequential:
    """Conv + BatchNorm + ReLU (the neck's "CBR" unit)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1, 3x3 with the stride, 1x1 to 4x planes; BN after each; projection shortcut)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = (
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual bottleneck."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.downsample(x))


class FusionNeck(nn.Module):
    """RD / MambaAD-style neck: fuse three stages (strides s, 2s, 4s) into one map at 8s with ``out_channels``.

    a = CBR3x3/2(e1); b = CBR1x1(e2) + a; c = CBR3x3/2(b) + CBR1x1(e3); d = CBR1x1(c); z = 3 bottlenecks (the first
    with stride 2). Widths follow the teacher: for ResNet-34 (64, 128, 256) -> 512 x H/32 x W/32.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_bottlenecks: int = 3) -> None:
        super().__init__()
        c1, c2, c3 = (int(c) for c in in_channels)
        if out_channels % Bottleneck.expansion:
            msg = f"The neck width {out_channels} must be a multiple of {Bottleneck.expansion} (bottleneck expansion)."
            raise ValueError(msg)
        self.down1 = _cbr(c1, c2, 3, stride=2)
        self.lateral2 = _cbr(c2, c2, 1, bias=True)
        self.down2 = _cbr(c2, c3, 3, stride=2)
        self.lateral3 = _cbr(c3, c3, 1, bias=True)
        self.mix = _cbr(c3, c3, 1, bias=True)
        planes = out_channels // Bottleneck.expansion
        blocks = [Bottleneck(c3, planes, stride=2)]
        blocks += [Bottleneck(out_channels, planes) for _ in range(num_bottlenecks - 1)]
        self.bottleneck = nn.Sequential(*blocks)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """[e1, e2, e3] -> z (B, out_channels, h3 / 2, w3 / 2)."""
        e1, e2, e3 = features
        b = self.lateral2(e2) + self.down1(e1)
        c = self.down2(b) + self.lateral3(e3)
        return self.bottleneck(self.mix(c))


# --------------------------------------------------------------------------------------------------- block
