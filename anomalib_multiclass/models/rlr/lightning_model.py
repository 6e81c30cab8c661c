"""RLR as an anomalib model: ``anomalib train --model RLR --data MultiClassMVTecAD``."""

from __future__ import annotations

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
from anomalib_multiclass.models.rlr.loss import RLRLoss
from anomalib_multiclass.models.rlr.torch_model import RLRModel


class RLR(MultiClassMixin, FeatureCacheMixin, AnomalibModule):
    """RLR: reconstruct features from a learnable reference representation (He et al., ECCV 2024).

    Defaults are the paper's configuration: 256 px, frozen EfficientNet-B6 (AutoAugment weights) stages 1-3
    (40/72/200 channels at 64/32/16), 3 × 3 average pooling, perturbation scale 4 on every token, one network
    per level (hidden 128/256/512, windows 11/7/5, K = 4 blocks, 8 heads, α = 2), loss MSE + (1 − cosine)
    summed over levels, Adam lr 1e-4, no schedule; set ``max_epochs: 200`` and batch 4 (the official command).

    Args:
        backbone: timm name of the frozen backbone (paper: EfficientNet-B6, ``tf_efficientnet_b6.aa_in1k``).
        layers: timm out-indices of the feature levels, each reconstructed by its own network (stages 1-3: 1, 2, 3).
        pre_trained: Load the backbone's ImageNet weights through timm (downloaded once, then cached).
        backbone_weights: Local timm weights file of the backbone, used instead of the download (offline use).
        input_size: Image size (height, width) in pixels; a multiple of the deepest level's stride (16).
        hidden_dims: Width of each level's reconstruction network, one per level (128, 256, 512).
        windows: Side k of each level's local attention window, odd, one per level (11, 7, 5).
        num_blocks: Reconstruction blocks K per level, sharing the level's learnt reference (4).
        num_heads: Attention heads in every block (8).
        lca_weight: Weight alpha of the local cross attention against the masked learnable-key attention (2).
        pool_size: Side of the average pooling of every level's features, input and target alike (3).
        jitter_scale: Training-only perturbation of the tokens, std alpha x token norm / channels (4); 0 is off.
        jitter_prob: Probability that a training batch is perturbed (1.0).
        blur_sigma: Sigma in pixels of the Gaussian blur of the anomaly map before the image score's maximum (4).
        dense_attention: Compute attention in the textbook N x N form (same result, more memory; for comparisons).
        lr: Adam learning rate (1e-4; no weight decay, no schedule).
        cache_features: Keep each training image's pooled frozen features after the first epoch and skip the
            backbone later (same training, much faster; turned off when the datamodule sets training augmentations).
        feature_cache_max_bytes: Memory bound of the feature cache, in bytes of CPU memory (8 GiB).
        pre_processor: true: resize to ``input_size`` and normalise with the mean/std of the backbone's weights
            (timm's config); false: none; or a PreProcessor.
        post_processor: true: per-category thresholds and normalisation learnt on validation; false: none; or a module.
        evaluator: true: per-category test metrics (image/pixel AUROC, AP, F1-max, AUPRO); false: none; or an Evaluator.
        visualizer: true: heat-map pictures saved per category; false: none; or a Visualizer.

    Example:
        A small model on random weights, and its raw scores and anomaly maps for two images:

        >>> import torch
        >>> from anomalib_multiclass.models import RLR
        >>> model = RLR(backbone="tf_efficientnet_lite0", pre_trained=False, input_size=(64, 64), layers=(1, 2, 3),
        ...             hidden_dims=(16, 16, 32), windows=(7, 5, 3), num_blocks=1, num_heads=4)
        >>> output = model.model.eval()(torch.rand(2, 3, 64, 64))
        >>> output.pred_score.shape, output.anomaly_map.shape
        (torch.Size([2]), torch.Size([2, 1, 64, 64]))

        One model for every category of a dataset, as ``anomalib train --model RLR --data ...`` trains it:

        >>> from anomalib.engine import Engine
        >>> from anomalib_multiclass.data import MultiClassMVTecAD
        >>> datamodule = MultiClassMVTecAD(root="./datasets/MVTecAD")  # every category, batches carry the class
        >>> Engine(max_epochs=200).fit(RLR(), datamodule=datamodule)  # doctest: +SKIP
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_b6.aa_in1k",
        layers: Sequence[int] = (1, 2, 3),
        pre_trained: bool = True,
        backbone_weights: str | None = None,
        input_size: Sequence[int] = (256, 256),
        hidden_dims: Sequence[int] = (128, 256, 512),
        windows: Sequence[int] = (11, 7, 5),
        num_blocks: int = 4,
        num_heads: int = 8,
        lca_weight: float = 2.0,
        pool_size: int = 3,
        jitter_scale: float = 4.0,
        jitter_prob: float = 1.0,
        blur_sigma: float = 4.0,
        dense_attention: bool = False,
        lr: float = 1e-4,
        cache_features: bool = True,
        feature_cache_max_bytes: int = 8 * 1024**3,
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        super().__init__(backbone, input_size, pre_processor, post_processor, evaluator, visualizer)
        self.model = RLRModel(**same_named_arguments(RLRModel, locals(), input_size=self.model_input_size))
        self.loss = RLRLoss()
        self.lr = lr
        self.feature_cache = FrozenFeatureCache(max_bytes=feature_cache_max_bytes, enabled=cache_features)

    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """MSE + (1 - cosine) between each level's pooled features (cached when possible) and their reconstruction."""
        del args, kwargs
        output = self.model(batch.image, features=self.cached_features(batch))
        loss = self.loss(output["reconstructions"], output["features"])
        log_losses(self, {"loss": loss}, len(batch.image))
        return {"loss": loss}

    def validation_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Anomaly maps and scores (maximum of the blurred map) from the image alone."""
        del args, kwargs
        return with_predictions(batch, self.model(batch.image))

    def configure_optimizers(self) -> optim.Optimizer:
        """Adam, lr 1e-4, betas (0.9, 0.999), no weight decay, no schedule (the official code)."""
        return optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=self.lr)
