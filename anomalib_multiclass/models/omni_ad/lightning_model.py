"""Omni-AD as an anomalib model: ``anomalib train --model OmniAD --data MultiClassMVTecAD``."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import nn, optim

from anomalib_multiclass.models.components.base import MultiClassMixin
from anomalib_multiclass.models.components.feature_cache import FrozenFeatureCache
from anomalib_multiclass.models.components.steps import log_losses, with_predictions
from anomalib_multiclass.models.components.training import FeatureCacheMixin, same_named_arguments
from anomalib_multiclass.models.omni_ad.loss import OmniADLoss
from anomalib_multiclass.models.omni_ad.torch_model import OmniADModel

logger = logging.getLogger(__name__)


class OmniAD(MultiClassMixin, FeatureCacheMixin, AnomalibModule):
    """Omni-AD: reconstruct multi-scale teacher features with Omni-blocks (Quan et al., ICME 2025).

    Defaults are the paper's configuration: 256 px, frozen ResNet-34 (``resnet34.bt_in1k``) layers 1-3, RD-style
    neck to 512 x 8 x 8, jitter α = 20, decoder widths 512/256/128/64 with 3/9/9/7 Omni-blocks, 64 learnable tokens,
    8 heads; loss Σ MSE over three scales; AdamW lr 1e-3, weight decay 1e-4 on ≥ 2-D parameters, lr x 0.1 at 80 %
    of the training iterations, gradient clipping 5.0 (set ``max_epochs: 500`` and batch 16 on the trainer/data).

    Args:
        backbone: timm name of the frozen teacher CNN (paper: ResNet-34, ``resnet34.bt_in1k``).
        layers: The three teacher stages that are reconstructed, shallowest first, at strides s, 2s, 4s
            (ResNet: ``layer1 layer2 layer3``; EfficientNet: out-indices 1, 2, 3).
        pre_trained: Load the teacher's ImageNet weights through timm (downloaded once, then cached).
        backbone_weights: Local timm weights file of the backbone, used instead of the download (offline use).
        input_size: Image size (height, width) in pixels; a multiple of 8 x the first stage's stride (32 for ResNets).
        dims: Widths of the four decoder stages; null derives (2 C3, C3, C2, C1) from the teacher (512, 256, 128, 64).
        depths: Omni-blocks in each of the four decoder stages (3, 9, 9, 7).
        num_tokens: Learnable tokens T per Omni-block, a perfect square (64).
        num_heads: Attention heads in every Omni-block (8).
        jitter_scale: Feature-jitter scale alpha on the neck output in training (20); 0 is off.
        jitter_prob: Probability that a training batch is jittered (1.0).
        blur_sigma: Sigma in pixels of the Gaussian smoothing of the anomaly map (4; 33-tap kernel).
        official_code_behaviour: Reproduce the released code (zero-initialised tokens, untrained random output
            maps); false: trained output maps and trunc-normal tokens.
        double_input_residual: Add the block input twice to the global branch, as the released code does;
            false: once, as the paper writes.
        lr: AdamW learning rate (1e-3).
        weight_decay: AdamW weight decay, on parameters with two or more dimensions only (1e-4).
        lr_step_fraction: Fraction of the training iterations after which the learning rate is multiplied by
            ``lr_gamma`` (0.8; needs a bounded run, from ``trainer.estimated_stepping_batches``).
        lr_gamma: Factor of the step learning-rate decay (0.1).
        gradient_clip_val: Maximum global gradient norm, passed to the trainer (5.0).
        cache_features: Keep each training image's teacher maps after the first epoch and skip the teacher later
            (same training, much faster; turned off when the datamodule sets training augmentations).
        feature_cache_max_bytes: Memory bound of the feature cache, in bytes of CPU memory (8 GiB; 1.75 MiB per image
            for ResNet-34 at 256 px).
        pre_processor: true: resize to ``input_size`` and normalise with the mean/std of the backbone's weights
            (timm's config); false: none; or a PreProcessor.
        post_processor: true: per-category thresholds and normalisation learnt on validation; false: none; or a module.
        evaluator: true: per-category test metrics (image/pixel AUROC, AP, F1-max, AUPRO); false: none; or an Evaluator.
        visualizer: true: heat-map pictures saved per category; false: none; or a Visualizer.

    Example:
        A small model on random weights, and its raw scores and anomaly maps for two images:

        >>> import torch
        >>> from anomalib_multiclass.models import OmniAD
        >>> model = OmniAD(backbone="tf_efficientnet_lite0", pre_trained=False, input_size=(64, 64), layers=(1, 2, 3),
        ...                dims=(32, 112, 40, 24), depths=(1, 1, 1, 1), num_tokens=16, num_heads=4)
        >>> output = model.model.eval()(torch.rand(2, 3, 64, 64))
        >>> output.pred_score.shape, output.anomaly_map.shape
        (torch.Size([2]), torch.Size([2, 1, 64, 64]))

        One model for every category of a dataset, as ``anomalib train --model OmniAD --data ...`` trains it:

        >>> from anomalib.engine import Engine
        >>> from anomalib_multiclass.data import MultiClassMVTecAD
        >>> datamodule = MultiClassMVTecAD(root="./datasets/MVTecAD")  # every category, batches carry the class
        >>> Engine(max_epochs=500).fit(OmniAD(), datamodule=datamodule)  # doctest: +SKIP
    """

    def __init__(
        self,
        backbone: str = "resnet34.bt_in1k",
        layers: Sequence[str | int] = ("layer1", "layer2", "layer3"),
        pre_trained: bool = True,
        backbone_weights: str | None = None,
        input_size: Sequence[int] = (256, 256),
        dims: Sequence[int] | None = None,
        depths: Sequence[int] = (3, 9, 9, 7),
        num_tokens: int = 64,
        num_heads: int = 8,
        jitter_scale: float = 20.0,
        jitter_prob: float = 1.0,
        blur_sigma: float = 4.0,
        official_code_behaviour: bool = False,
        double_input_residual: bool = True,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        lr_step_fraction: float = 0.8,
        lr_gamma: float = 0.1,
        gradient_clip_val: float = 5.0,
        cache_features: bool = True,
        feature_cache_max_bytes: int = 8 * 1024**3,
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        super().__init__(backbone, input_size, pre_processor, post_processor, evaluator, visualizer)
        self.model = OmniADModel(**same_named_arguments(OmniADModel, locals(), input_size=self.model_input_size))
        self.loss = OmniADLoss()
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_step_fraction = lr_step_fraction
        self.lr_gamma = lr_gamma
        self.gradient_clip_val = gradient_clip_val
        self.feature_cache = FrozenFeatureCache(max_bytes=feature_cache_max_bytes, enabled=cache_features)

    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """1 - cosine between each teacher map (from the cache when possible) and the decoder's reconstruction of it."""
        del args, kwargs
        output = self.model(batch.image, features=self.cached_features(batch))
        loss = self.loss(output["reconstructions"], output["features"])
        log_losses(self, {"loss": loss}, len(batch.image))
        return {"loss": loss}

    def validation_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Anomaly maps (blurred) and scores (their maximum) from the image alone."""
        del args, kwargs
        return with_predictions(batch, self.model(batch.image))

    def _decay_step(self) -> int | None:
        """Optimiser step at which the learning rate drops (80 % of the run), or ``None`` if the run is unbounded."""
        trainer = getattr(self, "_trainer", None)
        total = trainer.estimated_stepping_batches if trainer is not None else math.inf
        if not math.isfinite(total):
            logger.warning("Omni-AD: the number of training steps is unknown; the learning rate is not decayed.")
            return None
        return max(1, int(self.lr_step_fraction * total))

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW (betas 0.9 / 0.999), weight decay on ≥ 2-D parameters only, one iteration-based step decay."""
        trainable = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]
        decay = [p for _, p in trainable if p.ndim >= 2]  # weights, tokens, pe biases (as released)
        no_decay = [p for _, p in trainable if p.ndim < 2]  # biases, norm scales
        optimizer = optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
            betas=(0.9, 0.999),
        )
        milestone = self._decay_step()
        milestones = [] if milestone is None else [milestone]
        scheduler = optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=self.lr_gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
