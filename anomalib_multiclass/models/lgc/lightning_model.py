"""LGC as an anomalib model: ``anomalib train --model LGC --data MultiClassMVTecAD``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import (
    ColorJitter,
    Compose,
    GaussianBlur,
    InterpolationMode,
    RandomGrayscale,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomRotation,
    RandomVerticalFlip,
)

from anomalib_multiclass.models.components.base import MultiClassMixin
from anomalib_multiclass.models.components.steps import log_losses, with_predictions
from anomalib_multiclass.models.lgc.loss import LGCLoss
from anomalib_multiclass.models.lgc.torch_model import CODE_NOISE_PROB, LGCModel, kmeans

logger = logging.getLogger(__name__)


def lgc_view_transform(size: Sequence[int]) -> Compose:
    """The official code's second-view augmentation, drawn per image from the original image (values in [0, 1]).

    RandomResizedCrop (scale 0.8-1, ratio 3/4-4/3, bilinear), horizontal and vertical flips (p 0.5), ColorJitter
    (0.4, 0.4, 0.4, hue 0.1), RandomGrayscale (p 0.2), GaussianBlur (kernel 23, σ 0.1-2), RandomRotation (±15°,
    nearest, fill 0). Normalisation is left to the model's pre-processor, as for the clean view.
    """
    return Compose(
        [
            RandomResizedCrop(
                tuple(int(s) for s in size),
                scale=(0.8, 1.0),
                ratio=(3 / 4, 4 / 3),
                interpolation=InterpolationMode.BILINEAR,
                antialias=True,
            ),
            RandomHorizontalFlip(0.5),
            RandomVerticalFlip(0.5),
            ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1),
            RandomGrayscale(0.2),
            GaussianBlur(kernel_size=23, sigma=(0.1, 2.0)),
            RandomRotation(15, interpolation=InterpolationMode.NEAREST, expand=False, fill=0),
        ]
    )


class LGC(MultiClassMixin, AnomalibModule):
    """LGC: class-aware local and global contrastive learning on Reverse Distillation (Fan et al., 2024).

    RD (frozen wide_resnet50_2 layer1-3, OCBE bottleneck, ResNet decoder; on other timm encoders a bottleneck and
    decoder mirrored from their stages) with a projector φ_p between encoder and bottleneck. Training adds a local
    contrastive loss on the projected multi-scale features (positives: matched positions in the image's augmented
    view; negatives: another class's view) and a supervised contrastive loss on the pooled bottleneck features.
    Labels are the categories (``batch.class_index``), or k-means pseudo-labels when the data has none; inference
    needs neither labels nor the second view.

    Args:
        backbone: timm name of the frozen encoder: RD's own decoder for ResNets, one mirrored from any other timm CNN.
        layers: Encoder stages distilled by the decoder, timm module names or out-indices (RD: ``layer1..layer3``).
        pre_trained: Load the encoder's ImageNet weights through timm (downloaded once, then cached).
        backbone_weights: Local timm weights file of the backbone, used instead of the download (offline use).
        input_size: Image size (height, width) in pixels; a multiple of twice the deepest stage's stride (32 for RD).
        sigma: Sigma in pixels of the Gaussian smoothing of the anomaly map (4).
        feature_noise: Add the official code's training noise to the projected features (not in the paper).
        feature_noise_prob: Probability that a training batch gets that noise (code: P(N(0, 1) > 0.5) = 0.31).
        contrastive: Train with the local and global contrastive losses; false: plain RD + projector on all classes
            jointly (the paper's "Joint" baseline).
        local_weight: Weight lambda_1 of the local contrastive loss (1.0).
        global_weight: Weight lambda_2 of the global (supervised) contrastive loss (1.0).
        temperature: Temperature tau of both contrastive losses (0.1).
        local_window: Side of the window in which the local loss matches positions between views; null: whole map
            (the paper); 3; 1 (same position).
        pseudo_labels: Use k-means pseudo-labels instead of the categories even when the data has them (Table 2).
        num_clusters: Number K of k-means pseudo-label clusters (paper: 30, best of 15/30/60).
        lr_projector: Adam learning rate of the projector phi_p (1e-3).
        lr: Adam learning rate of the bottleneck and the decoder (5e-3).
        betas: Adam betas (official code: 0.5, 0.999).
        gradient_clip_val: Maximum gradient norm, passed to the trainer (5.0).
        pre_processor: true: resize to ``input_size`` and normalise with the mean/std of the backbone's weights
            (timm's config); false: none; or a PreProcessor.
        post_processor: true: per-category thresholds and normalisation learnt on validation; false: none; or a module.
        evaluator: true: per-category test metrics (image/pixel AUROC, AP, F1-max, AUPRO); false: none; or an Evaluator.
        visualizer: true: heat-map pictures saved per category; false: none; or a Visualizer.

    Example:
        A small model on random weights, and its raw scores and anomaly maps for two images:

        >>> import torch
        >>> from anomalib_multiclass.models import LGC
        >>> model = LGC(backbone="tf_efficientnet_lite0", pre_trained=False, input_size=(64, 64), layers=(1, 2, 3))
        >>> output = model.model.eval()(torch.rand(2, 3, 64, 64))
        >>> output.pred_score.shape, output.anomaly_map.shape
        (torch.Size([2]), torch.Size([2, 1, 64, 64]))

        One model for every category of a dataset, as ``anomalib train --model LGC --data ...`` trains it:

        >>> from anomalib.engine import Engine
        >>> from anomalib_multiclass.data import MultiClassMVTecAD
        >>> datamodule = MultiClassMVTecAD(root="./datasets/MVTecAD")  # every category, batches carry the class
        >>> Engine(max_epochs=200).fit(LGC(), datamodule=datamodule)  # doctest: +SKIP
    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: Sequence[str | int] = ("layer1", "layer2", "layer3"),
        pre_trained: bool = True,
        backbone_weights: str | None = None,
        input_size: Sequence[int] = (256, 256),
        sigma: float = 4.0,
        feature_noise: bool = True,
        feature_noise_prob: float = CODE_NOISE_PROB,
        contrastive: bool = True,
        local_weight: float = 1.0,
        global_weight: float = 1.0,
        temperature: float = 0.1,
        local_window: int | None = None,
        pseudo_labels: bool = False,
        num_clusters: int = 30,
        lr_projector: float = 1e-3,
        lr: float = 5e-3,
        betas: Sequence[float] = (0.5, 0.999),
        gradient_clip_val: float = 5.0,
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        super().__init__(backbone, input_size, pre_processor, post_processor, evaluator, visualizer)
        self.model = LGCModel(
            backbone=backbone,
            layers=layers,
            pre_trained=pre_trained,
            backbone_weights=backbone_weights,
            input_size=self.model_input_size,
            sigma=sigma,
            feature_noise=feature_noise,
            feature_noise_prob=feature_noise_prob,
        )
        self.loss = LGCLoss(
            local_weight=local_weight,
            global_weight=global_weight,
            temperature=temperature,
            window=local_window,
            contrastive=contrastive,
        )
        self.contrastive = contrastive
        self.pseudo_labels = pseudo_labels
        self.num_clusters = num_clusters
        self.lr_projector = lr_projector
        self.lr = lr
        self.betas = tuple(float(b) for b in betas)
        self.gradient_clip_val = gradient_clip_val
        self._pseudo_label_of: dict[str, int] | None = None

    # --- training inputs -----------------------------------------------------------------------------------
    def _model_transform(self) -> Any:
        return getattr(getattr(self, "pre_processor", None), "transform", None)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Draw the second view in training, from the image as loaded, before the pre-processor touches it.

        The one route for the view, whatever the datamodule (ours or anomalib's): Lightning calls this hook
        after the batch reaches the device and before the pre-processor's ``on_train_batch_start`` resizes and
        normalises ``batch.image``, so each view is the official augmentation of the loaded image (values in
        [0, 1]), drawn image by image; the pre-processor's own transform then normalises it like the clean view.
        """
        batch = super().on_after_batch_transfer(batch, dataloader_idx)
        trainer = self._trainer
        if trainer is not None and trainer.training:
            self.draw_views(batch)
        return batch

    def draw_views(self, batch: Any) -> None:
        """Set ``batch.image_view``: each loaded image's official augmentation (values in [0, 1]), image by image.

        Called by :meth:`on_after_batch_transfer` in fit; a caller stepping ``training_step`` outside a Trainer
        calls it on the loaded batch, before the pre-processor (its benchmarks do).
        """
        if self.contrastive and hasattr(batch, "image"):
            augment = lgc_view_transform(self.model_input_size)
            batch.image_view = torch.stack([augment(image.clamp(0, 1)) for image in batch.image])

    def _views(self, batch: Batch) -> torch.Tensor:
        """The second view of the batch, normalised by the pre-processor's transform like the clean one."""
        views = getattr(batch, "image_view", None)
        if views is None:
            msg = (
                "LGC's training batch has no second view: it is drawn in on_after_batch_transfer during fit. "
                "Call training_step through a Lightning Trainer (anomalib's Engine), or set batch.image_view."
            )
            raise RuntimeError(msg)
        transform = self._model_transform()
        views = views.to(batch.image.device, batch.image.dtype)
        return transform(views) if transform is not None else views

    def _labels(self, batch: Batch) -> torch.Tensor:
        """Class labels for the contrastive losses: the categories, else the k-means pseudo-labels."""
        classes = getattr(batch, "class_index", None)
        if self._pseudo_label_of is None and (self.pseudo_labels or not isinstance(classes, torch.Tensor)):
            self._fit_pseudo_labels(self.trainer.train_dataloader)
        if self._pseudo_label_of is not None:
            labels = [self._pseudo_label_of[str(path)] for path in batch.image_path]
            return torch.tensor(labels, device=batch.image.device)
        return classes.to(batch.image.device).long()

    def on_train_start(self) -> None:
        """k-means pseudo-labels once, when forced or when the data has no categories."""
        super().on_train_start()
        if not self.contrastive or self._pseudo_label_of is not None:
            return
        dataloader = self.trainer.train_dataloader
        dataset = getattr(dataloader, "dataset", None)
        has_classes = False
        if dataset is not None and len(dataset) > 0:
            has_classes = isinstance(getattr(dataset[0], "class_index", None), torch.Tensor)
        if self.pseudo_labels or not has_classes:
            self._fit_pseudo_labels(dataloader)

    @torch.no_grad()
    def _fit_pseudo_labels(self, dataloader: Any) -> None:
        """k-means pseudo-labels over the training set, keyed by image path.

        K = ``num_clusters``; features: the L2-normalised pooled last stage of the frozen encoder.
        """
        dataset = getattr(dataloader, "dataset", None)
        transform = self._model_transform()
        paths, features = [], []
        if dataset is not None:  # every image once, whatever the training loader's shuffling or drop_last
            dataloader = DataLoader(
                dataset,
                batch_size=getattr(dataloader, "batch_size", None) or 32,
                shuffle=False,
                num_workers=getattr(dataloader, "num_workers", 0),
                collate_fn=getattr(dataloader, "collate_fn", None),
            )
        for batch in dataloader:
            images = batch.image.to(self.device)
            images = transform(images) if transform is not None else images
            features.append(self.model.pooled_features(images).cpu())
            paths += [str(p) for p in batch.image_path]
        labels = kmeans(torch.nn.functional.normalize(torch.cat(features), dim=1), self.num_clusters)
        self._pseudo_label_of = dict(zip(paths, labels.tolist(), strict=True))
        logger.info("LGC pseudo-labels: %d images in %d clusters.", len(paths), int(labels.max()) + 1)

    # --- steps ---------------------------------------------------------------------------------------------
    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """KD on the clean view; local and global contrastive losses with the second view and the labels."""
        del args, kwargs
        views = self._views(batch) if self.contrastive else None
        labels = self._labels(batch) if self.contrastive else None
        output = self.model(batch.image, views)
        losses = self.loss(output, labels)
        log_losses(self, losses, len(batch.image))
        return {"loss": losses["loss"]}

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """RD's inference: 1 - cosine between encoder and decoder maps, from the image alone (no view, no label)."""
        del args, kwargs
        return with_predictions(batch, self.model(batch.image))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """One Adam, two groups: φ_p at ``lr_projector``, bottleneck + decoder at ``lr``; constant rates."""
        neck_and_decoder = [*self.model.bottleneck.parameters(), *self.model.decoder.parameters()]
        return torch.optim.Adam(
            [
                {"params": [p for p in self.model.projector.parameters() if p.requires_grad], "lr": self.lr_projector},
                {"params": [p for p in neck_and_decoder if p.requires_grad], "lr": self.lr},
            ],
            betas=self.betas,
        )
