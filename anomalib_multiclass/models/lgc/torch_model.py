"""LGC on Reverse Distillation (Fan et al., arXiv 2412.04769) in plain PyTorch.

The RD base is composed from anomalib's own pieces (``TimmFeatureExtractor``, the OCBE bottleneck of
``get_bottleneck_layer`` and the ResNet decoder of ``get_decoder``) with a projector φ_p between the frozen
encoder and the bottleneck (the RD++ layout LGC uses). Other timm encoders (EfficientNet-Lite0, ...) get a
bottleneck and decoder mirrored from their ``feature_info`` (``mirrored_rd.py``). Training returns what the
losses need for a clean and an augmented view; evaluation returns RD's anomaly map (1 − cosine of encoder and
decoder features).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from anomalib.models.components.backbone import get_decoder
from anomalib.models.image.reverse_distillation.components import get_bottleneck_layer
from torch import nn

from anomalib_multiclass.data.dataclasses import MultiClassInferenceBatch
from anomalib_multiclass.models.components.blur import MatrixGaussianBlur2d
from anomalib_multiclass.models.components.feature_extractor import FrozenBackbone, _truncate_after_last_stage
from anomalib_multiclass.models.lgc.mirrored_rd import (
    EncoderWidths,
    MirroredBottleneck,
    MirroredDecoder,
    uses_resnet_decoder,
)

# P(N(0, 1) > 0.5): the official code adds feature noise when one standard-normal draw exceeds 0.5.
CODE_NOISE_PROB = 0.3085375387259869


class ProjectorStage(nn.Sequential):
    """Four conv blocks C → C/2 → C/4 → C/2 → C (conv 3×3, InstanceNorm without affine, LeakyReLU 0.01).

    Instance normalisation makes the block per-image (batch-independent), so both views may share a pass.
    """

    def __init__(self, channels: int) -> None:
        widths = [channels, max(1, channels // 2), max(1, channels // 4), max(1, channels // 2), channels]
        blocks: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(widths):
            blocks += [
                nn.Conv2d(c_in, c_out, kernel_size=3, stride=1, padding=1, bias=True),
                nn.InstanceNorm2d(c_out, affine=False, track_running_stats=False),
                nn.LeakyReLU(0.01),
            ]
        super().__init__(*blocks)


class Projector(nn.Module):
    """φ_p: one :class:`ProjectorStage` per encoder stage; shapes are kept."""

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(ProjectorStage(int(c)) for c in channels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Project every stage."""
        return [stage(f) for stage, f in zip(self.stages, features, strict=True)]


def feature_noise(features: list[torch.Tensor], prob: float) -> list[torch.Tensor]:
    """The official code's training noise on the projected clean-view features.

    With probability ``prob`` (one draw per batch) every stage gets N(0, 1) noise masked by a per-position
    Bernoulli(0.5) map (B × 1 × H × W, drawn per stage).
    """
    if prob <= 0 or torch.rand(()).item() >= prob:
        return features
    noisy = []
    for f in features:
        mask = torch.bernoulli(torch.full((f.shape[0], 1, *f.shape[2:]), 0.5, device=f.device, dtype=f.dtype))
        noisy.append(f + torch.randn_like(f) * mask)
    return noisy


class LGCModel(nn.Module):
    """RD with a projector, trained with class-aware contrastive losses (see :class:`LGCLoss`).

    Args:
        backbone: timm name of the frozen encoder; ResNets anomalib has RD's decoder for (``resnet18/34/50/101/152``,
            ``resnext50_32x4d``, ``resnext101_32x8d``, ``wide_resnet50_2/101_2``) with stages layer1-3 use RD's
            bottleneck and decoder, any other timm CNN one mirrored from its ``feature_info``.
        layers: Encoder stages, timm module names or ``features_only`` out-indices (RD: ``layer1..layer3``).
        pre_trained: ImageNet weights for the encoder (timm).
        backbone_weights: Local timm weights file of the backbone, used instead of the download.
        input_size: Image size (H, W); a multiple of twice the deepest stage's stride (the bottleneck halves the
            deepest map once more): 32 for ResNet layer1-3 or Lite0 stages 1-3.
        sigma: Gaussian smoothing of the anomaly map (RD: 4; kernel 2·int(4σ + 0.5) + 1 = 33).
        feature_noise: Training-only noise on the projected clean-view features (official code, not in the
            paper): N(0, 1) on a random half of the positions.
        feature_noise_prob: Probability that a training batch gets the noise (code: P(N(0,1) > 0.5) ≈ 0.31).
    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: Sequence[str | int] = ("layer1", "layer2", "layer3"),
        pre_trained: bool = True,
        backbone_weights: str | None = None,
        input_size: Sequence[int] = (256, 256),
        sigma: float = 4.0,
        feature_noise: bool = True,
        feature_noise_prob: float = CODE_NOISE_PROB,
    ) -> None:
        super().__init__()
        self.backbone = backbone.split(".")[0]
        self.input_size = tuple(int(s) for s in input_size)
        self.encoder = FrozenBackbone(backbone, layers, pre_trained=pre_trained, weights=backbone_weights)
        extractor = self.encoder.extractor.feature_extractor
        # timm's features_only EfficientNets run every block; the ones after the deepest stage used are dropped
        _truncate_after_last_stage(extractor)
        widths = EncoderWidths(extractor.feature_info.info, self.encoder.out_dims, extractor.feature_info.reduction())
        multiple = 2 * widths.deepest
        if self.input_size[0] % multiple or self.input_size[1] % multiple:
            msg = (
                f"input_size {self.input_size} must be a multiple of {multiple} (deepest encoder stage used: stride "
                f"{widths.deepest}; the bottleneck halves it once more)."
            )
            raise ValueError(msg)
        self.projector = Projector(self.encoder.out_dims)
        self.resnet_decoder = uses_resnet_decoder(backbone, layers)
        if self.resnet_decoder:
            self.bottleneck = get_bottleneck_layer(self.backbone)
            # OCBE builds conv4/bn4 (from the original RD code) but its forward never uses them: deleted, so they
            # are neither optimised, nor counted, nor saved. The forward is unchanged (tests compare with anomalib).
            del self.bottleneck.conv4, self.bottleneck.bn4
            self.decoder = get_decoder(self.backbone)
        else:
            self.bottleneck = MirroredBottleneck(widths)
            self.decoder = MirroredDecoder(widths)
        sources = [(self.input_size[0] // r, self.input_size[1] // r) for r in self.encoder.reductions]
        self.blur = MatrixGaussianBlur2d(
            sigma=(float(sigma), float(sigma)), channels=1, size=self.input_size, sources=sources
        )
        self.use_feature_noise = feature_noise
        self.feature_noise_prob = feature_noise_prob

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Frozen encoder features, one map per stage."""
        return self.encoder(images)

    def reconstruct(self, projected: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Bottleneck z and decoder features d from the projected features."""
        z = self.bottleneck(projected)
        return z, self.decoder(z)

    def anomaly_map(
        self, encoder: list[torch.Tensor], decoder: list[torch.Tensor], size: Sequence[int]
    ) -> torch.Tensor:
        """Mean over stages of 1 − cos(e_s, d_s), bilinear (align_corners) to ``size``, Gaussian-smoothed."""
        maps = [(1 - F.cosine_similarity(e, d, dim=1)).unsqueeze(1) for e, d in zip(encoder, decoder, strict=True)]
        return self.blur.upsampled_mean(maps, size)  # as interpolate, mean and blur; as matrix products

    def forward(
        self, images: torch.Tensor, views: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor | list[torch.Tensor]] | MultiClassInferenceBatch:
        """Training: features of the clean view (and of ``views`` if given) for the losses. Eval: map and score.

        The eval path takes images only: encoder, projector, bottleneck, decoder, cosine maps, blur, max.
        """
        if not self.training:
            encoder = self.encode(images)
            _, decoder = self.reconstruct(self.projector(encoder))
            anomaly_map = self.anomaly_map(encoder, decoder, images.shape[-2:])
            return MultiClassInferenceBatch(
                pred_score=torch.amax(anomaly_map, dim=(-3, -2, -1)), anomaly_map=anomaly_map
            )

        batch = images.shape[0]
        # encoder (frozen, eval) and projector (instance norm) are per-image: one pass for both views
        both = images if views is None else torch.cat([images, views])
        encoder_both = self.encode(both)
        projected_both = self.projector(encoder_both)
        encoder = [f[:batch] for f in encoder_both]
        projected = [f[:batch] for f in projected_both]
        if self.use_feature_noise:
            projected = feature_noise(projected, self.feature_noise_prob)
        # the bottleneck's batch norm sees each view separately (batch statistics per view, as the code)
        z, decoder = self.reconstruct(projected)
        out: dict[str, torch.Tensor | list[torch.Tensor]] = {
            "encoder": encoder,
            "projected": projected,
            "bottleneck": z,
            "decoder": decoder,
        }
        if views is not None:
            out["encoder_view"] = [f[batch:] for f in encoder_both]
            out["projected_view"] = [f[batch:] for f in projected_both]
            out["bottleneck_view"] = self.bottleneck(out["projected_view"])
        return out

    @torch.no_grad()
    def pooled_features(self, images: torch.Tensor) -> torch.Tensor:
        """Global average pool of the deepest frozen encoder stage (for pseudo-labels): (B, C)."""
        return self.encode(images)[-1].mean(dim=(-2, -1))


def kmeans(
    features: torch.Tensor, num_clusters: int, iterations: int = 100, restarts: int = 4, seed: int = 0
) -> torch.Tensor:
    """Cluster index of each row of ``features`` (N, D): k-means++ seeding, Lloyd iterations, best of restarts.

    In torch so that pseudo-labels need no scikit-learn; deterministic for a given ``seed``.
    """
    features = features.float()
    n = features.shape[0]
    k = max(1, min(int(num_clusters), n))
    generator = torch.Generator(device="cpu").manual_seed(seed)
    best_labels, best_inertia = None, float("inf")
    for _ in range(max(1, restarts)):
        first = int(torch.randint(n, (1,), generator=generator))
        centers = features[first : first + 1]
        for _ in range(1, k):
            distance = torch.cdist(features, centers).pow(2).amin(dim=1)
            weights = distance.cpu() if float(distance.sum()) > 0 else torch.ones(n)
            index = int(torch.multinomial(weights, 1, generator=generator))
            centers = torch.cat([centers, features[index : index + 1]])
        labels = torch.cdist(features, centers).argmin(dim=1)
        for _ in range(iterations):
            # empty clusters keep their previous centre
            sums = torch.zeros_like(centers).index_add_(0, labels, features)
            counts = torch.bincount(labels, minlength=k).unsqueeze(1).to(features.dtype)
            centers = torch.where(counts > 0, sums / counts.clamp_min(1), centers)
            new_labels = torch.cdist(features, centers).argmin(dim=1)
            if torch.equal(new_labels, labels):
                break
            labels = new_labels
        inertia = float(torch.cdist(features, centers).pow(2).gather(1, labels[:, None]).sum())
        if inertia < best_inertia:
            best_labels, best_inertia = labels, inertia
    return best_labels
