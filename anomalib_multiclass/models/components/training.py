"""Training pieces shared by the models built on frozen features: pre-processing, optimiser, feature cache."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from anomalib.pre_processing import PreProcessor
from torch import optim
from torchvision.transforms.v2 import Compose, Normalize, Resize

from anomalib_multiclass.models.components.feature_cache import FrozenFeatureCache

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_pre_processor(size: Sequence[int]) -> PreProcessor:
    """Resize to ``size`` and normalise with ImageNet statistics (no augmentation)."""
    return PreProcessor(
        transform=Compose([Resize(tuple(size), antialias=True), Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    )


def adamw_with_step_decay(
    parameters: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, step_epochs: int, gamma: float
) -> dict[str, Any]:
    """AdamW (betas 0.9/0.999) with the learning rate multiplied by ``gamma`` every ``step_epochs`` epochs."""
    optimizer = optim.AdamW([p for p in parameters if p.requires_grad], lr=lr, weight_decay=weight_decay)
    scheduler = optim.lr_scheduler.StepLR(optimizer, step_size=step_epochs, gamma=gamma)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class FeatureCacheMixin:
    """Frozen-feature cache for a Lightning module whose torch model has ``extract_features(images)``.

    The cache switches itself off at fit start when the datamodule applies random training augmentations
    (the features would then differ every epoch).
    """

    feature_cache: FrozenFeatureCache

    def on_fit_start(self) -> None:
        """Use the cache only when the training images are not randomly augmented."""
        datamodule = getattr(getattr(self, "trainer", None), "datamodule", None)
        if self.feature_cache.enabled and getattr(datamodule, "train_augmentations", None) is not None:
            logger.info("Training augmentations are set: frozen features are recomputed every step (no cache).")
            self.feature_cache.enabled = False
        super().on_fit_start()  # type: ignore[misc]

    def cached_features(self, batch: Any) -> Any:
        """Frozen features of the batch's images, from the cache when possible."""
        model = self.model  # type: ignore[attr-defined]
        return self.feature_cache.get_or_compute(list(batch.image_path), batch.image, model.extract_features)
