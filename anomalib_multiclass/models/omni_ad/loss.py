"""Omni-AD's training loss: per-scale mean squared error, summed over the three scales."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class OmniADLoss(nn.Module):
    """Σ_k MSE(d_k, e_k), each an element mean (the released code's ``MSELoss``, weight 1 per scale).

    The paper's eq. 6 sums channels and averages positions, which would weight the deepest scale 4x more than the
    shallowest relative to this; the element mean is what produced the published numbers. The targets (frozen
    teacher maps) carry no gradient.
    """

    def forward(self, reconstructions: Sequence[torch.Tensor], features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Scalar loss."""
        losses = [
            nn.functional.mse_loss(reconstruction, feature.detach())
            for reconstruction, feature in zip(reconstructions, features, strict=True)
        ]
        return torch.stack(losses).sum()
