"""LGC's losses: RD's cosine distillation + class-aware local and global contrastive learning.

L = L_KD + λ1 · L_lcl + λ2 · L_gcl (paper eq. 6), all averaged (the paper sums over the batch, the code averages).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss
from torch import nn

from anomalib_multiclass.models.components.attention import neighbor_mask


def window_mask(height: int, width: int, window: int | None, device: torch.device | None = None) -> torch.Tensor | None:
    """(N, N) boolean mask, True where position j lies in the ``window`` × ``window`` square around i.

    UniAD's neighbour mask, shared; ``None`` (or a window covering the whole map) means no restriction.
    """
    if window is None or window >= 2 * max(height, width) - 1:
        return None
    return neighbor_mask(height, width, window).to(device)


@torch.no_grad()
def match_positions(anchor: torch.Tensor, other: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """For every position i of ``anchor`` (B, C, H, W), the most cosine-similar position j* of ``other``.

    The search is restricted to a ``window`` × ``window`` square around i (``None``: the whole map; 1: j* = i).
    Computed one image at a time: stage 1 at 256 px is 4096 × 4096 similarities per image. Returns (B, N).
    """
    batch, _, height, width = anchor.shape
    n = height * width
    if window == 1:
        return torch.arange(n, device=anchor.device).expand(batch, n)
    mask = window_mask(height, width, window, anchor.device)
    a = F.normalize(anchor.flatten(2), dim=1)
    o = F.normalize(other.flatten(2), dim=1)
    indices = []
    for b in range(batch):
        similarity = a[b].transpose(0, 1) @ o[b]  # (N, N): anchor position × other position
        if mask is not None:
            similarity = similarity.masked_fill(~mask, float("-inf"))
        indices.append(similarity.argmax(dim=1))
    return torch.stack(indices)


def sample_negatives(
    labels: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One partner of a different class per item, uniformly; returns (partner index, has-partner mask)."""
    different = (labels[:, None] != labels[None, :]).float()
    valid = different.sum(dim=1) > 0
    partner = torch.zeros_like(labels)
    if valid.any():
        partner[valid] = torch.multinomial(different[valid], 1, generator=generator).squeeze(1)
    return partner, valid


class LocalContrastiveLoss(nn.Module):
    """Local CL, the official code's version with two fixes (see README).

    Per stage, features L2-normalised over channels. The positive of anchor position i of image b is the
    position j* of b's augmented view whose FROZEN ENCODER feature is most similar (``window``: ``None`` = the
    whole map, 3, 1); the negative is the same position i in the augmented view of one image of another class.
    ℓ = −log(e^pos / (e^pos + e^neg)) on projected features / τ; mean over anchors that have a negative, then
    mean over stages. Images without a different-class partner are dropped (the code zeroes the stage).
    """

    def __init__(self, temperature: float = 0.1, window: int | None = None) -> None:
        super().__init__()
        self.temperature = temperature
        self.window = window

    def forward(
        self,
        projected: Sequence[torch.Tensor],
        projected_view: Sequence[torch.Tensor],
        encoder: Sequence[torch.Tensor],
        encoder_view: Sequence[torch.Tensor],
        labels: torch.Tensor,
        negatives: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Scalar loss; ``negatives`` (partner, valid) may be given, otherwise drawn per call (one per image)."""
        partner, valid = negatives if negatives is not None else sample_negatives(labels)
        if not bool(valid.any()):
            return projected[0].sum() * 0.0
        losses = []
        for p, p_view, e, e_view in zip(projected, projected_view, encoder, encoder_view, strict=True):
            match = match_positions(e, e_view, self.window)  # (B, N)
            p = F.normalize(p.flatten(2), dim=1)  # (B, C, N)
            p_view = F.normalize(p_view.flatten(2), dim=1)
            matched = torch.gather(p_view, 2, match.unsqueeze(1).expand(-1, p_view.shape[1], -1))
            positive = (p * matched).sum(dim=1) / self.temperature  # (B, N)
            # index_select, not p_view[partner]: its backward (index_add_) is ordered, advanced indexing's
            # (index_put_ with accumulate) adds in thread order on a multi-threaded CPU: fits would not repeat
            negative = (p * p_view.index_select(0, partner)).sum(dim=1) / self.temperature
            loss = torch.logsumexp(torch.stack([positive, negative]), dim=0) - positive
            losses.append(loss[valid].mean())
        return torch.stack(losses).mean()


class SupervisedContrastiveLoss(nn.Module):
    """Standard SupCon (Khosla et al.) over the pooled bottleneck vectors of both views (2B vectors).

    P(i) = {j ≠ i : y_j = y_i} (the own augmented view is always one), A(i) = {a ≠ i};
    L_i = −1/|P(i)| Σ_p log(exp(s_ip) / Σ_a exp(s_ia)), s = cosine / τ; mean over anchors with positives.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``features`` (M, D), ``labels`` (M,): scalar loss."""
        features = F.normalize(features, dim=1)
        similarity = features @ features.T / self.temperature
        self_mask = torch.eye(len(features), dtype=torch.bool, device=features.device)
        log_prob = similarity - torch.logsumexp(similarity.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True)
        positives = (labels[:, None] == labels[None, :]) & ~self_mask
        counts = positives.sum(dim=1)
        anchors = counts > 0
        if not bool(anchors.any()):
            return features.sum() * 0.0
        per_anchor = -(log_prob.masked_fill(~positives, 0.0).sum(dim=1)[anchors] / counts[anchors])
        return per_anchor.mean()


class LGCLoss(nn.Module):
    """L_KD (anomalib's RD cosine loss) + λ1 · local CL + λ2 · global SupCon.

    Args:
        local_weight: λ1 (1.0).
        global_weight: λ2 (1.0).
        temperature: τ of both contrastive losses (paper: 0.1).
        window: Matching window of the local loss (``None`` = whole map, the paper's default; 3; 1).
        contrastive: ``False`` drops both contrastive terms (plain RD + projector trained jointly).
    """

    def __init__(
        self,
        local_weight: float = 1.0,
        global_weight: float = 1.0,
        temperature: float = 0.1,
        window: int | None = None,
        contrastive: bool = True,
    ) -> None:
        super().__init__()
        self.kd = ReverseDistillationLoss()
        self.local = LocalContrastiveLoss(temperature=temperature, window=window)
        self.supcon = SupervisedContrastiveLoss(temperature=temperature)
        self.local_weight = local_weight
        self.global_weight = global_weight
        self.contrastive = contrastive

    def forward(self, output: dict, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Total and per-term losses from the training output of :class:`LGCModel`."""
        kd = self.kd(output["encoder"], output["decoder"])
        if not self.contrastive:
            return {"loss": kd, "kd": kd}
        if labels is None or "projected_view" not in output:
            msg = "LGC's contrastive losses need class labels and the augmented view (set contrastive=False for RD)."
            raise ValueError(msg)
        local = self.local(
            output["projected"], output["projected_view"], output["encoder"], output["encoder_view"], labels
        )
        pooled = torch.cat([output["bottleneck"].mean(dim=(-2, -1)), output["bottleneck_view"].mean(dim=(-2, -1))])
        global_ = self.supcon(pooled, torch.cat([labels, labels]))
        loss = kd + self.local_weight * local + self.global_weight * global_
        return {"loss": loss, "kd": kd, "local": local, "global": global_}
