"""Scoring pieces the reconstruction models share.

The multi-level forward, image scores, the score blur and the feature-map size check.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from anomalib_multiclass.data.dataclasses import MultiClassInferenceBatch
from anomalib_multiclass.models.components.blur import MatrixGaussianBlur2d


def multi_level_forward(
    model: Any, images: torch.Tensor, features: Sequence[torch.Tensor] | None
) -> dict[str, list[torch.Tensor]] | MultiClassInferenceBatch:
    """The forward of a model that reconstructs its frozen multi-level features (RLR, Omni-AD).

    ``model`` has ``extract_features(images)``, ``reconstruct(features)``, ``anomaly_map(features,
    reconstructions, size)`` and ``image_score(anomaly_map)``. Training: the features and their reconstructions
    (for the loss); ``features`` given (e.g. from the frozen-feature cache) skip the backbone. Eval: the anomaly map
    at the image size and the image score.
    """
    features = list(model.extract_features(images) if features is None else features)
    reconstructions = model.reconstruct(features)
    if model.training:
        return {"features": features, "reconstructions": reconstructions}
    anomaly_map = model.anomaly_map(features, reconstructions, images.shape[-2:])
    return MultiClassInferenceBatch(pred_score=model.image_score(anomaly_map), anomaly_map=anomaly_map)


def pooled_max(anomaly_map: torch.Tensor, pool_size: int) -> torch.Tensor:
    """Maximum of the ``pool_size`` × ``pool_size`` average-pooled map, (B, 1, H, W) -> (B,); 1 is the plain maximum.

    The pooling runs as a column then a row mean (the same values, 2k instead of k² additions per pixel): one
    16 × 16 pooling of a one-channel map was the slowest layer of the exported graph on a CPU (issue 27).

    Example:
        >>> pooled_max(torch.ones(2, 1, 32, 32), 16)
        tensor([1., 1.])
    """
    k = pool_size
    pooled = F.avg_pool2d(F.avg_pool2d(anomaly_map, (k, 1), stride=1), (1, k), stride=1) if k > 1 else anomaly_map
    return pooled.flatten(1).amax(dim=1)


def score_blur(
    sigma: float, size: Sequence[int] | None = None, sources: Sequence[Sequence[int]] = ()
) -> MatrixGaussianBlur2d:
    """A one-channel Gaussian blur of std ``sigma`` with scipy's support (``truncate=4``: 33 taps for σ 4).

    anomalib's ``GaussianBlur2d`` (its kernel, its output) run as two matrix products for maps of ``size``, with the
    bilinear upsampling from ``sources`` folded in (:class:`MatrixGaussianBlur2d`, issue 27).
    """
    kernel_size = 2 * math.ceil(4 * sigma) + 1
    return MatrixGaussianBlur2d(sigma=sigma, channels=1, kernel_size=kernel_size, size=size, sources=sources)


def check_feature_sizes(
    found: Sequence[tuple[int, ...]], expected: Sequence[tuple[int, ...]], input_size: Sequence[int]
) -> None:
    """Refuse feature maps of another size than the network was built for, naming the image size it expects.

    Raises:
        ValueError: ``found`` differs from ``expected`` (the images were not ``input_size``).
    """
    found, expected = [tuple(size) for size in found], [tuple(size) for size in expected]
    if found != expected:
        shown = ", ".join("x".join(map(str, size)) for size in found)
        wanted = ", ".join("x".join(map(str, size)) for size in expected)
        msg = (
            f"Feature map {shown} does not match the model's {wanted}: the model was built for "
            f"{input_size[0]}x{input_size[1]} images."
        )
        raise ValueError(msg)
