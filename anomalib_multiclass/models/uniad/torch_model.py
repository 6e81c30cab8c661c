"""UniAD (You et al., NeurIPS 2022) in plain PyTorch: a unified feature-reconstruction transformer.

Frozen multi-stage features f (272 × 14 × 14 for a 224 image and EfficientNet-b4) are jittered in training,
projected to 256 channels, encoded by neighbour-masked self-attention and reconstructed by a layer-wise
query decoder; the anomaly map is the L2 distance between f and its reconstruction.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from anomalib_multiclass.data.dataclasses import MultiClassInferenceBatch
from anomalib_multiclass.models.components.feature_extractor import MultiStageFeatureExtractor
from anomalib_multiclass.models.components.jitter import feature_jitter
from anomalib_multiclass.models.components.reconstruction import ReconstructionTransformer
from anomalib_multiclass.models.components.scoring import check_feature_sizes, pooled_max


class UniADModel(nn.Module):
    """UniAD: frozen multi-stage features, jitter (training), reconstruction transformer, L2 anomaly map.

    Args:
        backbone: timm backbone name (frozen; paper: ``tf_efficientnet_b4.aa_in1k``).
        layers: timm out-indices of the stages (EfficientNet stages 1-4 = ``(0, 1, 2, 3)``).
        pre_trained: ImageNet weights for the backbone.
        backbone_weights: Local timm weights file of the backbone, used instead of the download.
        input_size: Image size the model runs at; fixes the token grid (positional embeddings, masks).
        hidden_dim: Transformer width (256).
        num_heads: Attention heads (8).
        ffn_dim: Feed-forward width (1024).
        num_encoder_layers: Encoder depth (4).
        num_decoder_layers: Decoder depth (4).
        dropout: Dropout (0.1).
        neighbor_size: Side k of the masked k × k neighbourhood (7); ``None`` or 0 disables the mask.
        neighbor_mask_in: Attentions the mask applies to (see :class:`ReconstructionTransformer`).
        layerwise_query: One learned query per decoder layer (UniAD); if False the layers share one.
        jitter_scale: Feature-jitter α (20); 0 disables it.
        jitter_prob: Probability of jittering a batch (1.0).
        pool_size: Side of the average pooling applied to the full-size map before taking the image
            score's maximum (UniAD: 16); 1 uses the plain maximum.
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_b4.aa_in1k",
        layers: Sequence[int] = (0, 1, 2, 3),
        pre_trained: bool = True,
        backbone_weights: str | None = None,
        input_size: tuple[int, int] = (224, 224),
        hidden_dim: int = 256,
        num_heads: int = 8,
        ffn_dim: int = 1024,
        num_encoder_layers: int = 4,
        num_decoder_layers: int = 4,
        dropout: float = 0.1,
        neighbor_size: int | None = 7,
        neighbor_mask_in: Sequence[str] = ("encoder", "decoder_memory", "decoder_previous"),
        layerwise_query: bool = True,
        jitter_scale: float = 20.0,
        jitter_prob: float = 1.0,
        pool_size: int = 16,
    ) -> None:
        super().__init__()
        self.feature_extractor = MultiStageFeatureExtractor(
            backbone, layers, pre_trained=pre_trained, weights=backbone_weights
        )
        input_size = tuple(input_size)
        self.input_size = input_size
        self.feature_size = self.feature_extractor.grid(input_size)
        self.reconstruction = ReconstructionTransformer(
            in_channels=self.feature_extractor.num_features,
            feature_size=self.feature_size,
            hidden_dim=hidden_dim,
            num_heads=num_heads,
            ffn_dim=ffn_dim,
            num_encoder_layers=num_encoder_layers,
            num_decoder_layers=num_decoder_layers,
            dropout=dropout,
            neighbor_size=neighbor_size,
            neighbor_mask_in=neighbor_mask_in,
            layerwise_query=layerwise_query,
        )
        self.jitter_scale = jitter_scale
        self.jitter_prob = jitter_prob
        self.pool_size = pool_size

    def extract_features(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen part: images (B, 3, H, W) -> aligned features (B, C, h, w)."""
        return self.feature_extractor(images)

    def reconstruct(self, features: torch.Tensor) -> torch.Tensor:
        """Features (B, C, h, w) -> reconstruction (B, C, h, w); jitter is added in training only."""
        batch, channels, height, width = features.shape
        check_feature_sizes([(height, width)], [self.feature_size], self.input_size)
        tokens = features.flatten(2).transpose(1, 2)
        if self.training:
            tokens = feature_jitter(tokens, self.jitter_scale, self.jitter_prob)
        out = self.reconstruction(tokens)
        return out.transpose(1, 2).reshape(batch, channels, height, width)

    def anomaly_map(self, features: torch.Tensor, reconstruction: torch.Tensor, size: torch.Size) -> torch.Tensor:
        """L2 norm of the feature difference, bilinearly upsampled to ``size``: (B, 1, H, W)."""
        distance = torch.sqrt(((features - reconstruction) ** 2).sum(dim=1, keepdim=True))
        return F.interpolate(distance, size=size, mode="bilinear", align_corners=True)

    def image_score(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        """Maximum of the ``pool_size`` × ``pool_size`` average-pooled map: (B,)."""
        return pooled_max(anomaly_map, self.pool_size)

    def forward(
        self,
        images: torch.Tensor,
        features: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor] | MultiClassInferenceBatch:
        """Training: features and their reconstruction (for the loss). Eval: anomaly map and score.

        ``features`` may be given (e.g. from the frozen-feature cache) to skip the backbone.
        """
        if features is None:
            features = self.extract_features(images)
        reconstruction = self.reconstruct(features)
        if self.training:
            return {"features": features, "reconstruction": reconstruction}
        anomaly_map = self.anomaly_map(features, reconstruction, images.shape[-2:])
        return MultiClassInferenceBatch(pred_score=self.image_score(anomaly_map), anomaly_map=anomaly_map)
