"""Reverse Distillation's bottleneck and decoder for any timm CNN encoder, mirrored from its ``feature_info``.

anomalib builds RD's one-class bottleneck (OCBE) and decoder for ResNets only. Their structure follows from the
encoder's stages: every chosen stage is brought down to the deepest chosen stride by 3 × 3 stride-2 convolutions
whose widths are the encoder's own widths at the strides passed, the maps are concatenated, and residual blocks
at stride 2 give the embedding z with the width of the encoder's next stage; the decoder climbs back with
transposed-convolution residual blocks, one width per stride, again the encoder's. Read from timm's
``feature_info`` (channels and reduction of every stage), the same rule gives the bottleneck and decoder of any
CNN encoder. With ResNet basic blocks it rebuilds anomalib's resnet18/34 bottleneck and decoder exactly (same
layers, same parameter count), plus one 1 × 1 convolution per decoded stage (below).

Differences from RD's ResNet decoder, and why:

- each decoded stage ends in a 1 × 1 convolution with bias (linear): a generic encoder's stage may end without an
  activation (EfficientNet's MBConv ends in a projection and batch norm, its features take both signs), which a
  decoder ending in ReLU could never reproduce;
- two residual blocks per stride step (resnet18's decoder), whatever the encoder's depth.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from anomalib.models.components.backbone.resnet_decoder import DecoderBasicBlock
from torch import nn
from torchvision.models.resnet import BasicBlock

# the encoders anomalib has RD's own decoder for (``anomalib.models.components.backbone.get_decoder``)
RESNET_DECODER_BACKBONES = frozenset(
    {
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "resnext50_32x4d",
        "resnext101_32x8d",
        "wide_resnet50_2",
        "wide_resnet101_2",
    }
)
RESNET_LAYERS = (("layer1", "layer2", "layer3"), (1, 2, 3))
BLOCKS_PER_STEP = 2


def uses_resnet_decoder(backbone: str, layers: Sequence[str | int]) -> bool:
    """Whether RD's own ResNet bottleneck and decoder apply (a ResNet anomalib knows, stages layer1-3)."""
    return backbone.split(".")[0] in RESNET_DECODER_BACKBONES and tuple(layers) in RESNET_LAYERS


class EncoderWidths:
    """Channels of a timm encoder at each stride, from its ``feature_info`` (all stages, not only those used).

    Args:
        info: timm's ``feature_info.info``: one dict per stage with ``num_chs`` and ``reduction``.
        channels: Channels of the stages used.
        reductions: Strides of the stages used (increasing).
    """

    def __init__(self, info: Sequence[dict], channels: Sequence[int], reductions: Sequence[int]) -> None:
        self.channels = [int(c) for c in channels]
        self.reductions = [int(r) for r in reductions]
        if any(b <= a for a, b in zip(self.reductions, self.reductions[1:], strict=False)):
            msg = f"Encoder stages must have increasing strides, got {self.reductions}: choose one stage per stride."
            raise ValueError(msg)
        for r in self.reductions:
            if r & (r - 1):
                msg = f"Encoder stride {r} is not a power of two: the mirrored decoder climbs by factors of 2."
                raise ValueError(msg)
        self._width = {int(entry["reduction"]): int(entry["num_chs"]) for entry in info}  # the last stage per stride
        self._width.update(dict(zip(self.reductions, self.channels, strict=True)))

    @property
    def deepest(self) -> int:
        """Stride of the deepest stage used."""
        return self.reductions[-1]

    def at(self, stride: int) -> int:
        """Channels of the encoder at ``stride``; beyond its last stage, twice those of the stride before."""
        if stride in self._width:
            return self._width[stride]
        return 2 * self.at(stride // 2)

    @property
    def embedding(self) -> int:
        """Channels of the embedding z (stride 2 × the deepest): the encoder's next stage."""
        return self.at(2 * self.deepest)


def _down(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class MirroredBottleneck(nn.Module):
    """RD's one-class bottleneck for the stages in ``widths``: align, concatenate, fuse to z at twice the stride."""

    def __init__(self, widths: EncoderWidths, blocks: int = BLOCKS_PER_STEP) -> None:
        super().__init__()
        self.align = nn.ModuleList()
        for c, r in zip(widths.channels[:-1], widths.reductions[:-1], strict=True):
            steps, c_in, stride = [], c, r
            while stride < widths.deepest:
                stride *= 2
                steps.append(_down(c_in, widths.at(stride)))
                c_in = widths.at(stride)
            self.align.append(nn.Sequential(*steps))
        fused = widths.channels[-1] * len(widths.channels)
        embedding = widths.embedding
        downsample = nn.Sequential(
            nn.Conv2d(fused, embedding, kernel_size=1, stride=2, bias=False), nn.BatchNorm2d(embedding)
        )
        layers = [BasicBlock(fused, embedding, stride=2, downsample=downsample)]
        layers += [BasicBlock(embedding, embedding) for _ in range(1, blocks)]
        self.fuse = nn.Sequential(*layers)
        _init(self)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Stage maps (shallow to deep) -> z."""
        aligned = [step(f) for step, f in zip(self.align, features[:-1], strict=True)]
        return self.fuse(torch.cat([*aligned, features[-1]], dim=1)).contiguous()


class MirroredDecoder(nn.Module):
    """RD's decoder for the stages in ``widths``: from z up to the shallowest stage, one map per stage used."""

    def __init__(self, widths: EncoderWidths, blocks: int = BLOCKS_PER_STEP) -> None:
        super().__init__()
        self.steps = nn.ModuleList()
        self.heads = nn.ModuleList()  # a linear 1 x 1 convolution where a step reaches a stage used, else Identity
        self.is_output: list[bool] = []
        c_in, stride = widths.embedding, 2 * widths.deepest
        while stride > widths.reductions[0]:
            stride //= 2
            c_out = widths.at(stride)
            upsample = nn.Sequential(
                nn.ConvTranspose2d(c_in, c_out, kernel_size=2, stride=2, bias=False), nn.BatchNorm2d(c_out)
            )
            layers = [DecoderBasicBlock(c_in, c_out, stride=2, upsample=upsample)]
            layers += [DecoderBasicBlock(c_out, c_out) for _ in range(1, blocks)]
            self.steps.append(nn.Sequential(*layers))
            output = stride in widths.reductions
            self.is_output.append(output)
            self.heads.append(nn.Conv2d(c_out, c_out, kernel_size=1, bias=True) if output else nn.Identity())
            c_in = c_out
        _init(self)

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Embedding z -> the decoded maps, shallow to deep (as the encoder's)."""
        outputs = []
        for step, head, is_output in zip(self.steps, self.heads, self.is_output, strict=True):
            z = step(z)
            if is_output:
                outputs.append(head(z))
        return outputs[::-1]


def _init(module: nn.Module) -> None:
    """RD's initialisation: Kaiming (fan out) for convolutions, unit scale and zero shift for batch norms."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
