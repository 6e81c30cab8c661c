"""UniAD's training loss: mean squared error between the frozen features and their reconstruction."""

from __future__ import annotations

import torch
from torch import nn


class UniADLoss(nn.Module):
    """MSE over all feature elements; the target (frozen features) carries no gradient."""

    def forward(self, reconstruction: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Scalar loss."""
        return nn.functional.mse_loss(reconstruction, features.detach())
