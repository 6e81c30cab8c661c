"""RLR (Learning Unified Reference Representation, ECCV 2024) in plain PyTorch.

Frozen multi-scale features are 3 × 3 average-pooled; each level is reconstructed by its own network whose
blocks never see their input directly: Local Cross Attention rebuilds every token from a *learnt reference*
within a k × k window, Masked Learnable Key Attention mixes the input tokens with keys from the reference
while hiding each token's own window. The anomaly map is the reconstruction error (mean square + 1 − cosine).

Memory: the official code materialises 8 × N × N attention weights per branch and block (N = 4096 at the
first level). Here the local branch gathers the k² reference tokens of each window (O(N·k²)) and the masked
branch runs through ``scaled_dot_product_attention`` with a boolean mask buffer (fused kernels, no stored
N × N weights). ``dense=True`` computes the textbook equations instead (tests and benchmarks compare).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from anomalib_multiclass.data.dataclasses import MultiClassInferenceBatch
from anomalib_multiclass.models.components.attention import (
    LocalWindowAttention,
    MultiHeadAttention,
    neighbor_mask,
    window_index,
)
from anomalib_multiclass.models.components.feature_extractor import MultiStageFeatureExtractor
from anomalib_multiclass.models.components.jitter import feature_jitter
from anomalib_multiclass.models.components.scoring import check_feature_sizes, multi_level_forward, score_blur


def sincos_position_table(height: int, width: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine table (N, dim): first half encodes the column, second half the row.

    Within each half, even channels are sines and odd channels cosines of the coordinate times
    ``10000^(-m/half)`` for m = 0, 2, 4, ... (the official code's layout).
    """
    if dim % 4:
        msg = f"hidden dim {dim} must be divisible by 4 for the 2-D sine-cosine positions"
        raise ValueError(msg)
    half = dim // 2
    frequencies = torch.pow(10000.0, -torch.arange(0, half, 2, dtype=torch.float64) / half)
    cols = torch.arange(width, dtype=torch.float64).repeat(height)[:, None] * frequencies
    rows = torch.arange(height, dtype=torch.float64).repeat_interleave(width)[:, None] * frequencies
    table = torch.zeros(height * width, dim, dtype=torch.float64)
    table[:, 0:half:2], table[:, 1:half:2] = cols.sin(), cols.cos()
    table[:, half::2], table[:, half + 1 :: 2] = rows.sin(), rows.cos()
    return table.float()


def _kaiming_linear(in_features: int, out_features: int) -> nn.Linear:
    """A 1 × 1 projection initialised as the official code's Conv1d (Kaiming normal, fan-in, gain √2)."""
    layer = nn.Linear(in_features, out_features)
    nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
    return layer


class RLRBlock(nn.Module):
    """Z = LN(α·LCA(Y, R) + MLKA(Y, R)) (no residual from Y); Y' = LN(Z + FFN(Z)).

    LCA: query Y, key and value the reference R, only R's tokens in the query's window.
    MLKA: query Y, key R, value Y, the query's window (itself included) hidden.
    """

    def __init__(self, dim: int, num_heads: int, lca_weight: float = 2.0, ffn_ratio: int = 4) -> None:
        super().__init__()
        self.local_cross_attention = LocalWindowAttention(dim, num_heads)
        self.masked_key_attention = MultiHeadAttention(dim, num_heads)
        self.lca_weight = lca_weight
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_ratio * dim), nn.GELU(), nn.Linear(ffn_ratio * dim, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(
        self,
        tokens: torch.Tensor,
        reference: torch.Tensor,
        window: torch.Tensor,
        window_valid: torch.Tensor,
        in_window: torch.Tensor,
        dense: bool = False,
    ) -> torch.Tensor:
        """``tokens`` (B, N, d), ``reference`` (1, N, d); window buffers from :class:`RLRLevel`."""
        if dense:
            local = MultiHeadAttention.forward(
                self.local_cross_attention, tokens, reference, reference, in_window, dense=True
            )
        else:
            local = self.local_cross_attention(tokens, reference, reference, window, window_valid)
        masked = self.masked_key_attention(tokens, reference, tokens, ~in_window, dense=dense)
        mixed = self.norm1(self.lca_weight * local + masked)
        return self.norm2(mixed + self.ffn(mixed))


class RLRLevel(nn.Module):
    """Reconstruction network of one feature level: input projection, K blocks sharing one reference, output.

    Args:
        in_channels: Channels C of the level's features.
        hidden_dim: Width d of the blocks (divisible by 4 and by ``num_heads``).
        feature_size: (h, w) of the level's map; fixes the reference, the positions and the masks.
        window: Side k of the local window (odd).
        num_blocks: K.
        num_heads: Attention heads.
        lca_weight: α, the weight of LCA against MLKA.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_dim: int,
        feature_size: tuple[int, int],
        window: int,
        num_blocks: int = 4,
        num_heads: int = 8,
        lca_weight: float = 2.0,
    ) -> None:
        super().__init__()
        if window < 1 or window % 2 == 0:
            msg = f"window must be a positive odd number, got {window}"
            raise ValueError(msg)
        height, width = feature_size
        self.feature_size = (height, width)
        self.window_size = window
        self.input_projection = _kaiming_linear(in_channels, hidden_dim)
        self.reference = nn.Parameter(torch.randn(1, height * width, in_channels))
        self.reference_projection = _kaiming_linear(in_channels, hidden_dim)
        self.blocks = nn.ModuleList(RLRBlock(hidden_dim, num_heads, lca_weight) for _ in range(num_blocks))
        self.norm = nn.LayerNorm(hidden_dim)
        self.output_projection = nn.Linear(hidden_dim, in_channels)
        index, valid = window_index(height, width, window)
        self.register_buffer("position", sincos_position_table(height, width, hidden_dim)[None], persistent=False)
        self.register_buffer("window", index, persistent=False)
        self.register_buffer("window_valid", valid, persistent=False)
        self.register_buffer("in_window", neighbor_mask(height, width, window), persistent=False)

    def forward(self, tokens: torch.Tensor, dense: bool = False) -> torch.Tensor:
        """Tokens (B, N, C) -> reconstructed tokens (B, N, C)."""
        hidden = self.input_projection(tokens) + self.position
        reference = self.reference_projection(self.reference) + self.position  # once, shared by the K blocks
        for block in self.blocks:
            hidden = block(hidden, reference, self.window, self.window_valid, self.in_window, dense=dense)
        return self.output_projection(self.norm(hidden))


class RLRModel(nn.Module):
    """RLR: frozen multi-scale features, one reference-based reconstruction network per level.

    Args:
        backbone: timm backbone (frozen); the paper's EfficientNet-B6 with the AutoAugment weights.
        layers: timm out-indices of the levels (paper: stages 1-3 = ``(1, 2, 3)``).
        pre_trained: ImageNet weights for the backbone.
        backbone_weights: Local timm weights file of the backbone, used instead of the download.
        input_size: Image size; fixes every level's map size (a multiple of the deepest stride).
        hidden_dims: Width of each level's network (128/256/512).
        windows: Local window of each level (11/7/5 for the 64/32/16 maps, as the official code).
        num_blocks: Blocks per level (K = 4).
        num_heads: Attention heads (8).
        lca_weight: α (2).
        pool_size: Side of the average pooling applied to every level, input and target (3).
        jitter_scale: Training-only token perturbation scale (4); 0 disables it.
        jitter_prob: Fraction of batches perturbed (1).
        blur_sigma: σ of the Gaussian blur before the image score's maximum (4).
        dense_attention: Compute attention in the textbook N × N form (reference, benchmarks).
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_b6.aa_in1k",
        layers: Sequence[int] = (1, 2, 3),
        pre_trained: bool = True,
        backbone_weights: str | None = None,
        input_size: tuple[int, int] = (256, 256),
        hidden_dims: Sequence[int] = (128, 256, 512),
        windows: Sequence[int] = (11, 7, 5),
        num_blocks: int = 4,
        num_heads: int = 8,
        lca_weight: float = 2.0,
        pool_size: int = 3,
        jitter_scale: float = 4.0,
        jitter_prob: float = 1.0,
        blur_sigma: float = 4.0,
        dense_attention: bool = False,
    ) -> None:
        super().__init__()
        layers = list(layers)
        if not len(layers) == len(hidden_dims) == len(windows):
            msg = f"layers {layers}, hidden_dims {list(hidden_dims)} and windows {list(windows)} need one entry each"
            raise ValueError(msg)
        self.feature_extractor = MultiStageFeatureExtractor(
            backbone, layers, pre_trained=pre_trained, truncate=True, weights=backbone_weights
        )
        self.input_size = tuple(int(s) for s in input_size)
        self.feature_sizes = self.feature_extractor.grids(self.input_size)
        self.levels = nn.ModuleList(
            RLRLevel(channels, hidden, size, window, num_blocks, num_heads, lca_weight)
            for channels, hidden, size, window in zip(
                self.feature_extractor.out_dims, hidden_dims, self.feature_sizes, windows, strict=True
            )
        )
        self.pool_size = pool_size
        self.jitter_scale = jitter_scale
        self.jitter_prob = jitter_prob
        self.dense_attention = dense_attention
        self.blur = score_blur(blur_sigma, size=self.input_size)

    def extract_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The frozen part: images -> per-level pooled maps (B, C_j, h_j, w_j), the network's input and target."""
        features = self.feature_extractor.stage_features(images)
        if self.pool_size > 1:
            features = [F.avg_pool2d(f, self.pool_size, stride=1, padding=self.pool_size // 2) for f in features]
        return features

    def reconstruct(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per-level reconstruction (B, C_j, h_j, w_j); tokens are perturbed in training only."""
        check_feature_sizes(
            [f.shape[-2:] for f in features], [level.feature_size for level in self.levels], self.input_size
        )
        reconstructions = []
        for level, feature in zip(self.levels, features, strict=True):
            batch, channels, height, width = feature.shape
            tokens = feature.flatten(2).transpose(1, 2)
            if self.training:
                tokens = feature_jitter(tokens, self.jitter_scale, self.jitter_prob)
            out = level(tokens, dense=self.dense_attention)
            reconstructions.append(out.transpose(1, 2).reshape(batch, channels, height, width))
        return reconstructions

    def anomaly_map(
        self, features: Sequence[torch.Tensor], reconstructions: Sequence[torch.Tensor], size: torch.Size
    ) -> torch.Tensor:
        """Mean over levels of (channel-mean squared error + 1 − cosine), each upsampled to ``size``: (B, 1, H, W)."""
        maps = []
        for feature, reconstruction in zip(features, reconstructions, strict=True):
            error = ((feature - reconstruction) ** 2).mean(dim=1, keepdim=True)
            error = error + 1 - F.cosine_similarity(feature, reconstruction, dim=1, eps=1e-8).unsqueeze(1)
            maps.append(F.interpolate(error, size=size, mode="bilinear", align_corners=True))
        return torch.stack(maps).mean(dim=0)

    def forward(
        self,
        images: torch.Tensor,
        features: Sequence[torch.Tensor] | None = None,
    ) -> dict[str, list[torch.Tensor]] | MultiClassInferenceBatch:
        """Training: pooled features and reconstructions (for the loss). Eval: anomaly map and image score.

        ``features`` (the pooled maps, e.g. from the frozen-feature cache) skip the backbone. The anomaly map
        is the unsmoothed mean map (the official pixel metrics use it); the image score is the maximum of
        its σ-blurred version.
        """
        return multi_level_forward(self, images, features)

    def image_score(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        """The maximum of the σ-blurred map (the official image score), (B, 1, H, W) -> (B,)."""
        return self.blur(anomaly_map).flatten(1).amax(dim=1)
