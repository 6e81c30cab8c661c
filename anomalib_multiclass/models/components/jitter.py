"""Feature jittering (UniAD): Gaussian noise scaled to each token's norm, in training only."""

from __future__ import annotations

import torch


def feature_jitter(tokens: torch.Tensor, scale: float, prob: float = 1.0, dim: int = -1) -> torch.Tensor:
    """Add noise ``ε · scale · ‖t‖₂ / C`` (ε ~ N(0, 1) per element) to every token ``t`` of ``tokens``.

    UniAD draws once per batch whether to jitter (probability ``prob``); the same is done here.

    Args:
        tokens: Feature tokens with channels along ``dim``.
        scale: The jitter scale α (UniAD: 20).
        prob: Probability of jittering this batch.
        dim: The channel dimension.
    """
    if scale <= 0 or prob <= 0 or (prob < 1 and torch.rand(()) > prob):
        return tokens
    channels = tokens.shape[dim]
    norms = tokens.norm(dim=dim, keepdim=True) / channels
    return tokens + torch.randn_like(tokens) * norms * scale
