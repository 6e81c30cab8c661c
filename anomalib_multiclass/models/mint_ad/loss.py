"""MINT-AD's loss (eq. 6): L = L_MSE + λ_CE · L_CE + λ_prior · L_prior."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gaussian_nll(value: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Per-element negative log-likelihood of ``value`` under N(mean, exp(log_var)), without the constant."""
    return 0.5 * (log_var + (value - mean) ** 2 * torch.exp(-log_var))


class MintADLoss(nn.Module):
    """Reconstruction MSE (eq. 5), classification cross-entropy (eq. 1) and prior loss (eq. 4).

    MSE is against the frozen features f′; the prior is the Gaussian NLL of the adapted features f under the
    distribution decoder.

    Reductions: batch-mean CE, element-mean MSE and element-mean NLL. Eq. 4 read literally sums 196 × 256 terms
    per image and would swamp the other two; the means keep the paper's weights (1.0, 0.1) meaningful.
    """

    def __init__(self, ce_weight: float = 1.0, prior_weight: float = 0.1) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.prior_weight = prior_weight

    def forward(self, outputs: dict[str, torch.Tensor], class_index: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The three terms and their weighted sum (``loss``); without labels the CE term is zero."""
        mse = F.mse_loss(outputs["reconstruction"], outputs["features"].detach())
        prior = gaussian_nll(outputs["adapted"], outputs["mean"], outputs["log_var"]).mean()
        if class_index is not None:
            ce = F.cross_entropy(outputs["logits"], class_index.long())
        else:
            ce = torch.zeros((), device=mse.device)
        loss = mse + self.ce_weight * ce + self.prior_weight * prior
        return {"loss": loss, "mse": mse, "ce": ce, "prior": prior}
