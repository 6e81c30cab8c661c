"""MINT-AD as an anomalib model: ``anomalib train --model MintAD --data MultiClassMVTecAD``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
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
from anomalib_multiclass.models.mint_ad.loss import MintADLoss
from anomalib_multiclass.models.mint_ad.torch_model import MintADModel
from anomalib_multiclass.utils.console import show

_CLASSIFIER_WEIGHT = "model.prompt_mapper.head.weight"  # (classes, token_dim): the classifier's size in a checkpoint


class MintAD(MultiClassMixin, FeatureCacheMixin, AnomalibModule):
    """MINT-AD: class-aware INR queries for UniAD's reconstruction transformer (Ye et al., ECCV 2024).

    Training uses the category of each image (cross-entropy of the prompt mapper's classifier); inference does
    not: the class token comes from the image, and the predicted class is output as ``pred_class``.

    Args:
        classifier_classes: Number of categories the classifier predicts; null takes it from the datamodule at fit
            time (or from the checkpoint). Once the model knows its categories, ``num_classes`` (their number) wins.
        backbone: timm name of the frozen backbone (as UniAD: EfficientNet-b4, ``tf_efficientnet_b4.aa_in1k``).
        layers: timm out-indices of the backbone stages whose features are concatenated (stages 1-4: 0, 1, 2, 3).
        pre_trained: Load the backbone's ImageNet weights through timm (downloaded once, then cached).
        backbone_weights: Local timm weights file of the backbone, used instead of the download (offline use).
        input_size: Image size (height, width) in pixels the model runs at; a multiple of the backbone stride (16).
        hidden_dim: Width of the reconstruction transformer and of the INR query map (256).
        num_heads: Attention heads in every transformer layer (8).
        ffn_dim: Hidden width of the transformer's feed-forward blocks (1024).
        num_encoder_layers: Number of transformer encoder layers (4).
        num_decoder_layers: Number of transformer decoder layers (4).
        dropout: Dropout probability inside the transformer (0.1).
        jitter_scale: Feature-jitter scale alpha: training noise of std alpha x token norm / channels (20); 0 is off.
        jitter_prob: Probability that a training batch is jittered (1.0).
        token_dim: Size of the class token t_c that conditions the INR queries (32).
        inr_layers: Depth of the class-aware INR's synthesis and modulation networks (5).
        omega: Frequency omega_0 of the INR's sine layers (30; the paper does not give it).
        pool_size: Side in pixels of the average pooling of the anomaly map before the image score's maximum;
            1 takes the plain maximum (the paper).
        prompt: ``feature``: the class token comes from the image (paper, no label at inference); ``label``: a
            learnt token of the true class, which must then be given in training and inference.
        ce_weight: Weight of the classification cross-entropy in the loss (1.0).
        prior_weight: Weight of the prior (Gaussian negative log-likelihood) loss (0.1).
        lr: AdamW learning rate (1e-4, as UniAD).
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
        >>> from anomalib_multiclass.models import MintAD
        >>> model = MintAD(backbone="tf_efficientnet_lite0", pre_trained=False, input_size=(64, 64), hidden_dim=32,
        ...                num_heads=4, ffn_dim=128, num_encoder_layers=1, num_decoder_layers=1, classifier_classes=3)
        >>> output = model.model.eval()(torch.rand(2, 3, 64, 64))
        >>> output.pred_score.shape, output.anomaly_map.shape
        (torch.Size([2]), torch.Size([2, 1, 64, 64]))
        >>> output.pred_class.shape  # the predicted category of each image
        torch.Size([2])

        One model for every category of a dataset, as ``anomalib train --model MintAD --data ...`` trains it:

        >>> from anomalib.engine import Engine
        >>> from anomalib_multiclass.data import MultiClassMVTecAD
        >>> datamodule = MultiClassMVTecAD(root="./datasets/MVTecAD")  # every category, batches carry the class
        >>> Engine(max_epochs=1000).fit(MintAD(), datamodule=datamodule)  # doctest: +SKIP
    """

    def __init__(
        self,
        classifier_classes: int | None = None,
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
        jitter_scale: float = 20.0,
        jitter_prob: float = 1.0,
        token_dim: int = 32,
        inr_layers: int = 5,
        omega: float = 30.0,
        pool_size: int = 1,
        prompt: str = "feature",
        ce_weight: float = 1.0,
        prior_weight: float = 0.1,
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
        self._model_kwargs = same_named_arguments(
            MintADModel, locals(), input_size=self.model_input_size, layers=tuple(layers)
        )  # all but ``num_classes``, known once the categories are
        self.model: MintADModel | None = None
        if classifier_classes is not None:
            self._build(classifier_classes)
        self.loss = MintADLoss(ce_weight=ce_weight, prior_weight=prior_weight)
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_step_epochs = lr_step_epochs
        self.lr_gamma = lr_gamma
        self.gradient_clip_val = gradient_clip_val
        self.feature_cache = FrozenFeatureCache(max_bytes=feature_cache_max_bytes, enabled=cache_features)

    def _build(self, num_classes: int) -> None:
        if self.model is None or self.model.num_classes != num_classes:
            self.model = MintADModel(num_classes=num_classes, **self._model_kwargs).train(self.training)

    def setup(self, stage: str) -> None:
        """Size the classifier from the categories (one class when the data has no category map)."""
        super().setup(stage)
        self._build_for_categories()

    def _build_for_categories(self, saved_classes: int | None = None) -> None:
        """One class per category the model knows; else the checkpoint's; else as built (``classifier_classes``)."""
        built = self.model.num_classes if self.model is not None else 1
        self._build(self.num_classes or saved_classes or built)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Build the network for the checkpoint's categories (saved with it) before its weights are loaded.

        Without a category map, the classifier takes the size of the checkpoint's own classifier weights (this also
        loads checkpoints saved when the argument was called ``num_classes``, which Lightning drops as unknown).
        """
        super().on_load_checkpoint(checkpoint)
        head = (checkpoint.get("state_dict") or {}).get(_CLASSIFIER_WEIGHT)
        self._build_for_categories(int(head.shape[0]) if isinstance(head, torch.Tensor) else None)

    def _classes(self, batch: Batch) -> torch.Tensor | None:
        classes = getattr(batch, "class_index", None)
        return classes if isinstance(classes, torch.Tensor) else None

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """MSE + CE + prior; the classifier learns the categories from ``batch.class_index``."""
        del args, kwargs
        classes = self._classes(batch)
        output = self.model(batch.image, features=self.cached_features(batch), class_index=classes)
        losses = self.loss(output, classes)
        log_losses(self, losses, len(batch.image))
        return {"loss": losses["loss"]}

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Maps, scores and the predicted class, without the label (unless ``prompt='label'``)."""
        del args, kwargs
        classes = self._classes(batch) if self.model.prompt == "label" else None
        return with_predictions(batch, self.model(batch.image, class_index=classes))

    def on_test_epoch_start(self) -> None:
        """Start counting the classifier's hits per category."""
        self._class_hits: dict[str, list[int]] = {}

    def on_test_batch_end(self, outputs: Any, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Count correct class predictions per category."""
        del outputs, batch_idx, dataloader_idx
        predicted, truth = getattr(batch, "pred_class", None), self._classes(batch)
        if predicted is None or truth is None:
            return
        categories = getattr(batch, "category", None) or ["all"] * len(truth)
        for category, hit in zip(categories, (predicted.cpu() == truth.cpu()).tolist(), strict=True):
            counts = self._class_hits.setdefault(category, [0, 0])
            counts[0] += int(hit)
            counts[1] += 1

    def on_test_epoch_end(self) -> None:
        """Log the classifier's accuracy per category and its mean (the paper's label-free inference)."""
        hits = getattr(self, "_class_hits", {})
        if not hits:
            return
        accuracies = {category: correct / total for category, (correct, total) in sorted(hits.items())}
        for category, accuracy in accuracies.items():
            self.log(f"class_accuracy/{category}", accuracy)
        mean = sum(accuracies.values()) / len(accuracies)
        self.log("class_accuracy/mean", mean)
        rows = "\n".join(f"  {category:<24} {accuracy:.4f}" for category, accuracy in accuracies.items())
        show(f"\nMINT-AD class prediction accuracy per category:\n{rows}\n  {'mean':<24} {mean:.4f}\n")

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW lr 1e-4, weight decay 1e-4, × 0.1 at epoch 800 of 1000 (the paper)."""
        return adamw_with_step_decay(
            self.model.parameters(), self.lr, self.weight_decay, self.lr_step_epochs, self.lr_gamma
        )
