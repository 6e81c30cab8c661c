"""RLR's loss: per level mean squared error plus (1 − cosine), summed over the levels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class RLRLoss(nn.Module):
    """Σ_j [ MSE(F_rec, F_org) (mean over all elements) + mean over tokens of (1 − cos(F_rec, F_org)) ].

    The official code's reductions (paper eq. 14 writes a norm divided by H·W; the code's means produced the
    published results). The target is the clean pooled feature: perturbation only touches the input.
    """

    def forward(self, reconstructions: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
        """Lists of (B, C_j, h_j, w_j) maps -> scalar loss."""
        total = torch.zeros((), device=targets[0].device)
        for reconstruction, target in zip(reconstructions, targets, strict=True):
            cosine = F.cosine_similarity(reconstruction, target, dim=1, eps=1e-8)
            total = total + F.mse_loss(reconstruction, target) + (1 - cosine).mean()
        return total
