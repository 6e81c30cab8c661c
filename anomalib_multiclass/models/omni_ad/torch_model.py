"""Omni-AD (Quan et al., ICME 2025) in plain PyTorch: a reverse-distillation decoder of Omni-blocks.

A frozen ImageNet CNN (ResNet-34 stages 1-3) gives three maps e1, e2, e3; an RD-style neck fuses them into one
map z at stride 32 with twice the deepest width; z is jittered in training and decoded by four stages of
Omni-blocks (global branch: two attentions with learnable tokens; local branch: depthwise convolutions), with a
2x patch expansion before stages 2-4. The last three stage outputs reconstruct e3, e2, e1; the anomaly map is the
mean over scales of 1 - cosine similarity, upsampled to the image and Gaussian-smoothed (sigma 4).

Export notes: channels-last tensors handled with reshape/permute, tokens broadcast with ``expand``, the
nearest-neighbour token upsampling is an index buffer built from ``input_size``, nothing random in eval.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from anomalib_multiclass.data.dataclasses import MultiClassInferenceBatch
from anomalib_multiclass.models.components.feature_extractor import FrozenBackbone
from anomalib_multiclass.models.components.jitter import feature_jitter
from anomalib_multiclass.models.components.scoring import check_feature_sizes, multi_level_forward, score_blur
from anomalib_multiclass.models.omni_ad.blocks import OmniDecoder
from anomalib_multiclass.models.omni_ad.neck import FusionNeck


class FrozenTeacher(FrozenBackbone):
    """A timm CNN whose selected stages are the reconstruction targets; frozen and always in eval mode.

    Args:
        backbone: timm model name (Omni-AD: ``resnet34.bt_in1k``, the torchvision-trained weights that the
            official code's timm 0.8 loads for ``resnet34``).
        layers: Three stages (timm out-indices or layer names), shallowest first, at strides 4/8/16.
        pre_trained: Load ImageNet weights through timm.
        weights: Local file with the teacher's weights (timm format), loaded instead of the download.
    """

    def __init__(
        self,
        backbone: str = "resnet34.bt_in1k",
        layers: Sequence[str | int] = ("layer1", "layer2", "layer3"),
        pre_trained: bool = True,
        weights: str | None = None,
    ) -> None:
        super().__init__(backbone, layers, pre_trained=pre_trained, weights=weights)
        if len(self.out_dims) != 3:
            msg = f"Omni-AD reconstructs three teacher stages, got {len(self.out_dims)} layers: {list(layers)}."
            raise ValueError(msg)
        if [r // self.reductions[0] for r in self.reductions] != [1, 2, 4]:
            msg = f"The teacher stages must have strides s, 2s, 4s (the neck halves twice); got {self.reductions}."
            raise ValueError(msg)


class OmniADModel(nn.Module):
    """Omni-AD: frozen teacher -> fusion neck -> jitter (training) -> Omni-block decoder -> 1 - cos anomaly map.

    Args:
        backbone: timm teacher (``resnet34.bt_in1k``); any CNN whose three ``layers`` have strides s, 2s, 4s.
        layers: The three teacher stages (ResNet: ``layer1``-``layer3``; EfficientNet: out-indices 1, 2, 3).
        pre_trained: ImageNet weights for the teacher.
        backbone_weights: Local timm weights file of the backbone, used instead of the download.
        input_size: Image size the model runs at (a multiple of 8 x the first stage's stride: 32 for ResNets).
        dims: Decoder widths; ``None`` derives them from the teacher widths (C1, C2, C3) as (2 C3, C3, C2, C1)
            (ResNet-34: 512, 256, 128, 64). The last three must equal C3, C2, C1 (they reconstruct e3, e2, e1);
            the first is also the neck's output width.
        depths: Omni-blocks per decoder stage (3, 9, 9, 7).
        num_tokens: Learnable tokens T per block (64, a perfect square).
        num_heads: Attention heads (8).
        jitter_scale: Feature-jitter α on the neck output (20); 0 disables it.
        jitter_prob: Probability of jittering a training batch (1.0).
        blur_sigma: σ of the Gaussian smoothing of the anomaly map (4; 33-tap kernel).
        official_code_behaviour: Zero-initialised tokens and unregistered random output maps, as released
            (see :class:`OmniBlock`). Default off: trained output maps, trunc-normal tokens.
        double_input_residual: Add the block input twice to the global branch (released code); False: paper.
    """

    def __init__(
        self,
        backbone: str = "resnet34.bt_in1k",
        layers: Sequence[str | int] = ("layer1", "layer2", "layer3"),
        pre_trained: bool = True,
        backbone_weights: str | None = None,
        input_size: tuple[int, int] = (256, 256),
        dims: Sequence[int] | None = None,
        depths: Sequence[int] = (3, 9, 9, 7),
        num_tokens: int = 64,
        num_heads: int = 8,
        jitter_scale: float = 20.0,
        jitter_prob: float = 1.0,
        blur_sigma: float = 4.0,
        official_code_behaviour: bool = False,
        double_input_residual: bool = True,
    ) -> None:
        super().__init__()
        self.teacher = FrozenTeacher(backbone, layers, pre_trained=pre_trained, weights=backbone_weights)
        c1, c2, c3 = self.teacher.out_dims
        dims = [2 * c3, c3, c2, c1] if dims is None else [int(d) for d in dims]
        if len(dims) != 4 or len(depths) != 4:
            msg = f"Omni-AD's decoder has four stages: got dims {dims}, depths {list(depths)}."
            raise ValueError(msg)
        if dims[1:] != [c3, c2, c1]:
            msg = f"Decoder stages 2-4 reconstruct the teacher stages: their widths must be {[c3, c2, c1]}, got {dims}."
            raise ValueError(msg)
        self.input_size = tuple(int(s) for s in input_size)
        stride = 8 * self.teacher.reductions[0]
        if self.input_size[0] % stride or self.input_size[1] % stride:
            msg = f"input_size {self.input_size} must be a multiple of {stride} (the neck's output stride)."
            raise ValueError(msg)
        self.feature_sizes = [(self.input_size[0] // r, self.input_size[1] // r) for r in self.teacher.reductions]
        self.dims = dims
        self.neck = FusionNeck(self.teacher.out_dims, dims[0])
        self.decoder = OmniDecoder(
            dims,
            depths,
            (self.input_size[0] // stride, self.input_size[1] // stride),
            num_tokens=num_tokens,
            num_heads=num_heads,
            official_code_behaviour=official_code_behaviour,
            double_input_residual=double_input_residual,
        )
        self.jitter_scale = jitter_scale
        self.jitter_prob = jitter_prob
        self.blur = score_blur(blur_sigma, size=self.input_size, sources=self.feature_sizes)

    def extract_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The frozen part: images (B, 3, H, W) -> [e1, e2, e3] teacher maps (the decoder's targets)."""
        return self.teacher(images)

    def reconstruct(self, features: Sequence[torch.Tensor], explicit_attention: bool = False) -> list[torch.Tensor]:
        """[e1, e2, e3] -> their reconstructions [d1, d2, d3] (same shapes); jitter in training only."""
        check_feature_sizes([f.shape[-2:] for f in features], self.feature_sizes, self.input_size)
        z = self.neck(features)
        if self.training:
            z = feature_jitter(z, self.jitter_scale, self.jitter_prob, dim=1)
        stages = self.decoder(z, explicit_attention)
        return [stages[3], stages[2], stages[1]]

    def anomaly_map(
        self, features: Sequence[torch.Tensor], reconstructions: Sequence[torch.Tensor], size: torch.Size
    ) -> torch.Tensor:
        """Mean over scales of 1 - cosine (bilinear, align_corners) then Gaussian blur (σ 4): (B, 1, H, W)."""
        maps = [
            1 - F.cosine_similarity(feature, reconstruction, dim=1).unsqueeze(1)
            for feature, reconstruction in zip(features, reconstructions, strict=True)
        ]
        return self.blur.upsampled_mean(maps, size)  # as interpolate, mean and blur; as matrix products

    def forward(
        self,
        images: torch.Tensor,
        features: Sequence[torch.Tensor] | None = None,
    ) -> dict[str, list[torch.Tensor]] | MultiClassInferenceBatch:
        """Training: teacher maps and reconstructions (for the loss). Eval: anomaly map and image score.

        ``features`` (the teacher maps, e.g. from the frozen-feature cache) skip the teacher. The returned anomaly
        map is the smoothed one (as anomalib's Reverse Distillation and the official evaluation); the image score
        is its maximum.
        """
        return multi_level_forward(self, images, features)

    @staticmethod
    def image_score(anomaly_map: torch.Tensor) -> torch.Tensor:
        """The maximum of the (already smoothed) map, (B, 1, H, W) -> (B,)."""
        return anomaly_map.flatten(1).amax(dim=1)
