"""Training pieces shared by the models built on frozen features: pre-processing, optimiser, feature cache."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from anomalib.pre_processing import PreProcessor
from torch import optim
from torchvision.transforms.v2 import Compose, Normalize, Resize

from anomalib_multiclass.models.components.feature_cache import FrozenFeatureCache

if TYPE_CHECKING:  # the mixin is read as what it extends: an AnomalibModule (its super() call checked)
    from anomalib.models.components import AnomalibModule as ModuleBase
else:
    ModuleBase = object

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def backbone_normalization(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input mean and std the backbone's pretrained weights expect (timm's ``pretrained_cfg``).

    ImageNet statistics for most weights (the papers' EfficientNet-b4/b6 AutoAugment, ResNets), 0.5 / 0.5 for
    TensorFlow-ported ones such as ``tf_efficientnet_lite0.in1k``. A name timm does not know falls back to
    ImageNet statistics, with a log line.
    """
    import timm

    try:
        config = timm.models.get_pretrained_cfg(backbone)
    except (RuntimeError, ValueError):  # not a timm name
        config = None
    if config is None or not config.mean or not config.std:
        logger.info(
            "No pretrained config for backbone %r in timm: inputs normalised with ImageNet statistics.", backbone
        )
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(config.mean), tuple(config.std)


def backbone_pre_processor(
    backbone: str,
    image_size: Sequence[int],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> PreProcessor:
    """Resize to ``image_size`` and normalise as the backbone's weights expect (no augmentation).

    ``mean``/``std`` override the backbone's statistics (e.g. weights fine-tuned with other statistics); pass
    the result as a model's ``pre_processor``.
    """
    default_mean, default_std = backbone_normalization(backbone)
    mean = tuple(mean) if mean is not None else default_mean
    std = tuple(std) if std is not None else default_std
    return PreProcessor(
        transform=Compose([Resize(tuple(int(s) for s in image_size), antialias=True), Normalize(mean, std)])
    )


def same_named_arguments(target: Any, given: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """The entries of ``given`` (a Lightning module's ``locals()``) that ``target``'s constructor takes, by name.

    A Lightning module passes its network arguments on to its torch model this way: one name, one meaning, no
    list of twenty ``name=name`` lines to keep in step with the signature. ``overrides`` replace given values.
    """
    accepted = inspect.signature(target).parameters
    return {name: overrides.get(name, given[name]) for name in accepted if name in given or name in overrides}


def adamw_with_step_decay(
    parameters: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, step_epochs: int, gamma: float
) -> dict[str, Any]:
    """AdamW (betas 0.9/0.999) with the learning rate multiplied by ``gamma`` every ``step_epochs`` epochs."""
    optimizer = optim.AdamW([p for p in parameters if p.requires_grad], lr=lr, weight_decay=weight_decay)
    scheduler = optim.lr_scheduler.StepLR(optimizer, step_size=step_epochs, gamma=gamma)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class FeatureCacheMixin(ModuleBase):
    """Frozen-feature cache for a Lightning module whose torch model has ``extract_features(images)``.

    The cache switches itself off at fit start when the datamodule applies random training augmentations
    (the features would then differ every epoch).
    """

    feature_cache: FrozenFeatureCache
    model: Any  # the torch model, with ``extract_features(images)``

    def on_fit_start(self) -> None:
        """Use the cache only when the training images are not randomly augmented."""
        datamodule = getattr(getattr(self, "trainer", None), "datamodule", None)
        if self.feature_cache.enabled and getattr(datamodule, "train_augmentations", None) is not None:
            logger.info("Training augmentations are set: frozen features are recomputed every step (no cache).")
            self.feature_cache.enabled = False
        super().on_fit_start()

    def cached_features(self, batch: Any) -> Any:
        """Frozen features of the batch's images, from the cache when possible."""
        return self.feature_cache.get_or_compute(list(batch.image_path), batch.image, self.model.extract_features)
