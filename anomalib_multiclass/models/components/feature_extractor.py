"""Frozen multi-stage feature extraction, aligned to one map and concatenated (UniAD's MFCN neck)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from anomalib.models.components.feature_extractors import TimmFeatureExtractor
from torch import nn


class MultiStageFeatureExtractor(nn.Module):
    """A frozen timm backbone whose stages are resized to one map size and concatenated.

    The stages are timm ``features_only`` out-indices (for EfficientNets index 0..3 are the stages at
    strides 2/4/8/16: UniAD's ``outlayers [1,2,3,4]``). Each map is bilinearly resized to the map of
    ``align_to`` (default: the deepest stage used), as UniAD's MFCN neck does (its ``UpsamplingBilinear2d``
    has ``align_corners=True``), and the maps are concatenated along channels.

    Args:
        backbone: timm model name, e.g. ``"tf_efficientnet_b4.aa_in1k"``.
        layers: timm out-indices of the stages to use.
        pre_trained: Load ImageNet weights through timm.
        align_to: Index into ``layers`` of the stage whose map size the others are resized to.
        truncate: Drop the backbone blocks after the deepest stage used (timm's ``features_only`` EfficientNets
            keep and run all of them); the features are identical, the frozen model smaller and faster.
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_b4.aa_in1k",
        layers: Sequence[int] = (0, 1, 2, 3),
        pre_trained: bool = True,
        align_to: int = -1,
        truncate: bool = False,
    ) -> None:
        super().__init__()
        self.extractor = TimmFeatureExtractor(backbone, layers=list(layers), pre_trained=pre_trained).eval()
        if truncate:
            _truncate_after_last_stage(self.extractor.feature_extractor)
        for parameter in self.extractor.parameters():
            parameter.requires_grad_(False)
        self.layers = list(layers)
        self.align_to = align_to
        self.out_dims = list(self.extractor.out_dims)
        self.reductions = list(self.extractor.reductions)

    @property
    def num_features(self) -> int:
        """Channels of the concatenated map."""
        return sum(self.out_dims)

    @property
    def stride(self) -> int:
        """Stride of the concatenated map relative to the input image."""
        return self.reductions[self.align_to]

    def grid(self, input_size: tuple[int, int]) -> tuple[int, int]:
        """Feature-map size for ``input_size`` images; the size must be a multiple of the stride."""
        if input_size[0] % self.stride or input_size[1] % self.stride:
            msg = f"input_size {tuple(input_size)} must be a multiple of the backbone stride {self.stride}."
            raise ValueError(msg)
        return input_size[0] // self.stride, input_size[1] // self.stride

    def train(self, mode: bool = True) -> MultiStageFeatureExtractor:
        """The backbone stays in eval mode (frozen batch-norm statistics) whatever the parent's mode."""
        super().train(mode)
        self.extractor.eval()
        return self

    def grids(self, input_size: tuple[int, int]) -> list[tuple[int, int]]:
        """Map size of every stage for ``input_size`` images (a multiple of the deepest stride)."""
        deepest = max(self.reductions)
        if input_size[0] % deepest or input_size[1] % deepest:
            msg = f"input_size {tuple(input_size)} must be a multiple of the backbone stride {deepest}."
            raise ValueError(msg)
        return [(input_size[0] // r, input_size[1] // r) for r in self.reductions]

    @torch.no_grad()
    def stage_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Images (B, 3, H, W) -> the stage maps, each at its own resolution."""
        return list(self.extractor(images).values())

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> aligned concatenated features (B, C, H/stride, W/stride)."""
        features = self.stage_features(images)
        size = features[self.align_to].shape[-2:]
        aligned = [
            f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=True)
            for f in features
        ]
        return torch.cat(aligned, dim=1)


def _truncate_after_last_stage(model: nn.Module) -> None:
    """Remove the ``blocks`` after the deepest feature stage of a timm ``features_only`` EfficientNet/MobileNet."""
    blocks = getattr(model, "blocks", None)
    info = getattr(model, "feature_info", None)
    if not isinstance(blocks, nn.Sequential) or info is None:
        return  # other families (ResNets: FeatureListNet) already stop at the last stage used
    last = max(int(name.split(".")[1]) for name in info.module_name() if name.startswith("blocks."))
    model.blocks = blocks[: last + 1]
