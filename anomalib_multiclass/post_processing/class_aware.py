"""Class-aware post-processing: one threshold and normalisation range per category.

anomalib's ``PostProcessor`` learns one F1-optimal threshold and one min-max range on the validation set
for all images (anomalib issue #3033). With several categories in one model, score scales differ per
category, so one threshold misclassifies whole categories. This post-processor learns both per category
and applies them per image, from the image's class:

- learning (validation) always uses the true class (``class_index``) that the data carries;
- applying uses the true class whenever the batch has one (test, predict on a labelled datamodule), and the
  class the model predicts (``pred_class``) only where no label exists (deployment, the exported graph).

Without a class, or for a category that had no validation images, the global values apply. With
``per_category=False`` it is anomalib's post-processor.

Statistics are learnt once per validation epoch from the streamed statistics of every image the validation loop
produced (``anomalib_multiclass.statistics``, shared with the per-category evaluator: one score per image and a
fixed-size pixel histogram per category, no copy of the maps), summed over all DDP ranks (each image once: the
distributed sampler's padding is never folded in), so thresholds do not depend on the number of processes.

The per-class values are buffers, saved in checkpoints (their size comes back from the checkpoint) and baked into
exported graphs. An exported graph outputs anomalib's fields (normalised with the predicted class for a model that
outputs ``pred_class``, with the global values otherwise: what anomalib's own inferencers read) and the raw score
and map (``raw_pred_score``, ``raw_anomaly_map``); a deployment that knows the image's category normalises those
raw outputs once with :meth:`apply` and the table of :meth:`per_class_thresholds`.
"""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace
from typing import Any

import torch
from anomalib.data import Batch, InferenceBatch
from anomalib.metrics import F1AdaptiveThreshold
from anomalib.post_processing import PostProcessor
from lightning.pytorch import LightningModule, Trainer

from anomalib_multiclass.data.dataclasses import ClassExportBatch, ExportBatch, MultiClassInferenceBatch
from anomalib_multiclass.statistics import DyadicHistogram, StreamingStatistics
from anomalib_multiclass.statistics.shared import batch_key, validation_statistics
from anomalib_multiclass.utils.distributed import on_this_process

logger = logging.getLogger(__name__)

_STATISTICS = ("image_threshold", "pixel_threshold", "image_min", "image_max", "pixel_min", "pixel_max")
_BUFFERS = tuple(f"class_{name}" for name in _STATISTICS)
_GLOBAL_BUFFERS = ("_image_threshold", "_pixel_threshold", "image_min", "image_max", "pixel_min", "pixel_max")


class ClassAwarePostProcessor(PostProcessor):
    """anomalib's post-processor with per-category thresholds and normalisation.

    Args:
        num_classes: Number of categories; may be set later with :meth:`set_num_classes` (the model does it
            from its category map).
        per_category: Use the per-category values (``False``: one global threshold, as anomalib).
        **kwargs: anomalib ``PostProcessor`` arguments (sensitivities, switches).
    """

    skips_placeholder_masks = True  # learns from statistics that honour the batches' has_gt_mask

    def __init__(self, num_classes: int = 0, per_category: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.per_category = per_category
        for name in _BUFFERS:
            self.register_buffer(name, torch.full((num_classes,), float("nan")))
        self._statistics: StreamingStatistics | None = None

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

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Size the per-class tables as saved before loading them (the checkpoint knows how many classes)."""
        saved = state_dict.get(f"{prefix}class_image_threshold")
        if isinstance(saved, torch.Tensor):
            self.set_num_classes(int(saved.numel()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --- learning the values on validation data ----------------------------------------------------
    @staticmethod
    def batch_classes(batch: Any) -> torch.Tensor | None:
        """Class of each image: the true one (``class_index``) when the batch has it, else the predicted one."""
        for name in ("class_index", "pred_class"):
            value = getattr(batch, name, None)
            if isinstance(value, torch.Tensor):
                return value.long().reshape(-1)
        return None

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Join (or start) the pass's streamed validation statistics, shared with the per-category evaluator."""
        self._statistics = validation_statistics(trainer, pl_module)

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Batch, *args: Any, **kwargs: Any
    ) -> None:
        """Fold the raw scores, maps, labels and true classes in (statistics are read at the epoch's end)."""
        del trainer, pl_module
        if self._statistics is None:  # driven without the epoch-start hook
            self._statistics = validation_statistics(None, None)
        self._statistics.fold(outputs, batch_key(args, kwargs, outputs))

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Global and per-class values from every rank's validation images (the same on every rank)."""
        del trainer, pl_module
        statistics, self._statistics = self._statistics, None
        if statistics is None:
            return
        table = self._learn(statistics.reduce())
        if table is None:
            return
        for buffer, name in zip(_GLOBAL_BUFFERS, _STATISTICS, strict=True):
            value = table["global"][name]
            if not math.isnan(value):
                getattr(self, buffer).fill_(value)
        if not self.per_category or not table["classes"]:
            return
        needed = max(table["classes"]) + 1
        if needed > self.num_classes:
            self.set_num_classes(needed)
        for cls, values in table["classes"].items():
            for name in _STATISTICS:
                if not math.isnan(values[name]):
                    getattr(self, f"class_{name}")[cls] = values[name]

    def _learn(self, statistics: StreamingStatistics) -> dict[str, Any] | None:
        """``{"global": {statistic: value}, "classes": {class: {statistic: value}}}``, NaN where not learnable.

        Image values are exact (every image's score is kept); the pixel threshold is the lower edge of the
        F1-optimal bin of the streamed pixel histogram (within one bin width, about range / 2**17, of the exact
        one), the pixel range exact.
        """
        categories = [stats for _, stats in statistics if stats.num_images]
        if not categories:
            return None
        images = [stats.image_values() for stats in categories]
        scores = torch.cat([v["pred_score"] for v in images])
        labels = torch.cat([v["gt_label"] for v in images]) if all("gt_label" in v for v in images) else None
        pixels = DyadicHistogram.merged([stats.pixels for stats in categories], statistics.num_bins)
        table: dict[str, Any] = {"global": self._statistics_of(scores, labels, pixels), "classes": {}}
        if self.per_category:
            for stats, values in zip(categories, images, strict=True):
                if stats.class_index is not None:
                    own = self._statistics_of(values["pred_score"], values.get("gt_label"), stats.pixels)
                    table["classes"][stats.class_index] = own
        return table

    def _statistics_of(
        self, scores: torch.Tensor, labels: torch.Tensor | None, pixels: DyadicHistogram
    ) -> dict[str, float]:
        """Anomalib's statistics (F1-optimal thresholds, min and max) of one set of raw outputs."""
        stats = dict.fromkeys(_STATISTICS, math.nan)
        if scores.numel():
            if self.enable_thresholding and labels is not None:
                metric = on_this_process(F1AdaptiveThreshold(fields=["pred_score", "gt_label"], strict=False))
                metric.update(SimpleNamespace(pred_score=scores.float(), gt_label=labels))
                stats["image_threshold"] = float(metric.compute())
            if self.enable_normalization:
                stats["image_min"], stats["image_max"] = float(scores.min()), float(scores.max())
        if not pixels.empty:
            if self.enable_thresholding and pixels.counts is not None and float(pixels.counts[:2].sum()) > 0:
                stats["pixel_threshold"] = pixels.summary().f1_threshold()
            if self.enable_normalization:
                stats["pixel_min"], stats["pixel_max"] = pixels.low, pixels.high
        return stats

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

    # set while the model is traced for ONNX/OpenVINO: the graph then also outputs the raw score and map
    export_raw_outputs: bool = False

    def forward(self, predictions: InferenceBatch | MultiClassInferenceBatch) -> Any:
        """Exported path: per-class values when the model outputs ``pred_class``, global values otherwise.

        While exporting (``export_raw_outputs``) the raw score and map are outputs too, so that a deployment told the
        category applies that category's values once, on raw values (never undoing a clamped normalisation).
        """
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
        raw = {"raw_pred_score": pred_score, "raw_anomaly_map": anomaly_map}
        if self.enable_normalization:
            pred_score = self._normalize_scores(pred_score, classes)
            anomaly_map = self._normalize_maps(anomaly_map, classes)
        pred_label = pred_mask = None
        if self.enable_thresholding:
            pred_label = self._apply_threshold(pred_score, self.normalized_image_threshold)
            pred_mask = self._apply_threshold(anomaly_map, self.normalized_pixel_threshold)
        fields = {
            "pred_score": pred_score,
            "pred_label": pred_label,
            "anomaly_map": anomaly_map,
            "pred_mask": pred_mask,
        }
        if self.export_raw_outputs and self.enable_normalization:
            if classes is None:
                return ExportBatch(**fields, **raw)
            return ClassExportBatch(**fields, pred_class=classes, **raw)
        if classes is None:  # anomalib's own type: its TorchInferencer builds an ImageBatch from every field
            return InferenceBatch(**fields)
        return MultiClassInferenceBatch(**fields, pred_class=classes)

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

    @classmethod
    def from_table(
        cls, table: dict[str, dict[str, float]], category_names: list[str], config: dict[str, Any] | None = None
    ) -> ClassAwarePostProcessor:
        """The post-processor that :meth:`per_class_thresholds` (and :meth:`checkpoint_config`) describe.

        Deployment rebuilds it from an exported model's metadata, so that it applies exactly this class's maths.
        """
        post_processor = cls(num_classes=len(category_names))
        post_processor.load_checkpoint_config(config or {})
        for buffer, name in zip(_GLOBAL_BUFFERS, _STATISTICS, strict=True):
            value = table.get("global", {}).get(name)
            if value is not None:
                getattr(post_processor, buffer).fill_(value)
        for index, category in enumerate(category_names):
            for name in _STATISTICS:
                value = table.get(category, {}).get(name)
                if value is not None:
                    getattr(post_processor, f"class_{name}")[index] = value
        return post_processor

    def apply(
        self, pred_score: torch.Tensor, anomaly_map: torch.Tensor | None, class_index: int | torch.Tensor | None
    ) -> dict:
        """Normalise and threshold raw outputs (e.g. an exported model's ``raw_*``) once, with each image's class.

        ``class_index``: one class for every image, one per image, or ``None`` (the global values).
        """
        if class_index is None:
            classes = None
        elif isinstance(class_index, torch.Tensor) and class_index.numel() > 1:
            classes = class_index.long().reshape(-1)
        else:
            classes = torch.full(pred_score.shape[:1], int(class_index), dtype=torch.long)
        score = self._normalize_scores(pred_score, classes)
        amap = self._normalize_maps(anomaly_map, classes)
        return {
            "pred_score": score,
            "anomaly_map": amap,
            "pred_label": self._apply_threshold(score, self.normalized_image_threshold),
            "pred_mask": self._apply_threshold(amap, self.normalized_pixel_threshold),
        }
