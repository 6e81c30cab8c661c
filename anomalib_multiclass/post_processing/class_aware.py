"""Class-aware post-processing: one threshold and normalisation range per category.

anomalib's ``PostProcessor`` learns one F1-optimal threshold and one min-max range on the validation set
for all images (anomalib issue #3033). With several categories in one model, score scales differ per
category, so one threshold misclassifies whole categories. This post-processor learns both per category
(by class index) and applies them per image, from the image's class: the class the model predicts
(``pred_class``, for models with a classifier) or the class given with the data (``class_index``).
Without a class, or for a category that had no validation images, the global values apply. With
``per_category=False`` it is anomalib's post-processor.

The per-class values are buffers, saved in checkpoints and baked into exported graphs: an exported model
that outputs ``pred_class`` thresholds per class by itself; for the others the exported graph applies the
global values and ``per_class_thresholds()`` gives the table to apply given the category.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from anomalib.data import Batch, InferenceBatch
from anomalib.metrics import F1AdaptiveThreshold, MinMax
from anomalib.post_processing import PostProcessor
from lightning.pytorch import LightningModule, Trainer

from anomalib_multiclass.models.components.base import MultiClassInferenceBatch

logger = logging.getLogger(__name__)

_BUFFERS = ("class_image_threshold", "class_pixel_threshold", "class_image_min", "class_image_max",
            "class_pixel_min", "class_pixel_max")  # fmt: skip


class ClassAwarePostProcessor(PostProcessor):
    """anomalib's post-processor with per-category thresholds and normalisation.

    Args:
        num_classes: Number of categories; may be set later with :meth:`set_num_classes` (the model does it
            from its category map).
        per_category: Use the per-category values (``False``: one global threshold, as anomalib).
        **kwargs: anomalib ``PostProcessor`` arguments (sensitivities, switches).
    """

    def __init__(self, num_classes: int = 0, per_category: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.per_category = per_category
        for name in _BUFFERS:
            self.register_buffer(name, torch.full((num_classes,), float("nan")))
        self._class_metrics: dict[int, dict[str, Any]] = {}

    @property
    def _checkpoint_config_keys(self) -> tuple[str, ...]:
        return (*super()._checkpoint_config_keys, "per_category")

    @property
    def num_classes(self) -> int:
        """Number of categories the per-class tables hold."""
        return int(self.class_image_threshold.numel())

    def set_num_classes(self, num_classes: int) -> None:
        """(Re)allocate the per-class tables (values reset to NaN when the size changes)."""
        if num_classes == self.num_classes:
            return
        device = self.class_image_threshold.device
        for name in _BUFFERS:
            setattr(self, name, torch.full((num_classes,), float("nan"), device=device))

    # --- learning the values on validation data ----------------------------------------------------
    @staticmethod
    def batch_classes(batch: Any) -> torch.Tensor | None:
        """Class of each image: predicted (``pred_class``) first, else given (``class_index``)."""
        for name in ("pred_class", "class_index"):
            value = getattr(batch, name, None)
            if isinstance(value, torch.Tensor):
                return value.long().reshape(-1)
        return None

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Batch, *args, **kwargs
    ) -> None:
        """Global statistics as anomalib, plus per-class ones from the images' given classes."""
        super().on_validation_batch_end(trainer, pl_module, outputs, *args, **kwargs)
        classes = getattr(outputs, "class_index", None)  # learn from the true class, not a prediction
        if not self.per_category or not isinstance(classes, torch.Tensor):
            return
        for cls in classes.unique().tolist():
            index = (classes == cls).nonzero().flatten()
            part = _Subset(outputs, index)
            metrics = self._class_metrics.setdefault(int(cls), _new_metrics())
            if self.enable_thresholding:
                metrics["image_threshold"].update(part)
                metrics["pixel_threshold"].update(part)
            if self.enable_normalization:
                metrics["image_min_max"].update(part)
                metrics["pixel_min_max"].update(part)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Compute the global values (anomalib), then each class's."""
        super().on_validation_epoch_end(trainer, pl_module)
        if not self._class_metrics:
            return
        needed = max(self._class_metrics) + 1
        if needed > self.num_classes:
            self.set_num_classes(needed)
        for cls, metrics in self._class_metrics.items():
            for key, metric in metrics.items():
                if not metric.update_called:
                    continue
                if key.endswith("threshold"):
                    getattr(self, f"class_{key}")[cls] = metric.compute()
                else:
                    low, high = metric.compute()
                    prefix = key.removesuffix("_min_max")
                    getattr(self, f"class_{prefix}_min")[cls] = low
                    getattr(self, f"class_{prefix}_max")[cls] = high
                metric.reset()
        self._class_metrics = {}

    # --- applying them --------------------------------------------------------------------------------
    def _per_image(self, classes: torch.Tensor | None, name: str, fallback: torch.Tensor) -> torch.Tensor:
        """The per-class value ``name`` of each image, the global ``fallback`` where unknown."""
        if classes is None or not self.per_category or self.num_classes == 0:
            return fallback
        table = getattr(self, name)
        valid = (classes >= 0) & (classes < table.numel())
        values = table[classes.clamp(0, max(table.numel() - 1, 0))]
        values = torch.where(valid & ~torch.isnan(values), values, fallback.to(values.dtype))
        return values

    def _class_image_threshold(self, classes: torch.Tensor | None) -> torch.Tensor:
        return self._per_image(classes, "class_image_threshold", self.image_threshold)

    def _class_pixel_threshold(self, classes: torch.Tensor | None) -> torch.Tensor:
        own = self._per_image(classes, "class_pixel_threshold", self.pixel_threshold)
        if self.enable_threshold_matching and classes is not None:  # a class without pixel data: its image one
            own = torch.where(torch.isnan(own), self._class_image_threshold(classes), own)
        return own

    def _normalize_scores(self, scores: torch.Tensor | None, classes: torch.Tensor | None) -> torch.Tensor | None:
        if scores is None:
            return None
        low = self._per_image(classes, "class_image_min", self.image_min)
        high = self._per_image(classes, "class_image_max", self.image_max)
        return self._normalize(scores, low, high, self._class_image_threshold(classes))

    def _normalize_maps(self, maps: torch.Tensor | None, classes: torch.Tensor | None) -> torch.Tensor | None:
        if maps is None:
            return None
        shape = (-1,) + (1,) * (maps.dim() - 1)
        low = self._per_image(classes, "class_pixel_min", self.pixel_min)
        high = self._per_image(classes, "class_pixel_max", self.pixel_max)
        threshold = self._class_pixel_threshold(classes)
        if classes is not None and self.per_category and self.num_classes:
            low, high, threshold = low.reshape(shape), high.reshape(shape), threshold.reshape(shape)
        return self._normalize(maps, low, high, threshold)

    def normalize_batch(self, batch: Batch) -> None:
        """Normalise scores and maps with each image's class range and threshold."""
        classes = self.batch_classes(batch)
        batch.anomaly_map = self._normalize_maps(batch.anomaly_map, classes)
        batch.pred_score = self._normalize_scores(batch.pred_score, classes)

    def forward(self, predictions: InferenceBatch | MultiClassInferenceBatch) -> MultiClassInferenceBatch:
        """Exported path: per-class values when the model outputs ``pred_class``, global values otherwise."""
        if predictions.pred_score is None and predictions.anomaly_map is None:
            msg = "At least one of pred_score or anomaly_map must be provided."
            raise ValueError(msg)
        classes = getattr(predictions, "pred_class", None)
        pred_score = (
            predictions.pred_score
            if predictions.pred_score is not None
            else torch.amax(predictions.anomaly_map, dim=(-2, -1))
        )
        anomaly_map = predictions.anomaly_map
        if self.enable_normalization:
            pred_score = self._normalize_scores(pred_score, classes)
            anomaly_map = self._normalize_maps(anomaly_map, classes)
        pred_label = pred_mask = None
        if self.enable_thresholding:
            pred_label = self._apply_threshold(pred_score, self.normalized_image_threshold)
            pred_mask = self._apply_threshold(anomaly_map, self.normalized_pixel_threshold)
        return MultiClassInferenceBatch(
            pred_score=pred_score,
            pred_label=pred_label,
            anomaly_map=anomaly_map,
            pred_mask=pred_mask,
            pred_class=classes,
        )

    def per_class_thresholds(self, category_names: list[str] | None = None) -> dict[str, dict[str, float]]:
        """The learnt raw (un-normalised) values per class, for export metadata and inspection."""
        names = category_names or [str(i) for i in range(self.num_classes)]
        table = {}
        for index, name in enumerate(names[: self.num_classes]):
            table[name] = {key.removeprefix("class_"): float(getattr(self, key)[index]) for key in _BUFFERS}
        table["global"] = {
            "image_threshold": float(self.image_threshold),
            "pixel_threshold": float(self.pixel_threshold),
            "image_min": float(self.image_min),
            "image_max": float(self.image_max),
            "pixel_min": float(self.pixel_min),
            "pixel_max": float(self.pixel_max),
        }
        return table

    def apply(self, pred_score: torch.Tensor, anomaly_map: torch.Tensor | None, class_index: int | None) -> dict:
        """Normalise and threshold raw outputs (e.g. of an exported model) for images of one known class."""
        classes = None if class_index is None else torch.full(pred_score.shape[:1], class_index, dtype=torch.long)
        score = self._normalize_scores(pred_score, classes)
        amap = self._normalize_maps(anomaly_map, classes)
        return {
            "pred_score": score,
            "anomaly_map": amap,
            "pred_label": self._apply_threshold(score, self.normalized_image_threshold),
            "pred_mask": self._apply_threshold(amap, self.normalized_pixel_threshold),
        }


def _new_metrics() -> dict[str, Any]:
    return {
        "image_threshold": F1AdaptiveThreshold(fields=["pred_score", "gt_label"], strict=False),
        "pixel_threshold": F1AdaptiveThreshold(fields=["anomaly_map", "gt_mask"], strict=False),
        "image_min_max": MinMax(fields=["pred_score"], strict=False),
        "pixel_min_max": MinMax(fields=["anomaly_map"], strict=False),
    }


class _Subset:
    """Read-only view of some images of a batch, with the fields the statistics need."""

    def __init__(self, batch: Any, index: torch.Tensor) -> None:
        for name in ("pred_score", "gt_label", "anomaly_map", "gt_mask"):
            value = getattr(batch, name, None)
            setattr(
                self, name, value[index.to(value.device)].detach().cpu() if isinstance(value, torch.Tensor) else None
            )
