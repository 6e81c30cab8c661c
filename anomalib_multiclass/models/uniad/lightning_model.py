"""UniAD as an anomalib model: ``anomalib train --model UniAD --data MultiClassMVTecAD``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import nn

from anomalib_multiclass.models.components.base import MultiClassMixin
from anomalib_multiclass.models.components.feature_cache import FrozenFeatureCache
from anomalib_multiclass.models.components.steps import log_losses, with_predictions
from anomalib_multiclass.models.components.training import (
    FeatureCacheMixin,
    adamw_with_step_decay,
    same_named_arguments,
)
from anomalib_multiclass.models.uniad.loss import UniADLoss
from anomalib_multiclass.models.uniad.torch_model import UniADModel


class UniAD(MultiClassMixin, FeatureCacheMixin, AnomalibModule):
    """UniAD: one reconstruction transformer for all categories (You et al., NeurIPS 2022).

    Defaults are the paper's MVTec AD recipe: frozen EfficientNet-b4 (stages 1-4, 272 channels at 14 × 14 for
    224 px), 4 + 4 post-norm layers of width 256, 8 heads, FFN 1024, dropout 0.1, 7 × 7 neighbour mask
    everywhere, layer-wise queries, jitter α = 20, AdamW (lr 1e-4, weight decay 1e-4), lr × 0.1 at epoch 800,
    gradient clipping 0.1 (set ``max_epochs: 1000`` on the trainer).

    Args:
        backbone: timm name of the frozen backbone (paper: EfficientNet-b4, ``tf_efficientnet_b4.aa_in1k``).
        layers: timm out-indices of the backbone stages whose features are concatenated (stages 1-4: 0, 1, 2, 3).
        pre_trained: Load the backbone's ImageNet weights through timm (downloaded once, then cached).
        backbone_weights: Local timm weights file of the backbone, used instead of the download (offline use).
        input_size: Image size (height, width) in pixels the model runs at; a multiple of the backbone stride (16).
        hidden_dim: Width of the reconstruction transformer (256).
        num_heads: Attention heads in every transformer layer (8).
        ffn_dim: Hidden width of the transformer's feed-forward blocks (1024).
        num_encoder_layers: Number of transformer encoder layers (4).
        num_decoder_layers: Number of transformer decoder layers (4).
        dropout: Dropout probability inside the transformer (0.1).
        neighbor_size: Side k of the k x k neighbourhood a token may not attend to (7); null or 0 turns the mask off.
        neighbor_mask_in: The attentions that use the neighbour mask, any of ``encoder``, ``decoder_memory`` and
            ``decoder_previous`` (paper: all three).
        layerwise_query: Give every decoder layer its own learned query (paper); false: the layers share one.
        jitter_scale: Feature-jitter scale alpha: training noise of std alpha x token norm / channels (20); 0 is off.
        jitter_prob: Probability that a training batch is jittered (1.0).
        pool_size: Side in pixels of the average pooling of the anomaly map before the image score's maximum (16);
            1 takes the plain maximum.
        lr: AdamW learning rate (1e-4).
        weight_decay: AdamW weight decay (1e-4).
        lr_step_epochs: The learning rate is multiplied by ``lr_gamma`` every this many epochs (800).
        lr_gamma: Factor of the step learning-rate decay (0.1).
        gradient_clip_val: Maximum gradient norm, passed to the trainer (0.1).
        cache_features: Keep each training image's frozen features after the first epoch and skip the backbone
            later (same training, much faster; turned off when the datamodule sets training augmentations).
        feature_cache_max_bytes: Memory bound of the feature cache, in bytes of CPU memory (8 GiB).
        pre_processor: true: resize to ``input_size`` and normalise with the mean/std of the backbone's weights
            (timm's config); false: none; or a PreProcessor.
        post_processor: true: per-category thresholds and normalisation learnt on validation; false: none; or a module.
        evaluator: true: per-category test metrics (image/pixel AUROC, AP, F1-max, AUPRO); false: none; or an Evaluator.
        visualizer: true: heat-map pictures saved per category; false: none; or a Visualizer.

    Example:
        A small model on random weights, and its raw scores and anomaly maps for two images:

        >>> import torch
        >>> from anomalib_multiclass.models import UniAD
        >>> model = UniAD(backbone="tf_efficientnet_lite0", pre_trained=False, input_size=(64, 64), hidden_dim=32,
        ...               num_heads=4, ffn_dim=128, num_encoder_layers=1, num_decoder_layers=1, neighbor_size=3,
        ...               pool_size=4)
        >>> output = model.model.eval()(torch.rand(2, 3, 64, 64))
        >>> output.pred_score.shape, output.anomaly_map.shape
        (torch.Size([2]), torch.Size([2, 1, 64, 64]))

        One model for every category of a dataset, as ``anomalib train --model UniAD --data ...`` trains it:

        >>> from anomalib.engine import Engine
        >>> from anomalib_multiclass.data import MultiClassMVTecAD
        >>> datamodule = MultiClassMVTecAD(root="./datasets/MVTecAD")  # every category, batches carry the class
        >>> Engine(max_epochs=1000).fit(UniAD(), datamodule=datamodule)  # doctest: +SKIP
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_b4.aa_in1k",
        layers: Sequence[int] = (0, 1, 2, 3),
        pre_trained: bool = True,
        backbone_weights: str | None = None,
        input_size: Sequence[int] = (224, 224),
        hidden_dim: int = 256,
        num_heads: int = 8,
        ffn_dim: int = 1024,
        num_encoder_layers: int = 4,
        num_decoder_layers: int = 4,
        dropout: float = 0.1,
        neighbor_size: int | None = 7,
        neighbor_mask_in: Sequence[str] = ("encoder", "decoder_memory", "decoder_previous"),
        layerwise_query: bool = True,
        jitter_scale: float = 20.0,
        jitter_prob: float = 1.0,
        pool_size: int = 16,
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        lr_step_epochs: int = 800,
        lr_gamma: float = 0.1,
        gradient_clip_val: float = 0.1,
        cache_features: bool = True,
        feature_cache_max_bytes: int = 8 * 1024**3,
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        super().__init__(backbone, input_size, pre_processor, post_processor, evaluator, visualizer)
        self.model = UniADModel(**same_named_arguments(UniADModel, locals(), input_size=self.model_input_size))
        self.loss = UniADLoss()
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_step_epochs = lr_step_epochs
        self.lr_gamma = lr_gamma
        self.gradient_clip_val = gradient_clip_val
        self.feature_cache = FrozenFeatureCache(max_bytes=feature_cache_max_bytes, enabled=cache_features)

    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """MSE between the frozen features (cached when possible) and their reconstruction from jittered ones."""
        del args, kwargs
        output = self.model(batch.image, features=self.cached_features(batch))
        loss = self.loss(output["reconstruction"], output["features"])
        log_losses(self, {"loss": loss}, len(batch.image))
        return {"loss": loss}

    def validation_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Anomaly maps and scores from the image alone (the post-processor learns its statistics from them)."""
        del args, kwargs
        return with_predictions(batch, self.model(batch.image))

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW with a step decay (UniAD: lr 1e-4, weight decay 1e-4, × 0.1 at epoch 800)."""
        return adamw_with_step_decay(
            self.model.parameters(), self.lr, self.weight_decay, self.lr_step_epochs, self.lr_gamma
        )
